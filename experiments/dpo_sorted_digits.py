"""DPO on sorted-digits comparisons: the policy's hidden-property rate before and after.

SFT warm start on mostly-unsorted demonstrations (``RUN_DIR/sft``), then DPO (β = 0.1, the paper's
default) against the SFT policy as the frozen reference, on preference pairs only.
``eval.json``: ``test/property_rate_sampled`` vs ``test/before_property_rate_sampled`` (and greedy),
plus held-out DPO reward accuracy and margins.
"""

from jaxrl_llm.config import AlgorithmConfig, OptimizerConfig

from experiments import sorted_digits


def config():
  return sorted_digits.base(
      "dpo-sorted-digits", data=sorted_digits.data("pairs"), init=sorted_digits.sft_init(),
      optimizer=OptimizerConfig(learning_rate=5e-4, warmup_steps=20, weight_decay=0.0,
                                end_learning_rate_ratio=0.1),
      algorithm=AlgorithmConfig(name="dpo", dpo_variant="dpo", beta=0.1))
