"""GRPO on your own GSM8K-style JSONL with a local Hugging Face checkpoint (e.g. Qwen2.5-Instruct).

Nothing is downloaded. Put the model and the data on disk first::

  hf download Qwen/Qwen2.5-0.5B-Instruct --local-dir checkpoints/Qwen2.5-0.5B-Instruct
  # data/gsm8k/{train,validation,test}.jsonl as published: {"question": ..., "answer": "... #### 42"}

then ``jaxrl-llm run gsm8k-hf`` (or point elsewhere with ``--set init.hf_checkpoint=DIR --set
data.jsonl_dir=DIR``; the environment variables ``JAXRL_LLM_HF_CHECKPOINT`` and
``JAXRL_LLM_GSM8K_DIR`` set the defaults). A missing directory or file stops the run before
anything is compiled, naming what is missing. The reward (``gsm8k_answer``, docs/algorithms.md §22.1)
takes the completion's ``#### x`` answer (else its last number) and compares it with the number
after ``####`` in the reference, exactly or within 1e-2. The model's architecture, vocabulary and tokenizer come
from the checkpoint; ``model.*`` here only sets the dtypes. Sized for one 80 GB GPU or a TPU host.
"""

import os

from jaxrl_llm.algorithms.policy_gradient import PRESETS
from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, InitConfig, LoggingConfig,
                              MeshConfig, ModelConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)


def config() -> Config:
  return Config(
      experiment="gsm8k-hf",
      seed=0,
      model=ModelConfig(param_dtype="float32", dtype="bfloat16", max_seq_len=32768),
      data=DataConfig(task="math", source="jsonl",
                      jsonl_dir=os.environ.get("JAXRL_LLM_GSM8K_DIR", "data/gsm8k"),
                      length_buckets=(128, 256, 512), chat_template=True, on_overlong="reject",
                      validation_size=0, test_size=0),
      init=InitConfig(hf_checkpoint=os.environ.get("JAXRL_LLM_HF_CHECKPOINT",
                                                   "checkpoints/Qwen2.5-0.5B-Instruct")),
      optimizer=OptimizerConfig(learning_rate=1e-6, warmup_steps=10, end_learning_rate_ratio=1.0,
                                weight_decay=0.0, max_grad_norm=1.0),
      algorithm=AlgorithmConfig(**dict(PRESETS["grpo"], kl_coef=0.001, micro_batches=8)),
      rollout=RolloutConfig(prompts_per_step=32, samples_per_prompt=8, max_new_tokens=512,
                            temperature=1.0),
      reward=RewardConfig(functions=("gsm8k_answer",), weights=(1.0,), accuracy="gsm8k_answer",
                          timeout_s=10.0),
      train=TrainConfig(steps=500, checkpoint_every=50, keep_checkpoints=2, eval_every=50,
                        eval_examples=256, eval_batch_size=64, test_examples=0),
      mesh=MeshConfig(data=1, fsdp=-1),
      logging=LoggingConfig(log_every=1),
  )
