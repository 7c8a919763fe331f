"""Learning from demonstrations: the reasoning task with teacher traces, user demonstrations,
the verifier, and the SFT view of demonstration rows."""

import json

import numpy as np
import pytest

from jaxrl_llm.config import ConfigError, DataConfig
from jaxrl_llm.data import BadRowError, build_char_tokenizer, encode_split, load_rows
from jaxrl_llm.data import reasoning
from jaxrl_llm.data.pipeline import sft_rows
from jaxrl_llm.rewards import get_reward_function


def test_teacher_traces_are_correct_steps_and_pass_the_verifier():
  steps, value = reasoning.solve([17, 25, 9], ["+", "-"])
  assert steps == ["17+25=42", "42-9=33"] and value == 33
  # Products first, then sums left to right.
  assert reasoning.demonstration([2, 3, 4, 5], ["+", "*", "-"]) == "3*4=12;2+12=14;14-5=9;Answer: 9"
  assert reasoning.prompt_text([2, 3, 4], ["-", "*"]) == "2-3*4="
  assert reasoning.final_answer("a;b;Answer: -7 ") == -7
  assert reasoning.final_answer("Answer: 3;Answer: 4") == 4
  for bad in ("", "Answer:", "Answer: x", None, 5, "no answer 4"):
    assert reasoning.final_answer(bad) is None
  assert reasoning.trace_steps("3*4=12; 2+12=14;Answer: 14") == ("3*4=12", "2+12=14")
  sizes = {"train": 300, "validation": 50, "test": 50}
  rows = reasoning.generate({"easy": sizes, "hard": sizes}, seed=3, operators="+-*")
  assert set(rows) == {"train", "validation", "test", "train_hard", "validation_hard",
                       "test_hard"}
  prompts = [r["prompt"] for split in rows.values() for r in split]
  assert len(prompts) == len(set(prompts)) == 800  # no problem in two splits
  verify = get_reward_function("final_answer")
  for name, split in rows.items():
    demos = [r["demonstration"] for r in split]
    assert verify([r["prompt"] for r in split], demos,
                  answer=[r["answer"] for r in split]).min() == 1.0, name
    # The teacher's value is the expression's value (Python's precedence agrees).
    for r in split[:20]:
      assert int(r["answer"]) == eval(r["prompt"][:-1])  # noqa: S307 -- our own digits and ops.
  assert {r["prompt"].count("+") + r["prompt"].count("-") + r["prompt"].count("*")
          for r in rows["test_hard"]} == {4}
  assert rows == reasoning.generate({"easy": sizes, "hard": sizes}, seed=3, operators="+-*")


def test_refts_partial_reward_and_the_verifier_reward():
  partial = get_reward_function("final_answer_partial")
  out = partial(["p"] * 4, ["x=1;Answer: 5", "Answer: 4", "no answer", ""], answer=["5"] * 4)
  np.testing.assert_array_equal(out, np.asarray([1.0, 0.1, 0.0, 0.0], np.float32))
  exact = get_reward_function("final_answer")
  np.testing.assert_array_equal(exact(["p"] * 2, ["Answer: 5", "Answer: 6"],
                                      answer=["x;Answer: 5", "5"]), [1.0, 0.0])


