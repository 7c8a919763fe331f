"""Supervised fine-tuning of a tiny decoder from scratch on synthetic
integer arithmetic ("37+48=" -> "85"), evaluated by greedy exact match on a held-out split.

Runs on a laptop CPU in a few minutes: ``jaxrl-llm run sft-arithmetic``.
"""

from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, LoggingConfig, MeshConfig,
                              ModelConfig, OptimizerConfig, TrainConfig)


def config() -> Config:
  return Config(
      experiment="sft-arithmetic",
      seed=0,
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                        max_seq_len=32, tie_embeddings=True),
      data=DataConfig(task="arithmetic", digits=2, operators="+-", train_size=15000,
                      validation_size=500, test_size=1000, length_buckets=(16,)),
      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=100, weight_decay=0.01,
                                max_grad_norm=1.0),
      algorithm=AlgorithmConfig(name="sft"),
      train=TrainConfig(steps=1500, batch_size=64, grad_accum_steps=1, checkpoint_every=500,
                        keep_checkpoints=2, eval_every=500, eval_examples=256,
                        eval_batch_size=128),
      mesh=MeshConfig(data=-1),
      logging=LoggingConfig(log_every=25),
  )
