"""Bring your own reward and experiment: import paths recorded in config.json, so that a run with a
reward function from the user's own module can be run, evaluated, resumed and reproduced in new
processes."""

import json
import os
import sys
import textwrap

import pytest

from conftest import replace
from experiments import get_experiment
from jaxrl_llm.config import RewardConfig, save_json
from jaxrl_llm.rewards import get_reward_function
from test_rl import tiny_rl_config

REWARD_MODULE = textwrap.dedent('''\
    """A user's reward module (not part of jaxrl_llm)."""
    import numpy as np

    def score(prompts, completions, *, answer, **_):
      return np.asarray([float(c.strip() == a.strip()) for c, a in zip(completions, answer)],
                        np.float32)

    NOT_CALLABLE = 3
    ''')


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("user_code")
  (root / "my_rewards.py").write_text(REWARD_MODULE)
  (root / "my_experiment.py").write_text(textwrap.dedent('''\
      from jaxrl_llm.config import Config

      def config():
        return Config(experiment="mine", seed=3)
      '''))
  (root / "my_tasks.py").write_text(textwrap.dedent('''\
      def rows(split, config):
        start = {"train": 0, "validation": 100, "test": 200}[split]
        n = 0 if split == "validation" else 20
        return [{"question": f"{i}*2", "response": str(2 * i), "level": i % 3}
                for i in range(start, start + n)]

      def render(row):
        return "Q: " + row["question"] + " ="
      '''))
  sys.path.insert(0, str(root))
  yield root
  sys.path.remove(str(root))
  for name in ("my_rewards", "my_experiment", "my_tasks"):
    sys.modules.pop(name, None)


def test_reward_functions_and_experiments_by_import_path(user_dir):
  fn = get_reward_function("my_rewards:score")
  assert fn(["p"], ["12 "], answer=["12"]).tolist() == [1.0]
  for bad, why in (("my_rewards:missing", "has no attribute"), ("no_such_pkg.x:f", "cannot import"),
                   ("my_rewards:NOT_CALLABLE", "not a reward function"),
                   ("exact_mtch", "known:")):
    with pytest.raises(KeyError, match=why):
      get_reward_function(bad)
  assert get_experiment("my_experiment:config").experiment == "mine"
  assert get_experiment(str(user_dir / "my_experiment.py")).seed == 3
  with pytest.raises(KeyError, match="does not exist"):
    get_experiment(str(user_dir / "nope.py"))


def test_unimportable_reward_fails_before_anything_runs(data_dir, tmp_path, capsys):
  """The run, resume and eval of a run with a reward of the user's own, in new processes, are
  exercised by the tutorial's test (tests/test_docs.py); here: a reward that cannot be imported
  stops the run before anything compiles, naming the key and the import error."""
  from jaxrl_llm.cli import main

  cfg = replace(tiny_rl_config(data_dir), experiment="byo",
                reward=RewardConfig(functions=("not_a_module_anywhere:score",), weights=(1.0,),
                                    accuracy=""))
  cfg_path = str(tmp_path / "config.json")
  save_json(cfg, cfg_path)
  assert main(["run", "--config", cfg_path, "--run-dir", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert "reward.functions" in err and "not_a_module_anywhere" in err, err
  assert not (tmp_path / "run").exists()  # nothing left that `resume` could accept.


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_custom_task_holds_out_missing_splits(tmp_path):
  from jaxrl_llm.config import ConfigError, DataConfig
  from jaxrl_llm.data import BadRowError, load_rows

  words = [f"w{i:03d}" for i in range(60)]
  _write_jsonl(tmp_path / "train.jsonl",
               [{"prompt": f"reverse {w}:", "answer": w[::-1], "source_word": w} for w in words])
  dc = DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path), validation_size=8,
                  test_size=5)
  splits = {s: load_rows(dc, s) for s in ("train", "validation", "test")}
  assert {s: len(r) for s, r in splits.items()} == {"train": 47, "validation": 8, "test": 5}
  seen = [r["source_word"] for rows in splits.values() for r in rows]
  assert sorted(seen) == words  # disjoint and complete
  assert load_rows(dc, "validation") == splits["validation"]  # deterministic
  other = load_rows(DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path),
                               validation_size=8, test_size=5, dataset_seed=1), "test")
  assert other != splits["test"]
  # A test file of its own is used as it is; validation is still held out.
  _write_jsonl(tmp_path / "test.jsonl", [{"prompt": "reverse abc:", "answer": "cba"}])
  assert len(load_rows(dc, "test")) == 1 and len(load_rows(dc, "train")) == 52
  with pytest.raises(BadRowError, match=r"data.validation_size"):
    load_rows(DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path),
                         validation_size=60), "train")
  with pytest.raises(ConfigError, match="data.source"):
    DataConfig(task="custom")