def test_chain_task_levels_through_the_pipeline(data_dir):
  base = DataConfig(task="chain", train_size=40, validation_size=8, test_size=8,
                    data_dir=data_dir)
  easy = load_rows(base, "test")
  hard = load_rows(DataConfig(**{**base.__dict__, "chain_level": "hard"}), "test")
  assert len(easy) == len(hard) == 8
  assert all(r["level"] == b"easy" or r["level"] == "easy" for r in easy)
  split = encode_split(hard, build_char_tokenizer(), split="test", max_len=96,
                       on_bad_row="raise", on_overlong="reject")
  assert split.demonstrations is not None and len(split.demonstrations) == 8
  assert "demonstration" not in split.columns and split.columns["level"][0] == "hard"
  assert reasoning.final_answer(split.demonstrations[0][0]) == int(split.answer_texts[0])
  # SFT trains on the traces; the gold answer stays a column.
  sft = encode_split(sft_rows(hard, base, "test"), build_char_tokenizer(), split="test",
                     max_len=96, on_bad_row="raise", on_overlong="reject")
  assert sft.answer_texts[0] == split.demonstrations[0][0]
  assert sft.columns["gold_answer"][0] == split.answer_texts[0]
  with pytest.raises(ConfigError, match="chain_hard_operands"):
    DataConfig(task="chain", chain_easy_operands=4, chain_hard_operands=3)


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def test_user_demonstrations_from_jsonl(tmp_path):
  _write(tmp_path / "train.jsonl", [
      {"prompt": "1+2=", "answer": "3", "demonstration": "1+2=3;Answer: 3"},
      {"prompt": "2+2=", "answer": "4",
       "demonstration": ["2+2=4;Answer: 4", "2*2=4;Answer: 4"]}] * 10)
  dc = DataConfig(task="custom", source="jsonl", jsonl_dir=str(tmp_path), validation_size=2,
                  test_size=2)
  rows = load_rows(dc, "train")
  split = encode_split(rows, build_char_tokenizer(), split="train", max_len=64,
                       on_bad_row="raise", on_overlong="reject")
  assert [len(d) for d in split.demonstrations[:2]] in ([1, 2], [2, 1], [1, 1], [2, 2])
  assert len(sft_rows(rows, dc, "train")) == sum(len(d) for d in split.demonstrations)
  for bad, match in (({"prompt": "p", "answer": "1", "demonstration": ""}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1", "demonstration": [3]}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1", "demonstration": []}, "row 1 field 'demonstration'"),
                     ({"prompt": "p", "answer": "1"}, "row 1 field 'demonstration': missing")):
    with pytest.raises(BadRowError, match=match):
      encode_split([rows[0], bad], build_char_tokenizer(), split="train", max_len=64,
                   on_bad_row="raise", on_overlong="reject")
  with pytest.raises(BadRowError, match="row 0 field 'demonstration': missing"):
    sft_rows([{"prompt": "p", "answer": "1"}], DataConfig(sft_target="demonstration"), "train")


# --------------------------------------------------------------------------------------------
# LUFFY: mixed groups of on-policy samples and teacher traces, end to end on a tiny model.

import dataclasses  # noqa: E402
import os  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from conftest import replace  # noqa: E402
from jaxrl_llm.algorithms import TrainState  # noqa: E402
from jaxrl_llm.algorithms import policy_gradient as pg  # noqa: E402
from jaxrl_llm.config import RewardConfig, RolloutConfig  # noqa: E402
from jaxrl_llm.models import init_params  # noqa: E402
from jaxrl_llm.train import Checkpointer, read_metrics, rl_loop  # noqa: E402


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("demos")
  rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "demonstration": str(a + b)}
          for a in range(10) for b in range(6)]
  _write(root / "train.jsonl", rows)
  return str(root)


def luffy_config(data_dir, demo_dir, **rollout):
  from test_rl import tiny_rl_config

  base = tiny_rl_config(data_dir, "luffy")
  ro = dict(prompts_per_step=4, samples_per_prompt=3, max_new_tokens=4,
            sources=("policy", "demonstrations"), filters=("verified_demonstrations",))
  ro.update(rollout)
  return replace(base, experiment="tiny-luffy",
                 data=DataConfig(task="custom", source="jsonl", jsonl_dir=demo_dir,
                                 validation_size=8, test_size=8, length_buckets=(8, 12)),
                 rollout=RolloutConfig(**ro),
                 reward=RewardConfig(functions=("exact_match",), weights=(1.0,),
                                     accuracy="exact_match"))


