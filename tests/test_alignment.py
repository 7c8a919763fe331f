"""Alignment loops end to end: PPO with a critic in the RL loop (kill-and-resume equality), the
three-stage RLHF pipeline (SFT -> reward model -> PPO against it), reward-model and DPO runs on the
synthetic preference task, and online RL on Text2SQL with the execution reward."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import replace, tiny_config
from jaxrl_llm.config import (AlgorithmConfig, ConfigError, DataConfig, InitConfig, ModelConfig,
                              OptimizerConfig, RewardConfig, RolloutConfig)
from jaxrl_llm.rewards.learned import RewardModelFunction
from jaxrl_llm.train import preference_loop, read_metrics, rl_loop, run

PPO = dict(name="ppo", loss_aggregation="token-mean", kl_coef=0.05, kl_placement="reward",
           kl_estimator="k1", gae_lambda=0.95, value_clip=0.2, critic_warmup_steps=1,
           dual_clip=3.0, epochs=2, minibatches=2)


def tiny_ppo_config(data_dir, **algorithm):
  base = tiny_config(data_dir, steps=3, checkpoint_every=1, eval_every=0, test_examples=8,
                     eval_batch_size=8)
  return replace(
      base, experiment="tiny-ppo", algorithm=AlgorithmConfig(**dict(PPO, **algorithm)),
      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0, end_learning_rate_ratio=1.0),
      rollout=RolloutConfig(prompts_per_step=8, samples_per_prompt=1, max_new_tokens=4),
      reward=RewardConfig(functions=("digit_match", "exact_match"), weights=(1.0, 0.0),
                          accuracy="exact_match"),
      init=InitConfig())


def test_ppo_runs_and_resumes_exactly(data_dir, tmp_path):
  config = tiny_ppo_config(data_dir, critic="separate")
  full = tmp_path / "full"
  out = rl_loop.train(config, str(full))
  lines = read_metrics(str(full))
  assert [m["step"] for m in lines] == [1, 2, 3]
  for m in lines:
    for key in ("critic/loss", "actor/pg_loss", "kl/ref", "returns/mean", "adv/mean"):
      assert np.isfinite(m[key]), key
  # Critic warm-up: step 1 trains only the critic; the actor moves from step 2.
  assert lines[0]["actor/trained"] == 0.0 and lines[1]["actor/trained"] == 1.0
  # Kill after step 2 (checkpoints every step), resume: identical metrics and params.
  part = tmp_path / "part"
  rl_loop.train(config, str(part), stop_after=2)
  resumed = rl_loop.resume(str(part))
  assert read_metrics(str(part)) == lines
  a = jax.tree.leaves(jax.device_get(out["state"]))
  b = jax.tree.leaves(jax.device_get(resumed["state"]))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_ppo_with_a_shared_trunk_critic(data_dir, tmp_path):
  config = replace(tiny_ppo_config(data_dir, critic="shared", critic_warmup_steps=0),
                   train=dict(steps=2, checkpoint_every=2))
  out = rl_loop.train(config, str(tmp_path))
  assert set(out["state"].actor.params) == {"policy", "value_head"} and out["state"].critic is None
  lines = read_metrics(str(tmp_path))
  assert len(lines) == 2 and lines[-1]["actor/trained"] == 1.0
  assert np.isfinite(lines[-1]["critic/loss"]) and np.isfinite(lines[-1]["train/loss"])


def test_ppo_config_errors_name_the_field(data_dir):
  with pytest.raises(ConfigError, match="algorithm.critic"):
    AlgorithmConfig(**dict(PPO, critic="both"))
  with pytest.raises(ConfigError, match="algorithm.advantage"):
    AlgorithmConfig(**dict(PPO, advantage="grpo"))
  with pytest.raises(ConfigError, match="reward.model_run"):
    replace(tiny_ppo_config(data_dir),
            reward=RewardConfig(functions=("reward_model",), weights=(1.0,), accuracy=""))


def sorted_digits_config(data_dir, name, algorithm, **init):
  base = tiny_config(data_dir, steps=4, checkpoint_every=2, eval_every=2, eval_examples=16,
                     eval_batch_size=8, test_examples=16, batch_size=16, grad_accum_steps=1)
  return replace(
      base, experiment=name,
      model=ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                        max_seq_len=32),
      data=DataConfig(task="sorted_digits", train_size=64, validation_size=16, test_size=16,
                      length_buckets=(16,), data_dir=data_dir,
                      preference_kind="" if algorithm.name == "ppo" else "pairs"),
      algorithm=algorithm,
      init=InitConfig(**dict(dict(sft_steps=4, sft_batch_size=16, sft_warmup_steps=1), **init)))


def test_reward_model_and_dpo_runs(data_dir, tmp_path):
  rm_dir = tmp_path / "rm"
  run(sorted_digits_config(data_dir, "tiny-rm", AlgorithmConfig(name="reward_model")),
      str(rm_dir))
  result = json.loads((rm_dir / "eval.json").read_text())
  assert 0.0 <= result["test/rm/accuracy"] <= 1.0 and result["test/examples"] == 16
  stats = json.loads((rm_dir / preference_loop.STATS_FILE).read_text())
  assert stats["score_std"] > 0
  # The trained reward model serves as a reward function, normalised by its training scores.
  fn = RewardModelFunction(str(rm_dir))
  scores = fn(["n=3:", "n=4:", "n=3:"], ["123", "9731", ""])
  assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))

  dpo_dir = tmp_path / "dpo"
  run(sorted_digits_config(data_dir, "tiny-dpo", AlgorithmConfig(name="dpo", beta=0.1)),
      str(dpo_dir))
  result = json.loads((dpo_dir / "eval.json").read_text())
  for key in ("test/dpo/reward_accuracy", "test/property_rate_sampled",
              "test/before_property_rate_sampled"):
    assert key in result
  lines = read_metrics(str(dpo_dir))
  assert "eval/dpo/reward_accuracy" in lines[1]


def test_rlhf_pipeline_sft_reward_model_ppo(data_dir, tmp_path):
  config = replace(
      sorted_digits_config(data_dir, "tiny-rlhf", AlgorithmConfig(**PPO), reward_model_steps=4,
                           reward_model_batch_size=16),
      rollout=RolloutConfig(prompts_per_step=8, samples_per_prompt=1, max_new_tokens=7),
      reward=RewardConfig(functions=("reward_model", "sorted_digits_property"),
                          weights=(1.0, 0.0), accuracy="sorted_digits_property"),
      train=dict(steps=2, eval_every=0, checkpoint_every=1))
  run(config, str(tmp_path))
  for stage in ("sft", "reward_model"):
    assert (tmp_path / stage / "checkpoints").is_dir()
  assert (tmp_path / "reward_model" / preference_loop.STATS_FILE).exists()
  lines = read_metrics(str(tmp_path))
  assert len(lines) == 2
  assert np.isfinite(lines[-1]["reward/reward_model/mean"])
  assert 0.0 <= lines[-1]["reward/accuracy"] <= 1.0  # The hidden-property rate of the samples.
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["init"]["reward_model_steps"] == 4  # The saved config reproduces the pipeline.
  from jaxrl_llm.cli import main

  assert main(["eval", str(tmp_path), "--limit", "8"]) == 0  # Finds its reward-model stage.


def test_text2sql_rl_steps_with_execution_reward(data_dir, tmp_path):
  base = tiny_config(data_dir, steps=2, checkpoint_every=2, eval_every=0, test_examples=8,
                     eval_batch_size=8)
  config = replace(
      base, experiment="tiny-text2sql",
      model=ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                        max_seq_len=256),
      data=DataConfig(task="text2sql", train_size=40, validation_size=8, test_size=8,
                      length_buckets=(160, 256), data_dir=data_dir),
      algorithm=AlgorithmConfig(name="grpo", loss_aggregation="seq-mean-token-mean"),
      rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8),
      reward=RewardConfig(functions=("text2sql_execution", "sql_format"), weights=(1.0, 0.0),
                          accuracy="text2sql_execution"),
      init=InitConfig())
  out = rl_loop.train(config, str(tmp_path))
  setup = out["setup"]
  split = setup.splits["train"]
  assert {"db_id", "db_path"} <= set(split.columns)
  assert all(os.path.exists(p) for p in split.columns["db_path"])
  # The gold SQL of a row scores 1 through the same runner the loop uses; junk scores 0.
  cols = split.row_columns([0, 1])
  res = setup.rewards(["q", "q"], [cols["answer"][0], "DROP TABLE emp"], cols)
  np.testing.assert_array_equal(res.per_function["text2sql_execution"], [1.0, 0.0])
  lines = read_metrics(str(tmp_path))
  assert len(lines) == 2 and "reward/text2sql_execution/mean" in lines[-1]


def test_math_task_reads_published_gsm8k_jsonl(tmp_path):
  from jaxrl_llm.data import load_rows

  (tmp_path / "train.jsonl").write_text(
      '{"question": "What is 2+3?", "answer": "2+3=5\\n#### 5"}\n'
      '{"problem": "Half of 1?", "solution": "It is $\\\\boxed{\\\\frac{1}{2}}$."}\n')
  rows = load_rows(DataConfig(task="math", source="jsonl", jsonl_dir=str(tmp_path)), "train")
  assert rows == [{"prompt": "What is 2+3?", "answer": "5"},
                  {"prompt": "Half of 1?", "answer": "\\frac{1}{2}"}]
  with pytest.raises(ConfigError, match="data.source"):
    DataConfig(task="math")


def test_text2sql_hf_without_files_fails_clearly(tmp_path, capsys):
  from jaxrl_llm.cli import main
  from jaxrl_llm.data import load_rows

  code = main(["run", "text2sql-hf", "--set", f"init.hf_checkpoint={tmp_path}/missing",
               "--run-dir", str(tmp_path / "run")])
  assert code == 2
  err = capsys.readouterr().err
  assert "init.hf_checkpoint" in err and "hf download" in err
  for source in ("spider", "bird"):
    config = DataConfig(task="text2sql", source=source, text2sql_root=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="none"):
      load_rows(config, "train")
