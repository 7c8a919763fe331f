"""Shared pieces of the synthetic preference studies (``rlhf-pipeline``, ``dpo-sorted-digits``,
``reward-model-sorted-digits``).

The task: a prompt ``"n=4:"`` asks for ``n`` digits (n = 3..6). Comparisons prefer answers whose
digits are sorted ascending -- the *hidden property* -- but no model is ever told so: the policy's
SFT demonstrations are mostly unsorted (20% sorted), the reward model and DPO see only which of two
answers was preferred, and the property rate of sampled answers is measured on the side.
"""

from __future__ import annotations

from jaxrl_llm.config import (Config, DataConfig, InitConfig, LoggingConfig, MeshConfig,
                              ModelConfig, OptimizerConfig, TrainConfig)


def model() -> ModelConfig:
  return ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=256, max_seq_len=32,
                     tie_embeddings=True)


def data(preference_kind: str = "") -> DataConfig:
  return DataConfig(task="sorted_digits", train_size=4000, validation_size=256, test_size=512,
                    length_buckets=(16,), preference_kind=preference_kind)


def sft_init(steps: int = 300) -> InitConfig:
  return InitConfig(sft_steps=steps, sft_learning_rate=2e-3, sft_warmup_steps=30,
                    sft_batch_size=64)


def base(experiment: str, **sections) -> Config:
  """A config on the sorted-digits task; ``sections`` replace whole config sections."""
  fields = dict(
      experiment=experiment, seed=0, model=model(), data=data(),
      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=20, weight_decay=0.0,
                                end_learning_rate_ratio=0.1),
      train=TrainConfig(steps=200, batch_size=64, checkpoint_every=100, keep_checkpoints=2,
                        eval_every=50, eval_examples=256, eval_batch_size=64),
      mesh=MeshConfig(data=-1), logging=LoggingConfig(log_every=10))
  fields.update(sections)
  return Config(**fields)