def test_mixed_groups_mark_teacher_tokens_and_use_the_union_statistics(data_dir, demo_dir,
                                                                        tmp_path):
  config = luffy_config(data_dir, demo_dir)
  setup = rl_loop.build(config, str(tmp_path))
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(3), setup.mesh)
  batch, position, _, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  w = batch["prompt_width"]
  demo = batch["is_demonstration"]
  assert demo.sum() == 4 and len(demo) == 16 and position == 4
  # Teacher tokens are exactly the off-policy ones: the trace and its EOS.
  resp = batch["response_mask"][:, w:]
  np.testing.assert_array_equal(batch["off_policy"][demo], resp[demo])
  assert not batch["off_policy"][~demo].any()
  tok = setup.tokenizer
  for r in np.nonzero(demo)[0]:
    i = batch["prompt_index"][r]
    text = tok.decode(batch["tokens"][r, w:][resp[r]], skip_special_tokens=True)
    assert text == setup.splits["train"].answer_texts[i]
    assert batch["scores"][r] == 1.0  # verified
  # Advantages over the union of on- and off-policy rows of a group (the paper's formula).
  state = TrainState.create(params, setup.tx, jax.random.PRNGKey(0))
  device, _ = rl_loop.train_batch(setup, batch, state, 0.0)
  adv = np.asarray(device["advantages"])
  for g in range(4):
    rows = np.nonzero(batch["group_ids"] == g)[0]
    s = batch["scores"][rows].astype(np.float64)
    if s.std() == 0:
      continue
    want = (s - s.mean()) / (s.std(ddof=1) + 1e-6)
    got = [adv[r][device["mask"][r]][0] for r in rows]
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert "off_policy" in device
  # grpo_split: statistics from the on-policy rows only.
  split_cfg = replace(config, algorithm=dict(adv_stats="on_policy"))
  split_setup = dataclasses.replace(setup, config=split_cfg,
                                    prepare=jax.jit(lambda x: pg.prepare(
                                        x, pg.config_from(split_cfg.algorithm, temperature=1.0,
                                                          max_new_tokens=4), num_groups=4)))
  device2, _ = rl_loop.train_batch(split_setup, batch, state, 0.0)
  adv2 = np.asarray(device2["advantages"])
  for g in range(4):
    rows = np.nonzero(batch["group_ids"] == g)[0]
    on = rows[~demo[rows]]
    s = batch["scores"][on].astype(np.float64)
    mean = s.mean()
    scale = (s.std(ddof=1) + 1e-6) if s.std() > 0 else 1.0
    for r in rows:
      np.testing.assert_allclose(adv2[r][device2["mask"][r]][0],
                                 (batch["scores"][r] - mean) / scale, rtol=1e-5)


def test_teacher_tokens_never_use_an_importance_ratio():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(-rng.uniform(0.1, 3.0, (4, 5)), jnp.float32)
  adv = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  mask = jnp.ones((4, 5), bool)
  off = jnp.asarray([[True] * 5, [True] * 5, [False] * 5, [False] * 5])
  cfg = pg.Config(policy_loss="luffy", luffy_gamma=0.1)
  mb = lambda old: {"mask": mask, "advantages": adv, "old_logp": old, "ref_logp": logp,  # noqa: E731
                    "sampler_logp": logp, "off_policy": off}
  a, _ = pg.token_loss(cfg, logp, logp, mb(logp - 0.3), on_policy=jnp.asarray(False),
                       key=jax.random.key(0))
  b, _ = pg.token_loss(cfg, logp, logp, mb(logp + 0.7), on_policy=jnp.asarray(False),
                       key=jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(a)[:2], np.asarray(b)[:2])  # teacher rows: no ratio
  assert not np.allclose(np.asarray(a)[2:], np.asarray(b)[2:])  # the policy's rows: a ratio
  p = np.exp(np.asarray(logp)[:2])
  np.testing.assert_allclose(np.asarray(a)[:2], -np.asarray(adv)[:2] * p / (p + 0.1), rtol=1e-6)


def test_prefix_mode_marks_exactly_the_teacher_prefix(data_dir, tmp_path):
  root = tmp_path / "long"
  root.mkdir()
  _write(root / "train.jsonl", [{"prompt": f"{a}+{b}=", "answer": str(a + b),
                                 "demonstration": f"{a}+{b}={a + b}"}
                                for a in range(10) for b in range(6)])
  config = luffy_config(data_dir, str(root), max_new_tokens=8, prefix_ratio_min=0.5,
                        prefix_ratio_max=0.5, filters=())
  config = replace(config, model=dict(max_seq_len=32))
  setup = rl_loop.build(config, str(tmp_path / "run"))
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(3), setup.mesh)
  batch, _, _, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  w, tok = batch["prompt_width"], setup.tokenizer
  for r in np.nonzero(batch["is_demonstration"])[0]:
    trace = setup.splits["train"].demonstrations[batch["prompt_index"][r]][0]
    ids = tok(trace, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    k = int(np.floor(0.5 * (len(ids) - 1)))
    off = batch["off_policy"][r]
    assert off[:k].all() and not off[k:].any()
    np.testing.assert_array_equal(batch["tokens"][r, w:w + k], ids[:k])
    cont = batch["response_mask"][r, w + k:]
    assert cont[0]  # the policy wrote at least one token after the prefix
    assert np.all(batch["sampler_logp"][r, k:][cont] < 0)
    assert np.all(batch["sampler_logp"][r, :k] == 0)


@pytest.mark.slow
def test_luffy_trains_end_to_end_same_seed_and_resume(data_dir, demo_dir, tmp_path):
  config = replace(luffy_config(data_dir, demo_dir), train=dict(steps=3, checkpoint_every=1))
  text = lambda d: open(os.path.join(d, "metrics.jsonl")).read()  # noqa: E731
  ref = str(tmp_path / "ref")
  out = rl_loop.train(config, ref)
  rows = read_metrics(ref)
  assert len(rows) == 3
  for row in rows:
    assert row["train/offpolicy_fraction"] > 0
    assert row["train/sampler_gap_abs_max"] < 1e-5  # teacher tokens are left out of the gap
    # The policy's accuracy leaves the (verified) traces out; they have their own metrics.
    assert row["demonstrations/accuracy"] == 1.0 and row["demonstrations/trained_fraction"] == 1.0
    assert row["reward/accuracy"] < 1.0
    assert row["train/ratio_first_max_dev"] == 0.0
  again = str(tmp_path / "again")
  rl_loop.train(config, again)
  assert text(again) == text(ref)
  # Killed after step 2 (the demonstration cursor is the checkpointed prompt position).
  cut = str(tmp_path / "cut")
  rl_loop.train(config, cut, stop_after=2)
  assert Checkpointer(os.path.join(cut, "checkpoints"), keep=3).latest_step() == 2
  resumed = rl_loop.resume(cut)
  assert text(cut) == text(ref)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"].params),
               jax.device_get(out["state"].params))


