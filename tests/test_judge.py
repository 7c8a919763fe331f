"""RLAIF (docs/algorithms.md §19): function and LM judges, position-bias averaging, clamping, option
tokens; labeling into soft-label pairs (orientation, drops, cache versioning); the soft-label
Bradley–Terry loss (17); and the ``label`` CLI over a tiny reward-model run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import replace, tiny_config
from jaxrl_llm import cli
from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms import reward_model as rm
from jaxrl_llm.config import AlgorithmConfig, DataConfig, InitConfig, ModelConfig
from jaxrl_llm.data import preference as pref
from jaxrl_llm.data.pipeline import BadRowError
from jaxrl_llm.data.tokenizer import build_char_tokenizer
from jaxrl_llm.models import init_params
from jaxrl_llm.rewards import judge as J

MODEL = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


def digits_score(prompts, completions, **_):
  """Sorted-digits hidden score: a deterministic "reward function"."""
  return np.asarray([pref.hidden_score(c) for c in completions], np.float32)


class Counting:
  """A judge that counts its calls and rows (for the cache tests)."""

  def __init__(self, judge):
    self.inner, self.calls, self.rows = judge, 0, 0
    self.judge_id, self.template = judge.judge_id, judge.template

  def preference(self, prompts, first, second):
    self.calls += 1
    self.rows += len(prompts)
    return self.inner.preference(prompts, first, second)


@pytest.fixture(scope="module")
def lm_parts():
  tok = build_char_tokenizer()
  config = MODEL.with_vocab(len(tok))
  one = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
  params, _ = init_params(config, jax.random.PRNGKey(0), one)
  return params, config, tok


def _lm(lm_parts, **kw):
  params, config, tok = lm_parts
  kw.setdefault("template", "Q:{prompt} A:{first} B:{second} best:")
  return J.LMJudge(params, config, tok, batch_size=4, buckets=(32, 64), **kw)


def test_function_judge_is_bt_and_symmetric():
  judge = J.FunctionJudge(digits_score, temperature=0.5)
  prompts, a, b = ["n=3:"] * 3, ["123", "321", "111"], ["321", "132", "111"]
  p = judge.preference(prompts, a, b)
  s_a, s_b = digits_score(None, a), digits_score(None, b)
  np.testing.assert_allclose(p, 1 / (1 + np.exp(-(s_a - s_b) / 0.5)), rtol=1e-6)
  np.testing.assert_allclose(p + judge.preference(prompts, b, a), 1.0, atol=1e-6)
  assert p.dtype == np.float32 and p[2] == 0.5
  assert "digits_score" in judge.judge_id
  assert J.FunctionJudge(digits_score, judge_id="v2").judge_id == "v2"


def test_lm_judge_probabilities_orders_and_clamp(lm_parts):
  prompts = ["n=3:", "n=4:", "n=5:", "x", "y"]
  a = ["123", "9876", "55555", "a", "hello"]
  b = ["321", "1234", "12345", "b", "world" * 3]
  single = _lm(lm_parts, both_orders=False)
  p1 = single.preference(prompts, a, b)
  assert p1.shape == (5,) and p1.dtype == np.float32
  assert np.all((p1 > 0) & (p1 < 1))
  # A random model has a position bias: one order alone is not antisymmetric.
  assert not np.allclose(p1 + single.preference(prompts, b, a), 1.0, atol=1e-4)
  both = _lm(lm_parts)
  p_ab, p_ba = both.preference(prompts, a, b), both.preference(prompts, b, a)
  np.testing.assert_allclose(p_ab + p_ba, 1.0, atol=1e-6)
  # The average is (p_ab + 1 - p_ba) / 2 of the single-order labels.
  np.testing.assert_allclose(p_ab, (p1 + 1 - single.preference(prompts, b, a)) / 2, atol=1e-6)
  # The random labeler is near 0.5; a narrow clamp binds.
  clamped = _lm(lm_parts, clamp=(0.499, 0.501)).preference(prompts, a, b)
  assert np.all((clamped >= 0.499) & (clamped <= 0.501))
  np.testing.assert_allclose(clamped, np.clip(p_ab, 0.499, 0.501), atol=1e-7)
  # Different judge settings -> different judge ids (cache versioning).
  assert len({single.judge_id, both.judge_id, _lm(lm_parts, clamp=(0.4, 0.6)).judge_id}) == 3


def test_lm_judge_options_template_and_truncation(lm_parts):
  with pytest.raises(ValueError, match="'AB'"):
    _lm(lm_parts, options=("AB", "2"))
  with pytest.raises(ValueError, match="same token"):
    _lm(lm_parts, options=("1", "1"))
  with pytest.raises(ValueError, match="{other}"):
    _lm(lm_parts, template="{prompt} {other}")
  with pytest.raises(ValueError, match="level '10'"):
    _lm(lm_parts).score(["p"], ["a"], levels=("0", "10"))
  judge = _lm(lm_parts)
  # Over-long responses are cut to fit the largest bucket (64), the same way in both orders.
  long_a, long_b = "1" * 100, "2" * 90
  p = judge.preference(["n=3:"], [long_a], [long_b])
  assert np.isfinite(p).all()
  seqs = judge._render(judge._parts, [{"prompt": "n=3:", "first": long_a, "second": long_b},
                                      {"prompt": "n=3:", "first": long_b, "second": long_a}])
  assert all(len(s) <= 64 for s in seqs) and sorted(seqs[0]) == sorted(seqs[1])
  # Direct scoring: probability-weighted level in [-1, 1].
  s = judge.score(["n=3:", "n=4:"], ["123", "4321"])
  assert s.shape == (2,) and s.dtype == np.float32 and np.all(np.abs(s) <= 1)
  np.testing.assert_allclose(judge(["n=3:"], ["123"]), s[:1], atol=1e-6)


def test_label_pairs_orients_drops_and_caches(tmp_path):
  rows = [{"prompt": "n=3:", "responses": ["321", "123", "132"]},
          {"prompt": "n=4:", "responses": ["1234", "1234"]},
          {"prompt": "n=4:", "responses": ["1243", "1342"]}]  # Equal hidden scores: p = 0.5.
  judge = Counting(J.FunctionJudge(digits_score, temperature=0.25))
  cache = str(tmp_path / "cache.jsonl")
  out, stats = J.label_pairs(judge, rows, min_confidence=0.1, cache_path=cache)
  assert stats["rows"] == 3 and stats["pairs"] == 3 + 1 + 1
  assert stats["identical"] == 1 and stats["low_confidence"] == 1 and stats["kept"] == 3
  assert judge.calls == 1 and judge.rows == 4 and stats["judged"] == 4
  for r in out:
    assert pref.hidden_score(r["chosen"]) > pref.hidden_score(r["rejected"])
    assert 0.5 <= r["probability"] <= 1.0 and r["labeler"] == judge.judge_id
    pref.validate_pair(r, 0, "train")
    assert pref.pair_probability(r, 0, "train") == r["probability"]
  # "123" vs "321": sigma((1 - 0) / 0.25).
  top = next(r for r in out if r["chosen"] == "123" and r["rejected"] == "321")
  assert top["probability"] == pytest.approx(1 / (1 + np.exp(-4.0)), rel=1e-6)
  # Relabeling with the same judge is free; the outcome is identical.
  again, stats2 = J.label_pairs(judge, rows, min_confidence=0.1, cache_path=cache)
  assert judge.calls == 1 and stats2["cache_hits"] == 4 and stats2["judged"] == 0
  assert again == out
  # A different judge id (or template) misses the cache.
  other = Counting(J.FunctionJudge(digits_score, temperature=0.25, judge_id="fn:v2"))
  J.label_pairs(other, rows, cache_path=cache)
  assert other.calls == 1 and other.rows == 4
  # Adjacent pairs only, and malformed rows name the row and field.
  _, st = J.label_pairs(judge, rows[:1], pairs="adjacent")
  assert st["pairs"] == 2
  with pytest.raises(ValueError, match="row 1 field 'responses'"):
    J.label_pairs(judge, [rows[0], {"prompt": "p", "responses": ["only"]}])


def test_probability_field_validation_and_batches():
  tok = build_char_tokenizer()
  row = {"prompt": "p", "chosen": "a", "rejected": "b"}
  for bad in (0.3, 1.5, float("nan"), "high", True):
    with pytest.raises(BadRowError, match="'probability'"):
      pref.validate_pair(dict(row, probability=bad), 0, "train")
  rows = [dict(row, probability=0.75), row]
  enc = pref.encode_preference_split(rows, tok, kind="pairs", split="train", max_len=16)
  np.testing.assert_allclose(enc.probabilities, [0.75, 1.0])
  batcher = pref.PreferenceBatcher(enc, batch_size=2, buckets=(16,), pad_id=tok.pad_token_id,
                                   data_key=rng_lib.purpose_key(0, "data"), shuffle=False)
  batch, _ = batcher.batch(0)
  assert batch["probability"].dtype == np.float32
  np.testing.assert_allclose(batch["probability"], [0.75, 1.0])


def test_soft_label_bradley_terry():
  d = jnp.linspace(-4.0, 4.0, 9)
  hard = -jax.nn.log_sigmoid(d)
  np.testing.assert_array_equal(rm.soft_label_bt_loss(hard, d, jnp.ones_like(d)), hard)
  p = jnp.full_like(d, 0.7)
  want = -(0.7 * jax.nn.log_sigmoid(d) + 0.3 * jax.nn.log_sigmoid(-d))
  np.testing.assert_allclose(rm.soft_label_bt_loss(hard, d, p), want, rtol=1e-5, atol=1e-6)
  half = lambda x: rm.soft_label_bt_loss(-jax.nn.log_sigmoid(x), x, jnp.asarray(0.5))
  assert float(jax.grad(half)(0.0)) == 0.0
  values = jax.vmap(half)(d)
  assert int(jnp.argmin(values)) == 4  # Minimised at d = 0.
  # Through the reward-model loss: p = 1 in the batch equals the hard loss; p = 1/2 differs.
  scores = jnp.asarray([[1.0, -0.5], [0.2, 0.4]])
  micro = {"tokens": jnp.zeros((2, 2, 4), jnp.int32), "last_index": jnp.zeros((2, 2), jnp.int32),
           "ranking": jnp.asarray([[0, 1], [0, 1]], jnp.int32), "margin": jnp.zeros((2,))}
  config = rm.Config()
  w = rm.batch_weights(micro, config)
  hard_loss, _ = rm._list_loss(scores, micro, w, config, None)
  one, _ = rm._list_loss(scores, dict(micro, probability=jnp.ones((2,))), w, config, None)
  soft, _ = rm._list_loss(scores, dict(micro, probability=jnp.asarray([0.5, 0.5])), w, config,
                          None)
  assert float(one) == float(hard_loss)
  log_sig = lambda x: -np.log1p(np.exp(-x))
  want = np.mean([-(0.5 * log_sig(x) + 0.5 * log_sig(-x)) for x in (1.5, -0.2)])
  assert float(soft) == pytest.approx(want, rel=1e-5)


def _tiny_rm(tmp_path):
  data_dir = str(tmp_path / "tfds")
  cfg = tiny_config(data_dir, steps=2, checkpoint_every=2, eval_every=0, test_examples=8,
                    eval_batch_size=8, batch_size=8, grad_accum_steps=1,
                    async_checkpointing=False)
  cfg = replace(cfg, experiment="tiny-rm",
                model=ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                                  max_seq_len=32),
                data=DataConfig(task="sorted_digits", train_size=16, validation_size=0,
                                test_size=8, length_buckets=(16,), data_dir=data_dir,
                                preference_kind="pairs"),
                algorithm=AlgorithmConfig(name="reward_model"), init=InitConfig())
  from jaxrl_llm.train import preference_loop

  run_dir = str(tmp_path / "rm")
  preference_loop.train(cfg, run_dir)
  return run_dir, data_dir


def test_label_cli_with_a_reward_model_run(tmp_path, capsys):
  run_dir, data_dir = _tiny_rm(tmp_path)
  cand = tmp_path / "candidates.jsonl"
  rows = [{"prompt": "n=3:", "responses": ["123", "321", "213"]},
          {"prompt": "n=4:", "responses": ["1234", "4321"]}]
  cand.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "labeled"
  assert cli.main(["label", "--judge", f"rm:{run_dir}", "--input", str(cand),
                   "--output", str(out), "--validation-fraction", "0", "--test-fraction", "0"]) == 0
  labels = json.loads((out / "labels.json").read_text())
  assert labels["kept"] == 4 and labels["judge_id"].startswith("rm:")
  pairs = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
  assert len(pairs) == 4
  # The judge is the reward model: P = sigma(r_chosen - r_rejected) on raw scores.
  judge = J.RewardModelJudge(run_dir)
  for r in pairs:
    assert r["probability"] == pytest.approx(
        float(judge.preference([r["prompt"]], [r["chosen"]], [r["rejected"]])[0]), abs=1e-5)
  # The output feeds the preference pipeline (JSONL -> TFDS -> batches with soft labels).
  sources = pref.prepare_preference(str(out), "pairs", data_dir)
  got = pref.load_split_rows(sources["train"])
  enc = pref.encode_preference_split(got, build_char_tokenizer(), kind="pairs", split="train",
                                     max_len=16)
  np.testing.assert_allclose(enc.probabilities, [r["probability"] for r in pairs], rtol=1e-6)
  # A second run hits the cache (nothing judged).
  capsys.readouterr()
  assert cli.main(["label", "--judge", f"rm:{run_dir}", "--input", str(cand),
                   "--output", str(out)]) == 0
  assert json.loads(capsys.readouterr().out)["judged"] == 0
  # Errors: a missing run dir, a malformed row (line and field), a bad judge spec -> exit 2.
  assert cli.main(["label", "--judge", f"rm:{tmp_path / 'nope'}", "--input", str(cand),
                   "--output", str(out)]) == 2
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "p"}) + "\n")
  assert cli.main(["label", "--judge", f"rm:{run_dir}", "--input", str(bad),
                   "--output", str(out)]) == 2
  err = capsys.readouterr().err
  assert "line 2" in err and "'responses'" in err
  assert cli.main(["label", "--judge", "gpt:x", "--input", str(cand), "--output",
                   str(out)]) == 2
  # An lm: judge needs a policy run, not a reward model.
  assert cli.main(["label", "--judge", f"lm:{run_dir}", "--input", str(cand), "--output",
                   str(out)]) == 2
  assert "reward/value model" in capsys.readouterr().err
  assert os.path.exists(out / "label_cache.jsonl")


def test_labeled_pairs_are_split_by_prompt(tmp_path):
  """label writes held-out splits: every pair of a prompt lands in one split, deterministically,
  in about the requested fractions."""
  rows = [{"prompt": f"n={i}:", "chosen": "12", "rejected": "21", "probability": 0.9}
          for i in range(400) for _ in range(2)]
  J.write_labeled(str(tmp_path), rows, {"kept": len(rows)}, validation_fraction=0.1,
                  test_fraction=0.2)
  split_of = {}
  for split in ("train", "validation", "test"):
    for line in (tmp_path / f"{split}.jsonl").read_text().splitlines():
      prompt = json.loads(line)["prompt"]
      assert split_of.setdefault(prompt, split) == split
  counts = json.loads((tmp_path / "labels.json").read_text())["split_pairs"]
  assert sum(counts.values()) == 800
  assert 40 <= counts["validation"] // 2 <= 80 and 60 <= counts["test"] // 2 <= 100
  assert J.holdout_split("n=7:", validation_fraction=0.1, test_fraction=0.2) == split_of["n=7:"]
  with pytest.raises(ValueError, match="fractions"):
    J.write_labeled(str(tmp_path), rows, {}, validation_fraction=0.6, test_fraction=0.5)
  # Few distinct prompts (a task whose prompt is a length): hold out candidate rows instead,
  # every pair of one candidate row in one split.
  same = [{"prompt": "n=3:", "chosen": "123", "rejected": "321", "probability": 0.9}] * 600
  sources = [i // 3 for i in range(600)]
  J.write_labeled(str(tmp_path / "rows"), same, {"pair_rows": sources}, validation_fraction=0.1,
                  test_fraction=0.2, holdout_by="row")
  by_row = json.loads((tmp_path / "rows" / "labels.json").read_text())
  assert by_row["holdout_by"] == "row" and "pair_rows" not in by_row
  assert 60 <= by_row["split_pairs"]["test"] <= 180 and by_row["split_pairs"]["test"] % 3 == 0
  J.write_labeled(str(tmp_path / "prompts"), same, {"pair_rows": sources})
  assert json.loads((tmp_path / "prompts" / "labels.json").read_text())["split_pairs"][
      "train"] in (0, 600)


def test_warm_start_of_labeled_pairs_uses_the_tasks_demonstrations(tmp_path):
  """The README's RLAIF follow-up: a reward model on `label`'s pairs warm-starts on the synthetic
  task's demonstrations, never on the pairs file; a task without demonstrations says what to set."""
  from experiments import get_experiment
  from jaxrl_llm.config import ConfigError, apply_overrides
  from jaxrl_llm.train.sft_loop import warm_start_config

  cfg = apply_overrides(get_experiment("reward-model-sorted-digits"),
                        ["data.source=jsonl", f"data.jsonl_dir={tmp_path}",
                         "data.preference_kind=pairs"])
  sft = warm_start_config(cfg)
  assert sft.data.source == "tfds" and sft.data.preference_kind == "" and sft.data.jsonl_dir == ""
  custom = apply_overrides(cfg, ["data.task=custom"])
  with pytest.raises(ConfigError, match="init.sft_steps.*init.policy_run"):
    warm_start_config(custom)