def test_data_builders_and_prompt_templates_by_import_path(user_dir, tmp_path):
  from jaxrl_llm.config import ConfigError, DataConfig
  from jaxrl_llm.data import BadRowError, build_char_tokenizer, encode_split, load_rows
  from jaxrl_llm.data.pipeline import auto_buckets, has_split

  dc = DataConfig(task="my_tasks:rows", prompt_template="my_tasks:render")
  rows = load_rows(dc, "test")
  assert rows[0]["prompt"] == "Q: 200*2 =" and rows[0]["answer"] == "400"
  assert has_split(dc, "test") and not has_split(dc, "validation")
  split = encode_split(rows, build_char_tokenizer(), split="test", max_len=64,
                       on_bad_row="raise", on_overlong="reject")
  assert split.answer_texts[1] == "402" and split.columns["level"][:3] == ["2", "0", "1"]
  assert "response" not in split.columns and "question" in split.columns
  # A str.format template over the row's fields; a field it names that a row lacks is an error
  # naming the row, the field and the setting.
  fmt = DataConfig(task="my_tasks:rows", prompt_template="[{level}] {question} =")
  assert load_rows(fmt, "train")[4]["prompt"] == "[1] 4*2 ="
  with pytest.raises(BadRowError, match=r"train row 0 field 'nope'.*data.prompt_template"):
    load_rows(DataConfig(task="my_tasks:rows", prompt_template="{nope}"), "train")
  with pytest.raises(ValueError, match=r"data.task.*no attribute"):
    load_rows(DataConfig(task="my_tasks:missing"), "train")
  with pytest.raises(ConfigError, match="data.task"):
    DataConfig(task="not_a_task")
  # SFT JSONL with prompt/response rows.
  _write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}] * 30)
  sft = load_rows(DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path),
                             validation_size=5, test_size=5), "train")
  assert len(sft) == 20
  enc = encode_split(sft, build_char_tokenizer(), split="train", max_len=8, on_bad_row="raise",
                     on_overlong="reject")
  assert enc.answer_texts[0] == "b" and not enc.columns
  # "auto" buckets: the median and the longest row, rounded up to multiples of 8, capped.
  assert auto_buckets([enc], 64) == (8,)
  assert auto_buckets([split], 64) == (16,)
  long = encode_split([{"prompt": "x" * n, "answer": "y"} for n in range(1, 40)],
                      build_char_tokenizer(), split="train", max_len=30, on_bad_row="raise",
                      on_overlong="truncate")
  assert auto_buckets([long], 30) == (24, 30)
  with pytest.raises(ConfigError, match="length_buckets.*'auto'"):
    DataConfig(length_buckets="big")


@pytest.mark.slow
def test_custom_task_trains_with_grpo(tmp_path, data_dir):
  from jaxrl_llm.config import DataConfig
  from jaxrl_llm.train import new_run_dir, run

  _write_jsonl(tmp_path / "train.jsonl",
               [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(40)])
  cfg = replace(tiny_rl_config(data_dir), experiment="custom-task",
                data=DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path),
                                validation_size=4, test_size=8, length_buckets="auto",
                                prompt_template="{prompt}"))
  run_dir = new_run_dir(cfg, str(tmp_path / "run"))
  out = run(cfg, run_dir)
  assert out["metrics"]["test/examples"] == 8 and "test/accuracy" in out["metrics"]
  report = json.load(open(os.path.join(run_dir, "data_report.json")))
  assert report["train"]["rows"] == 28 and report["test"]["rows"] == 8
  # BOS + "i+i=" is at most 7 tokens: one bucket of 8, recorded for whoever loads the run.
  assert report["length_buckets"] == [8]
  from jaxrl_llm.rundir.artifacts import load_run

  assert load_run(run_dir, restore=False).config.data.length_buckets == (8,)


def test_overlong_rows_error_names_the_setting_and_a_value_that_fits():
  from jaxrl_llm.data import BadRowError, build_char_tokenizer, encode_split
  from jaxrl_llm.data.pipeline import length_report

  tok = build_char_tokenizer()
  rows = [{"prompt": "x" * n, "answer": "yy"} for n in (10, 20, 30)]
  with pytest.raises(BadRowError) as e:
    encode_split(rows, tok, split="train", max_len=8, on_bad_row="raise", on_overlong="reject")
  msg = str(e.value)
  # BOS + prompt + answer + EOS = 14 / 24 / 34 tokens.
  assert "data.length_buckets" in msg and "34 at most" in msg and "[24, 40]" in msg, msg
  split = encode_split(rows, tok, split="train", max_len=24, on_bad_row="raise",
                       on_overlong="reject")
  report = length_report(split, (16, 24))
  assert report["rejected"] == 1 and report["tokens_needed"]["max"] == 34
  assert report["rows_per_bucket"] == {"16": 1, "24": 1, ">24": 1}
  assert report["suggested_length_buckets"] == [24, 40]


