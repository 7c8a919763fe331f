"""Default experiment: SFT warm start, then GRPO with an exact-answer reward on arithmetic.

``jaxrl-llm run arithmetic-grpo`` builds the synthetic task, trains a tiny decoder with a short SFT
(deliberately under-trained, so it starts well below perfect), measures held-out greedy exact
match, runs GRPO against the exact-answer reward, and measures again (``RUN_DIR/eval.json``).
"""

from jaxrl_llm.algorithms.policy_gradient import PRESETS
from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, InitConfig, LoggingConfig,
                              MeshConfig, ModelConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)


def config(algorithm: str = "grpo", rl_steps: int = 700, **algorithm_overrides) -> Config:
  """The arithmetic RL study with ``algorithm``'s preset (and any overrides of its fields).

  ``rl_steps``: GRPO steps after the warm start (the per-algorithm modules use a shorter 300 so
  each runs in a few minutes; ``--set train.steps=700`` makes them comparable with the default).
  """
  fields = dict(PRESETS[algorithm])
  fields.update(algorithm_overrides)
  name = "arithmetic-" + algorithm.replace("_", "-")
  return Config(
      experiment=name,
      seed=0,
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                        max_seq_len=32, tie_embeddings=True),
      data=DataConfig(task="arithmetic", digits=2, operators="+-", train_size=15000,
                      validation_size=500, test_size=1000, length_buckets=(8, 16)),
      init=InitConfig(sft_steps=450, sft_learning_rate=1e-3, sft_warmup_steps=50,
                      sft_batch_size=64),
      optimizer=OptimizerConfig(learning_rate=2e-4, warmup_steps=10, end_learning_rate_ratio=1.0,
                                weight_decay=0.0, max_grad_norm=1.0),
      algorithm=AlgorithmConfig(**fields),
      rollout=RolloutConfig(prompts_per_step=32, samples_per_prompt=8, max_new_tokens=6,
                            temperature=1.0),
      reward=RewardConfig(functions=("exact_match",), weights=(1.0,), accuracy="exact_match"),
      train=TrainConfig(steps=rl_steps, checkpoint_every=100, keep_checkpoints=2, eval_every=100,
                        eval_examples=256, eval_batch_size=128, test_examples=0),
      mesh=MeshConfig(data=-1),
      logging=LoggingConfig(log_every=10),
  )
