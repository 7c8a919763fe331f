"""GRPO for Text2SQL on Spider or BIRD with a local Hugging Face checkpoint (GPU / TPU sized).

Nothing is downloaded. Put the model and the benchmark on disk first, e.g.::

  hf download Qwen/Qwen2.5-Coder-0.5B-Instruct --local-dir checkpoints/Qwen2.5-Coder-0.5B-Instruct
  # Spider: <root>/train_spider.json, <root>/dev.json, <root>/database/<db_id>/<db_id>.sqlite
  # BIRD:   <root>/train/train.json + train_databases/, <root>/dev/dev.json + dev_databases/

then ``jaxrl-llm run text2sql-hf`` (``JAXRL_LLM_HF_CHECKPOINT``, ``JAXRL_LLM_TEXT2SQL_DIR`` and
``JAXRL_LLM_TEXT2SQL_SOURCE`` = spider | bird set the defaults; ``--set`` overrides them). Missing
files stop the run before anything is compiled, naming the expected layout. Prompts show the
``CREATE TABLE`` statements and the question (BIRD's evidence too) through the chat template; the
reward is execution match (bag semantics, read-only, time-limited) with ``sql_format`` tracked.
"""

import os

from jaxrl_llm.algorithms.policy_gradient import PRESETS
from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, InitConfig, LoggingConfig,
                              MeshConfig, ModelConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)


def config() -> Config:
  return Config(
      experiment="text2sql-hf",
      seed=0,
      model=ModelConfig(param_dtype="float32", dtype="bfloat16", max_seq_len=32768),
      data=DataConfig(task="text2sql",
                      source=os.environ.get("JAXRL_LLM_TEXT2SQL_SOURCE", "spider"),
                      text2sql_root=os.environ.get("JAXRL_LLM_TEXT2SQL_DIR", "data/spider"),
                      length_buckets=(512, 1024, 2048), chat_template=True, on_overlong="reject"),
      init=InitConfig(hf_checkpoint=os.environ.get("JAXRL_LLM_HF_CHECKPOINT",
                                                   "checkpoints/Qwen2.5-Coder-0.5B-Instruct")),
      optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, end_learning_rate_ratio=1.0,
                                weight_decay=0.0, max_grad_norm=1.0),
      algorithm=AlgorithmConfig(**dict(PRESETS["grpo"], kl_coef=0.001, micro_batches=8)),
      rollout=RolloutConfig(prompts_per_step=32, samples_per_prompt=8, max_new_tokens=256,
                            temperature=1.0),
      reward=RewardConfig(functions=("text2sql_execution", "sql_format"), weights=(1.0, 0.0),
                          accuracy="text2sql_execution", timeout_s=300.0),
      train=TrainConfig(steps=300, checkpoint_every=50, keep_checkpoints=2, eval_every=50,
                        eval_examples=256, eval_batch_size=64, test_examples=500),
      mesh=MeshConfig(data=1, fsdp=-1),
      logging=LoggingConfig(log_every=1),
  )
