"""DPO on sorted-digits comparisons: the policy's hidden-property rate before and after.

SFT warm start on mostly-unsorted demonstrations (``RUN_DIR/sft``), then 100 steps of DPO (β = 0.1,
the paper's default; learning rate 1e-4 -- at 5e-4 for 200 steps the policy drifts off the task's
format and the property rate falls although held-out reward accuracy reaches 0.99) against the SFT
policy as the frozen reference, on preference pairs only.
``eval.json``: ``test/property_rate_sampled`` vs ``test/before_property_rate_sampled`` (and greedy),
plus held-out DPO reward accuracy and margins.
"""

from jaxrl_llm.config import AlgorithmConfig, OptimizerConfig, TrainConfig

from experiments import sorted_digits


def config():
  return sorted_digits.base(
      "dpo-sorted-digits", data=sorted_digits.data("pairs"), init=sorted_digits.sft_init(),
      optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0,
                                end_learning_rate_ratio=0.1),
      train=TrainConfig(steps=100, batch_size=64, checkpoint_every=50, keep_checkpoints=2,
                        eval_every=25, eval_examples=256, eval_batch_size=64),
      algorithm=AlgorithmConfig(name="dpo", dpo_variant="dpo", beta=0.1))
