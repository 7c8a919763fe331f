"""Outcome and process reward models trained on step-labelled solutions (docs/algorithms.md §18):
the batch layout, the losses' positions, best-of-N and AUC, one device vs the 8-device mesh, and a
whole run with held-out metrics and resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import replace, tiny_config

from jaxrl_llm.algorithms import process_rm
from jaxrl_llm.config import AlgorithmConfig, ConfigError, DataConfig
from jaxrl_llm.data import BadRowError, build_char_tokenizer
from jaxrl_llm.data import reasoning
from jaxrl_llm.data.steps import (chain_step_labels, encode_step_split, parse_step_row,
                                  step_batch)
from jaxrl_llm.ops import process as ops_process
from jaxrl_llm.train import process_rm_loop, run


def _solutions(n: int, seed: int):
  """Reasoning-task solutions with exact step labels: per problem the teacher's trace, one with
  a slip in the first step and one with a wrong final answer."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    operands = [int(x) for x in rng.integers(0, 10, 3)]
    operators = [str(o) for o in rng.choice(["+", "-"], 2)]
    prompt = reasoning.prompt_text(operands, operators)
    steps, value = reasoning.solve(operands, operators)
    a, rest = steps[0].split("=")
    slip = int(rest) + 1
    second = f"{slip}{operators[1]}{operands[2]}="
    second += str(slip + operands[2] if operators[1] == "+" else slip - operands[2])
    traces = [";".join(steps + [f"Answer: {value}"]),
              ";".join([f"{a}={slip}", second, f"Answer: {value}"]),
              ";".join(steps + [f"Answer: {value + 2}"])]
    for trace in traces:
      sol = chain_step_labels(prompt, trace)
      rows.append({"prompt": prompt, "steps": list(sol.steps), "labels": list(sol.labels),
                   "outcome": sol.outcome})
  return rows


def _write(root, rows_by_split):
  os.makedirs(root, exist_ok=True)
  for split, rows in rows_by_split.items():
    with open(os.path.join(root, f"{split}.jsonl"), "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")
  return str(root)


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("steps")
  return _write(root, {"train": _solutions(40, 0), "validation": _solutions(8, 1),
                       "test": _solutions(8, 2)})


def step_config(data_dir, steps_dir, objective="prm", **algorithm):
  base = tiny_config(data_dir, steps=4, batch_size=8, grad_accum_steps=1, checkpoint_every=2,
                     eval_every=2, eval_batch_size=8, eval_examples=0, test_examples=0)
  return replace(base, experiment=f"tiny-{objective}",
                 model=dict(max_seq_len=48),
                 algorithm=AlgorithmConfig(name="reward_model", rm_objective=objective,
                                           **algorithm),
                 data=DataConfig(source="jsonl", task="custom", jsonl_dir=steps_dir,
                                 preference_kind="steps", step_delimiter=";",
                                 step_final_delimiter=False, length_buckets=(24, 48)))


def test_the_labels_of_the_reasoning_tasks_traces():
  rows = _solutions(1, 0)
  good, slip, wrong = (parse_step_row(r, i, "train") for i, r in enumerate(rows))
  assert good.labels == (1.0, 1.0, 1.0) and good.outcome == 1.0
  assert slip.labels == (0.0, 0.0, 0.0) and slip.outcome == 1.0  # right answer, wrong steps
  assert wrong.labels == (1.0, 1.0, 0.0) and wrong.outcome == 0.0


def test_step_batches_place_labels_after_the_prompt_and_cut_long_rows():
  tok = build_char_tokenizer()
  sol = parse_step_row({"prompt": "1+2=", "steps": ["1+2=3", "Answer: 3"], "labels": [1, 1]},
                       0, "train")
  enc = encode_step_split([sol], tok, split="train", max_len=32, delimiter=";",
                          final_delimiter=False)
  ids = enc.tokens[0]
  # BOS + 4 prompt chars; the first step ends at its ';' (index 5 + 5), the last at its own last
  # character, then EOS.
  assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
  assert tok.decode(ids[5:-1]) == "1+2=3;Answer: 3"
  assert enc.positions[0].tolist() == [10, 19] and enc.outcome[0] == 1.0
  batch = step_batch(enc, [0, 0], 24, 3, tok.pad_token_id)
  assert batch["positions"].tolist()[0] == [10, 19, -1] and np.isnan(batch["labels"][0, 2])
  assert batch["response_mask"][0].sum() == len(ids) - 5 and batch["last_index"][0] == 20
  # Cut at 14 tokens: the second step is unlabelled and the outcome unknown (never read).
  cut = encode_step_split([sol], tok, split="train", max_len=14, delimiter=";",
                          final_delimiter=False)
  assert cut.positions[0].tolist() == [10, -1] and np.isnan(cut.outcome[0])
  assert cut.tokens[0][-1] != tok.eos_token_id
  with pytest.raises(BadRowError, match="field 'prompt'.*data.on_bad_row"):
    encode_step_split([sol], tok, split="train", max_len=5)