def test_srft_weights_and_signs_follow_the_spec():
  """docs/algorithms.md §13: w_SFT = 0.5·exp(−H̄), w_RL = 0.1·exp(+H̄), both without gradient;
  the policy's correct rows are pulled up, its wrong rows pushed down (not below the floor)."""
  from jaxrl_llm import ops

  logp = jnp.asarray([[-0.5, -2.0], [-0.3, -12.0], [-1.0, -1.0]], jnp.float32)
  ent = jnp.asarray([[1.0, 1.0], [1.0, 1.0], [3.0, 3.0]], jnp.float32)
  adv = jnp.zeros((3, 2), jnp.float32)
  mask = jnp.ones((3, 2), bool)
  demo = jnp.asarray([False, False, True])
  positive = jnp.asarray([True, False, False])

  def total(lp, e):
    loss, diag = ops.srft_loss(lp, e, adv, mask, demo, positive, logp_floor=-10.0)
    return loss.sum(), diag

  (_, diag), (g_lp, g_ent) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(logp, ent)
  h = 1.0  # the mean entropy of the policy's own tokens (rows 0 and 1), not the teacher's
  np.testing.assert_allclose(diag["srft_w_sft"], 0.5 * np.exp(-h), rtol=1e-6)
  np.testing.assert_allclose(diag["srft_w_rl"], 0.1 * np.exp(h), rtol=1e-6)
  g = np.asarray(g_lp)
  np.testing.assert_allclose(g[0], [-0.1 * np.exp(h)] * 2, rtol=1e-6)  # likelihood on correct
  np.testing.assert_allclose(g[1], [1.0, 0.0])  # unlikelihood on wrong; nothing below the floor
  np.testing.assert_allclose(g[2], [-0.5 * np.exp(-h)] * 2, rtol=1e-6)  # SFT on the trace (A = 0)
  assert not np.any(np.asarray(g_ent))  # the weights carry no gradient
  # The off-policy RL term on a trace, r = π ≤ 1 (behaviour probability 1): with A > 0 it is
  # −r·A (the upper clip never binds); with A < 0 it is flat once π < 1 − ε.
  lp2 = jnp.asarray([[-1.0, -1.0], [-1.0, -1.0], [np.log(0.9), np.log(0.5)]], jnp.float32)
  w = 0.5 * np.exp(-1.0)
  for a, want in ((1.0, [-w - 0.9, -w - 0.5]), (-1.0, [-w + 0.9, -w])):
    adv2 = jnp.asarray([[0.0, 0.0], [0.0, 0.0], [a, a]], jnp.float32)
    grad = jax.grad(lambda lp: ops.srft_loss(lp, ent, adv2, mask, demo, positive)[0][2].sum())(
        lp2)
    np.testing.assert_allclose(np.asarray(grad)[2], want, rtol=1e-5)


@pytest.mark.slow
def test_srft_trains_end_to_end(data_dir, demo_dir, tmp_path):
  config = luffy_config(data_dir, demo_dir)
  config = replace(config, experiment="tiny-srft",
                   algorithm=dataclasses.replace(config.algorithm, name="srft"))
  out = rl_loop.train(config, str(tmp_path / "srft"))
  rows = read_metrics(str(tmp_path / "srft"))
  assert len(rows) == 2 and out["setup"].pg_config.policy_loss == "srft"
  for row in rows:
    assert row["train/offpolicy_fraction"] > 0 and row["train/srft_w_sft"] > 0
    assert np.isfinite(row["train/loss"])


