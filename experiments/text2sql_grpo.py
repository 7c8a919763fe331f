"""Text2SQL by execution: SFT warm start, then GRPO on synthetic SQLite databases (CPU, ~1 hour).

The task (:mod:`jaxrl_llm.envs.text2sql`): five small generated databases (company, shop, school,
library, zoo) and templated questions from look-ups to joins and GROUP BY; the prompt shows the
schema compactly (``emp(id,name,role,...)``) and the question, the model writes one SQL statement.
The reward runs the predicted and the gold SQL read-only on the row's database and compares the
results (Spider test-suite bag semantics; order only when the gold has ``ORDER BY``); ``sql_format``
(weight 0) tracks how often the output even parses as a single SELECT. A tiny character-level
decoder is warm-started with a deliberately short SFT, so greedy execution accuracy starts low;
``RUN_DIR/eval.json`` has the held-out test accuracy before and after GRPO.

``text2sql-hf`` is the same study on Spider or BIRD with a Hugging Face checkpoint.
"""

from jaxrl_llm.algorithms.policy_gradient import PRESETS
from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, InitConfig, LoggingConfig,
                              MeshConfig, ModelConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)


def config() -> Config:
  return Config(
      experiment="text2sql-grpo",
      seed=0,
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                        max_seq_len=384, tie_embeddings=True),
      data=DataConfig(task="text2sql", train_size=1000, validation_size=100, test_size=100,
                      length_buckets=(160, 256)),
      init=InitConfig(sft_steps=600, sft_learning_rate=1e-3, sft_warmup_steps=30,
                      sft_batch_size=32),
      optimizer=OptimizerConfig(learning_rate=2e-4, warmup_steps=10, end_learning_rate_ratio=1.0,
                                weight_decay=0.0, max_grad_norm=1.0),
      algorithm=AlgorithmConfig(**dict(PRESETS["grpo"], kl_coef=0.0)),
      rollout=RolloutConfig(prompts_per_step=16, samples_per_prompt=8, max_new_tokens=112,
                            temperature=1.0),
      reward=RewardConfig(functions=("text2sql_execution", "sql_format"), weights=(1.0, 0.0),
                          accuracy="text2sql_execution", timeout_s=120.0),
      train=TrainConfig(steps=150, checkpoint_every=20, keep_checkpoints=2, eval_every=20,
                        eval_examples=100, eval_batch_size=64, test_examples=0),
      mesh=MeshConfig(data=-1),
      logging=LoggingConfig(log_every=5),
  )