def test_losses_read_the_right_positions():
  batch = {"positions": jnp.array([[1, 3, -1], [2, -1, -1]]),
           "labels": jnp.array([[1.0, 0.25, jnp.nan], [0.0, jnp.nan, jnp.nan]]),
           "valid": jnp.array([True, True])}
  y, valid = process_rm.step_targets(batch, process_rm.Config())
  np.testing.assert_allclose(y, [[1.0, 0.25, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(valid, [[True, True, False], [True, False, False]])
  y, valid = process_rm.step_targets(batch, process_rm.Config(hard_labels=True,
                                                              last_step_only=True))
  np.testing.assert_allclose(y, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(valid, [[False, True, False], [True, False, False]])


def test_auc_and_best_of_n():
  assert process_rm_loop.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert process_rm_loop.auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
  assert np.isnan(process_rm_loop.auc([0.1, 0.2], [1, 1]))
  got = process_rm_loop.best_of_n(["a", "a", "a", "b", "b", "c"],
                                  [0.2, 0.9, 0.1, 0.7, 0.3, 0.5],
                                  np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
  # Group a picks its right solution, group b a wrong one; c (one solution) is not a group.
  assert got == {"best_of_n": 0.5, "best_of_n_random": pytest.approx((1 / 3 + 0.5) / 2),
                 "best_of_n_oracle": 1.0, "best_of_n_groups": 2.0}


def test_config_errors_name_the_field(data_dir, steps_dir, tmp_path):
  with pytest.raises(ConfigError, match="data.source"):
    DataConfig(preference_kind="steps")
  with pytest.raises(ConfigError, match="rm_scoring"):
    AlgorithmConfig(name="reward_model", rm_objective="prm", rm_scoring="mean")
  config = step_config(data_dir, steps_dir)
  with pytest.raises(ConfigError, match="train.grad_accum_steps"):
    process_rm_loop.build(replace(config, train=dict(grad_accum_steps=2)), str(tmp_path))
  with pytest.raises(ConfigError, match="data.preference_kind"):
    process_rm_loop.build(replace(config, data=dict(preference_kind="pairs")), str(tmp_path))


def test_prm_update_on_one_device_equals_eight(data_dir, steps_dir, tmp_path):
  config = step_config(data_dir, steps_dir)
  results = []
  for devices, sub in ((None, "eight"), (jax.devices()[:1], "one")):
    setup = process_rm_loop.build(config, str(tmp_path / sub), devices=devices)
    state = setup.make_state(process_rm_loop._start_params(config, "", setup, devices))
    host, _ = setup.batcher.batch(0)
    state, metrics = setup.update(state, setup.put(host))
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  (p8, m8), (p1, m1) = results
  assert m8["rm/count"] > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p8, p1)
  for k in m8:
    assert float(m1[k]) == pytest.approx(float(m8[k]), abs=1e-5), k


@pytest.mark.parametrize("objective,extra", [("prm", {}), ("orm", {"rm_orm_per_token": True})])
def test_a_whole_run_with_held_out_metrics_and_resume(data_dir, steps_dir, tmp_path, objective,
                                                      extra):
  config = step_config(data_dir, steps_dir, objective, **extra)
  text = lambda d: open(os.path.join(d, "metrics.jsonl")).read()  # noqa: E731
  ref = str(tmp_path / "ref")
  out = run(config, ref)
  rows = [json.loads(line) for line in text(ref).splitlines()]
  assert len(rows) == 4 and all(np.isfinite(r["train/loss"]) for r in rows)
  last = rows[-1]
  assert last["eval/examples"] == 24.0 and last["eval/best_of_n_groups"] == 8.0
  assert 0.0 <= last["eval/best_of_n"] <= 1.0 and last["eval/best_of_n_oracle"] == 1.0
  if objective == "prm":
    assert last["eval/steps"] == 72.0 and 0.0 <= last["eval/step_auc"] <= 1.0
  assert 0.0 <= last["eval/outcome_auc"] <= 1.0
  cut = str(tmp_path / "cut")
  run(config, cut, stop_after=2)
  resumed = process_rm_loop.resume(cut)
  assert text(cut) == text(ref)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"].params),
               jax.device_get(out["state"].params))


@pytest.fixture(scope="module")
def chain_policy(data_dir, tmp_path_factory):
  """A (barely trained) SFT policy on the reasoning task, with its verifier."""
  from jaxrl_llm.config import RewardConfig, RolloutConfig
  from jaxrl_llm.train import sft_loop

  # 60 steps: enough for the trace format ("a+b=c;Answer: c"), so solutions have steps.
  base = tiny_config(data_dir, steps=60, batch_size=16, grad_accum_steps=1, eval_every=0,
                     test_examples=0, checkpoint_every=60)
  config = replace(base, experiment="tiny-chain-sft", model=dict(max_seq_len=48),
                   optimizer=dict(learning_rate=1e-2, warmup_steps=5),
                   data=DataConfig(task="chain", chain_easy_operands=2, chain_max_operand=9,
                                   train_size=64, validation_size=8, test_size=8,
                                   length_buckets=(16, 48), data_dir=data_dir),
                   reward=RewardConfig(functions=("final_answer",), weights=(1.0,),
                                       accuracy="final_answer"),
                   rollout=RolloutConfig(max_new_tokens=24, prompts_per_step=8,
                                         samples_per_prompt=1))
  run_dir = str(tmp_path_factory.mktemp("chain-policy"))
  sft_loop.train(config, run_dir)
  return run_dir


def test_label_steps_monte_carlo_resumes_from_its_cache(chain_policy, tmp_path):
  from jaxrl_llm.train.label_steps import label_steps

  out = str(tmp_path / "mc")
  kw = dict(method="mc", samples=2, rollouts=3, prompts=4, splits=("train", "test"),
            progress=lambda *_: None)
  stats = label_steps(chain_policy, out, **kw)
  rows = [json.loads(line) for line in open(os.path.join(out, "train.jsonl"))]
  assert stats["splits"]["train"]["solutions"] == len(rows) > 0
  assert os.path.exists(os.path.join(out, "test.jsonl"))
  prefixes = 0
  for row in rows:
    assert len(row["labels"]) == len(row["steps"]) and row["outcome"] in (0.0, 1.0)
    assert row["labels"][-1] == row["outcome"]  # the last step's label is its own verdict
    for x in row["labels"][:-1]:
      assert x in (0.0, 1 / 3, 2 / 3, 1.0)  # a fraction of 3 completions
      prefixes += 1
    parse_step_row(row, 0, "train")  # the rows read back as training data
  assert prefixes > 0
  files = {s: open(os.path.join(out, f"{s}.jsonl")).read() for s in ("train", "test")}
  again = label_steps(chain_policy, out, **kw)  # every Monte-Carlo verdict from the cache
  assert again["cache_hits"] == prefixes + sum(
      len(r["labels"]) - 1 for r in map(json.loads, files["test"].splitlines()))
  assert {s: open(os.path.join(out, f"{s}.jsonl")).read() for s in ("train", "test")} == files


def test_label_steps_exact_from_the_command_line(chain_policy, tmp_path, capsys):
  from jaxrl_llm import cli

  out = str(tmp_path / "exact")
  assert cli.main(["label-steps", "--policy", chain_policy, "--output", out, "--method", "exact",
                   "--samples", "2", "--prompts", "4"]) == 0
  rows = [json.loads(line) for line in open(os.path.join(out, "validation.jsonl"))]
  for row in rows:
    want = chain_step_labels(row["prompt"], ";".join(row["steps"]))
    assert tuple(row["labels"]) == want.labels and row["outcome"] == want.outcome
  assert cli.main(["label-steps", "--policy", str(tmp_path / "none"), "--output", out]) == 2
  assert "no config.json" in capsys.readouterr().err


def test_majority_vote_and_answer_keys():
  from jaxrl_llm.train.rerank import answer_key, majority_pick

  texts = ["1+2=3;Answer: 3", "Answer: 4", "x;Answer:3", "no answer", "Answer: 4 "]
  keys = [answer_key(t, "final_answer") for t in texts]
  assert keys == ["3", "4", "3", "", "4"]
  assert majority_pick(keys) == 0  # 3 and 4 tie at two; the first seen wins
  assert majority_pick(["", "", "7"]) == 2 and majority_pick(["", ""]) == 0
  assert answer_key("  SELECT 1 ", "exact_match") == "SELECT 1"


def test_best_of_n_picks_the_scorers_maximum(chain_policy):
  from jaxrl_llm.data.reasoning import final_answer
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train.label_steps import policy_sampler
  from jaxrl_llm.train.rerank import best_of_n

  setup, params = policy_sampler(load_run(chain_policy), chain_policy)
  value = {}
  for i, p in enumerate(setup.tokenizer.batch_decode(
      [list(x) for x in setup.splits["test"].prompts], skip_special_tokens=True)):
    value[p] = setup.splits["test"].answer_texts[i]

  def oracle(prompts, completions):  # the verifier itself: best-of-N reaches pass@N
    return np.asarray([float(str(final_answer(c)) == value[p])
                       for p, c in zip(prompts, completions)])

  kw = dict(n=4, limit=8, seed=0, batch_prompts=8)
  got = best_of_n(setup, params, oracle, "test", **kw)
  assert got["best_of_n"] == got["pass_at_n"] and got["examples"] == 8
  assert got["pass_at_n"] >= got["sample"] and got["pass_at_n"] >= got["majority_vote"]
  worst = best_of_n(setup, params, lambda p, c: -oracle(p, c), "test", **kw)
  assert worst["pass_at_n"] == got["pass_at_n"] and worst["sample"] == got["sample"]
  assert worst["best_of_n"] <= got["sample"] <= got["best_of_n"]
  assert worst["greedy"] == got["greedy"]


@pytest.fixture(scope="module")
def prm_run(data_dir, steps_dir, tmp_path_factory):
  prm_dir = str(tmp_path_factory.mktemp("prm"))
  # "auto" buckets: the scorer must read the resolved ones back (data_report.json).
  out = run(replace(step_config(data_dir, steps_dir), train=dict(steps=2, eval_every=0),
                    data=dict(length_buckets="auto")), prm_dir)
  return prm_dir, out


def test_a_process_reward_model_as_a_scorer(prm_run, chain_policy, capsys):
  from jaxrl_llm import cli
  from jaxrl_llm.algorithms import process_rm as prm_lib
  from jaxrl_llm.data.steps import encode_step_split as enc_split
  from jaxrl_llm.rewards.learned import StepRewardModelFunction, reward_function

  prm_dir, out = prm_run
  fn = reward_function(prm_dir)
  assert isinstance(fn, StepRewardModelFunction)
  rows = _solutions(3, 5)
  prompts = [r["prompt"] for r in rows]
  texts = [";".join(r["steps"]) for r in rows] + [""]
  scores, probs, ends = fn.steps(prompts + [prompts[0]], texts)
  assert scores[-1] == 0.0 and len(probs[-1]) == 0  # an empty completion scores 0
  assert [len(p) for p in probs[:-1]] == [3] * len(rows)
  assert ends[0].tolist() == [len(rows[0]["steps"][0]) + 1, len(rows[0]["steps"][0]) + 1 +
                              len(rows[0]["steps"][1]) + 1, len(texts[0])]
  # The same numbers as the model's own scoring of the encoded rows (product of step probs).
  setup = out["setup"]
  from jaxrl_llm.data.steps import step_batch as batch_of

  enc = enc_split([parse_step_row(r, i, "x") for i, r in enumerate(rows)], setup.tokenizer,
                  split="x", max_len=48, delimiter=";", final_delimiter=False)
  assert isinstance(setup.config.data.length_buckets, tuple) and fn.buckets == tuple(
      setup.config.data.length_buckets)
  b = batch_of(enc, list(range(len(rows))), 48, 3, setup.tokenizer.pad_token_id)
  b["valid"] = np.ones(len(rows), bool)
  want = prm_lib.scores(jax.device_get(out["state"].params), setup.model_config,
                        {k: jnp.asarray(v) for k, v in b.items()}, setup.algo)
  np.testing.assert_allclose(scores[:-1], want["solution"], atol=1e-5)
  np.testing.assert_allclose(np.prod(np.stack(probs[:-1]), axis=1), scores[:-1], rtol=1e-5)
  # Best-of-N with it, from the command line.
  assert cli.main(["eval", chain_policy, "--best-of", "2", "--scorer", f"rm:{prm_dir}",
                   "--limit", "4"]) == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["n"] == 2 and line["examples"] == 4
  assert {"greedy", "sample", "majority_vote", "best_of_n", "pass_at_n"} <= set(line)
  assert cli.main(["eval", chain_policy, "--best-of", "2"]) == 2


def test_token_char_ends_follow_merged_tokens():
  from test_process_rewards import _merging_tokenizer

  from jaxrl_llm.train.rl_loop import token_char_ends

  tok = _merging_tokenizer()
  ids = tok("ab.\nc", add_special_tokens=False)["input_ids"]
  assert token_char_ends(tok, ids).tolist() == [1, 2, 4, 5]  # ".\n" is one token
  np.testing.assert_allclose(
      ops_process.step_token_rewards(jnp.array([[0.5, 0.25, jnp.nan]]), jnp.array([[1, 1, 2]]), 4),
      [[0.0, 0.75, 0.0, 0.0]])


def _process_rl_config(data_dir, chain_policy, prm_dir, **algorithm):
  from test_rl import tiny_rl_config

  from jaxrl_llm.config import InitConfig, RewardConfig, RolloutConfig
  from jaxrl_llm.rundir.artifacts import load_run

  policy = load_run(chain_policy, restore=False).config
  base = tiny_rl_config(data_dir, "grpo", **algorithm)
  return replace(base, experiment="tiny-process", model=policy.model, data=policy.data,
                 init=InitConfig(policy_run=chain_policy),
                 rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=4,
                                       max_new_tokens=24),
                 reward=RewardConfig(functions=("final_answer",), weights=(1.0,),
                                     accuracy="final_answer", process_model_run=prm_dir))


def test_grpo_process_supervision_and_ppo_step_rewards_run(data_dir, chain_policy, prm_run,
                                                           tmp_path):
  from jaxrl_llm.train import rl_loop

  prm_dir, _ = prm_run
  config = _process_rl_config(data_dir, chain_policy, prm_dir, advantage="grpo_process",
                              kl_coef=0.0)
  setup = rl_loop.build(config, str(tmp_path / "setup"))
  from jaxrl_llm.rundir.artifacts import load_run

  params = jax.device_put(load_run(chain_policy).policy_params(), setup.state_shardings.params)
  batch, _, _, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  rewards, positions = rl_loop.process_step_rewards(setup, batch)
  assert (positions >= 0).any() and np.all((rewards[positions >= 0] >= 0) &
                                           (rewards[positions >= 0] <= 1))
  # Every located step sits on a ';' or on the response's last character.
  width = batch["prompt_width"]
  tok = setup.tokenizer
  for r, k in zip(*np.nonzero(positions >= 0)):
    piece = tok.decode([int(batch["tokens"][r, width + positions[r, k]])])
    nxt = positions[r, k + 1] if k + 1 < positions.shape[1] else -1
    assert piece == ";" or nxt < 0
  out = rl_loop.train(config, str(tmp_path / "grpo"))
  assert np.isfinite(out["metrics"]["train/loss"]) and out["metrics"]["adv/steps"] > 0
  ppo = replace(_process_rl_config(data_dir, chain_policy, prm_dir),
                algorithm=AlgorithmConfig(name="ppo", critic="shared", kl_coef=0.0))
  out = rl_loop.train(ppo, str(tmp_path / "ppo"))
  assert out["metrics"]["rewards/step_mean"] > 0
  with pytest.raises(ConfigError, match="reward.process_model_run"):
    rl_loop.build(replace(config, algorithm=dict(advantage="grpo")), str(tmp_path / "x"))


def test_several_scorers_rerank_one_set_of_samples(chain_policy):
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train.label_steps import policy_sampler
  from jaxrl_llm.train.rerank import best_of_n

  setup, params = policy_sampler(load_run(chain_policy), chain_policy)
  first = lambda p, c: -np.arange(len(c), dtype=np.float64)  # noqa: E731 -- always sample 0
  length = lambda p, c: np.asarray([len(x) for x in c], np.float64)  # noqa: E731
  kw = dict(n=3, limit=8, seed=1, batch_prompts=8)
  both = best_of_n(setup, params, {"first": first, "length": length}, "test", **kw)
  alone = best_of_n(setup, params, length, "test", **kw)
  assert both["best_of_n/length"] == alone["best_of_n"] and "best_of_n" not in both
  assert both["sample"] == alone["sample"] and both["majority_vote"] == alone["majority_vote"]