# --------------------------------------------------------------------------------------------
# RFT: sample, verify, de-duplicate, fine-tune.


def test_rft_deduplicates_paths_by_their_equations():
  from jaxrl_llm.train.rft_loop import select_paths

  texts = ["2+3=5;5-1=4;Answer: 4", "2+3=5; 5-1=4;Answer:4", "3+2=5;5-1=4;Answer: 4",
           "2+3=5;5-1=4;Answer: 4", "wrong"]
  ok = np.asarray([True, True, True, True, False])
  assert select_paths(texts, ok, dedup="steps", cap=0) == [texts[0], texts[2]]
  assert select_paths(texts, ok, dedup="text", cap=0) == texts[:3]
  assert select_paths(texts, ok, dedup="none", cap=2) == texts[:2]
  assert select_paths(texts, np.zeros(5, bool), dedup="steps", cap=0) == []
  from jaxrl_llm.train.rft_loop import plain_rows

  assert plain_rows([{"prompt": b"1+2=", "answer": np.bytes_(b"3"), "level": b"easy"}]) == [
      {"prompt": "1+2=", "answer": "3"}]  # TFDS rows are bytes; the round's JSONL is text


@pytest.mark.slow
def test_rft_rounds_end_to_end_and_resume(data_dir, demo_dir, tmp_path, capsys):
  from jaxrl_llm.config import AlgorithmConfig, InitConfig
  from jaxrl_llm.train import run

  base = luffy_config(data_dir, demo_dir, sources=("policy",), filters=(), samples_per_prompt=4)
  base = replace(base, data=dict(length_buckets="auto"))  # as reasoning-rft: resolved by the loop
  config = replace(base, experiment="tiny-rft",
                   algorithm=AlgorithmConfig(name="rft", rft_rounds=2, rft_prompts=8,
                                             rft_dedup="text"),
                   init=InitConfig(sft_steps=2, sft_warmup_steps=1, sft_batch_size=16),
                   train=dict(steps=2, batch_size=16, grad_accum_steps=1))
  out = run(config, str(tmp_path / "rft"))
  rows = read_metrics(str(tmp_path / "rft"))
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    assert 0.0 <= r["rft/acceptance_rate"] <= 1.0 and r["rft/prompts"] == 8
    assert "test/accuracy" in r
  for i in range(2):
    assert (tmp_path / "rft" / "rounds" / str(i) / "sft" / "config.json").exists()
    lines = (tmp_path / "rft" / "rounds" / str(i) / "data" / "train.jsonl").read_text()
    assert len(lines.splitlines()) >= 40  # the warm start's SFT data is kept in every round
  assert json.load(open(tmp_path / "rft" / "eval.json"))["test/accuracy"] == \
      out["metrics"]["test/accuracy"]
  # `jaxrl-llm eval` scores the last round's policy, as the loop's own last line did.
  from jaxrl_llm import cli

  assert cli.main(["eval", str(tmp_path / "rft")]) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["accuracy"] == pytest.approx(out["metrics"]["test/accuracy"])
  # Resumed: no round is redone, the same metrics come out.
  before = (tmp_path / "rft" / "metrics.jsonl").read_text()
  run(config, str(tmp_path / "rft"), resume=True)
  assert (tmp_path / "rft" / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_reft_is_ppo_with_a_shared_trunk_and_the_partial_reward(data_dir, demo_dir, tmp_path):
  """Two whole ReFT steps (the reasoning-reft settings on the tiny task)."""
  from experiments import reasoning
  from jaxrl_llm.config import InitConfig

  reft = reasoning.config("reft")
  base = luffy_config(data_dir, demo_dir, sources=("policy",), filters=(), samples_per_prompt=4)
  config = replace(base, experiment="tiny-reft", algorithm=reft.algorithm, reward=reft.reward,
                   init=InitConfig(sft_steps=2, sft_warmup_steps=1, sft_batch_size=16))
  assert config.algorithm.critic == "shared" and config.algorithm.gae_lambda == 0.95
  assert config.reward.functions[0] == "final_answer_partial"
  rl_loop.train(config, str(tmp_path / "reft"))
  rows = read_metrics(str(tmp_path / "reft"))
  assert len(rows) == 2 and all(np.isfinite(r["train/loss"]) for r in rows)
  assert "reward/final_answer_partial/mean" in rows[0]