def test_checkpoints_by_wall_clock_as_well_as_steps(monkeypatch):
  from jaxrl_llm.rundir import checkpoint as ck

  now = [1000.0]
  monkeypatch.setattr(ck.time, "monotonic", lambda: now[0])
  cadence = ck.CheckpointCadence(every_steps=500, every_minutes=10)
  assert not cadence.due(1, final=False)
  now[0] += 599
  assert not cadence.due(2, final=False)
  now[0] += 2  # ten minutes since the start
  assert cadence.due(3, final=False)
  assert not cadence.due(4, final=False)  # the clock restarted at step 3
  assert cadence.due(500, final=False) and cadence.due(7, final=True)
  steps_only = ck.CheckpointCadence(every_steps=5, every_minutes=0)
  now[0] += 10 ** 6
  assert not steps_only.due(3, final=False) and steps_only.due(5, final=False)


def test_plot_puts_important_curves_first_and_tables_constants(tmp_path):
  from jaxrl_llm.train.plotting import _rank, plot_run

  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in (1, 2, 3):
      f.write(json.dumps({"step": step, "zz/other": step * 1.5, "train/skipped": 0,
                          "reward/accuracy": 0.1 * step, "train/loss": 1.0 / step}) + "\n")
  (tmp_path / "eval_before.json").write_text(json.dumps({"test/accuracy": 0.2}))
  out = plot_run(str(tmp_path))
  assert os.path.getsize(out) > 1000
  assert json.load(open(tmp_path / "plots" / "constants.json")) == {"train/skipped": 0.0}
  assert sorted(["zz/other", "train/loss", "reward/accuracy"], key=_rank) == [
      "reward/accuracy", "train/loss", "zz/other"]


def test_hf_checkpoint_errors_name_the_model_and_the_file(tmp_path, data_dir, capsys):
  from jaxrl_llm.cli import main
  from jaxrl_llm.config import InitConfig

  missing = tmp_path / "Qwen2.5-Coder-0.5B-Instruct"
  cfg = replace(tiny_rl_config(data_dir), init=InitConfig(hf_checkpoint=str(missing)))
  cfg_path = str(tmp_path / "a.json")
  save_json(cfg, cfg_path)
  assert main(["run", "--config", cfg_path, "--run-dir", str(tmp_path / "r1")]) == 2
  assert "hf download Qwen/Qwen2.5-Coder-0.5B-Instruct" in capsys.readouterr().err
  missing.mkdir()
  (missing / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
  assert main(["run", "--config", cfg_path, "--run-dir", str(tmp_path / "r2")]) == 2
  err = capsys.readouterr().err
  assert "init.hf_checkpoint" in err and "config.json" in err and "missing key" in err, err


def test_sft_starts_from_a_hugging_face_checkpoint_or_another_run(data_dir, tmp_path):
  """SFT on prompt/response JSONL from a local Hugging Face checkpoint (its config and tokenizer),
  then a second SFT run from the first one's policy (``init.policy_run``): each starts exactly
  at its source's weights."""
  import jax
  import numpy as np

  from conftest import tiny_config
  from jaxrl_llm.config import DataConfig, InitConfig
  from jaxrl_llm.data import build_char_tokenizer, save_tokenizer
  from jaxrl_llm.models import init_params
  from jaxrl_llm.models.hf import load_hf, save_hf
  from jaxrl_llm.models.presets import tiny
  from jaxrl_llm.train import sft_loop
  from jaxrl_llm.rundir.artifacts import load_run

  hf_dir = str(tmp_path / "hf")
  model_config = tiny("qwen2", vocab_size=104, max_seq_len=64)
  from test_rl import ONE_DEVICE

  params, _ = init_params(model_config, jax.random.PRNGKey(5), ONE_DEVICE)
  save_hf(params, model_config, hf_dir)
  save_tokenizer(build_char_tokenizer(), hf_dir)
  (tmp_path / "data").mkdir()
  _write_jsonl(tmp_path / "data" / "train.jsonl",
               [{"prompt": f"{i}+1=", "response": str(i + 1)} for i in range(40)])
  cfg = replace(tiny_config(data_dir, steps=2, checkpoint_every=2, eval_every=0),
                data=DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path / "data"),
                                validation_size=4, test_size=4, length_buckets="auto"),
                init=InitConfig(hf_checkpoint=hf_dir))
  setup = sft_loop.build(cfg, str(tmp_path / "a"))
  assert setup.model_config.family == "qwen2" and setup.model_config.attention_bias
  start = jax.device_get(setup.init_state().params)
  expected, _ = load_hf(hf_dir)
  for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(jax.device_get(expected))):
    np.testing.assert_array_equal(a, b)
  out = sft_loop.train(cfg, str(tmp_path / "a"))
  assert out["run_dir"] and json.load(open(tmp_path / "a" / "eval.json"))["test/examples"] == 4
  second = replace(cfg, init=InitConfig(policy_run=str(tmp_path / "a")))
  setup2 = sft_loop.build(second, str(tmp_path / "b"))
  trained = load_run(str(tmp_path / "a")).policy_params()
  for a, b in zip(jax.tree.leaves(jax.device_get(setup2.init_state().params)),
                  jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)
