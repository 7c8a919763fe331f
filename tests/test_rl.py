"""Online RL: every algorithm's update lowers its own loss, two whole RL steps per algorithm,
on-policy ratio and sampler gap, determinism and resume, DAPO dynamic sampling, reward failures,
and the 8-device mesh against one device."""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import replace, tiny_config
from jaxrl_llm import ops
from jaxrl_llm.parallel import replicated
from jaxrl_llm.algorithms import policy_gradient as pg
from jaxrl_llm.algorithms.common import TrainState, make_optimizer
from jaxrl_llm.config import (AlgorithmConfig, ConfigError, InitConfig, MeshConfig, ModelConfig,
                              OptimizerConfig, RewardConfig, RolloutConfig, apply_overrides)
from jaxrl_llm.models import Decoder, init_params
from jaxrl_llm.rewards import (RewardError, RewardRunner, RewardSpec, call_with_timeout,
                               overlong_penalty)
from jaxrl_llm.train import Checkpointer, read_metrics, rl_loop

ALGORITHMS = list(pg.PRESETS)


def tiny_rl_config(data_dir, algorithm="grpo", **algorithm_overrides):
  base = tiny_config(data_dir, steps=2, checkpoint_every=2, eval_every=0, test_examples=8,
                     eval_batch_size=8)
  fields = dict(pg.PRESETS[algorithm])
  fields.update(algorithm_overrides)
  return replace(
      base, experiment=f"tiny-{algorithm}",
      algorithm=AlgorithmConfig(**fields),
      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=0, end_learning_rate_ratio=1.0),
      rollout=RolloutConfig(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=4),
      # An untrained model never answers exactly; DAPO filters on the partial-credit reward.
      reward=RewardConfig(functions=("exact_match", "digit_match"), weights=(1.0, 0.5),
                          accuracy="digit_match" if algorithm == "dapo" else "exact_match"),
      init=InitConfig())


# --------------------------------------------------------------------------------------------
# update() on a fixed batch, for every algorithm.

MODEL = ModelConfig(vocab_size=24, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_seq_len=16)
N, P, T, G = 16, 4, 4, 4
ONE_DEVICE = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                               ("data", "fsdp", "tensor"))


def _fixed_batch(config: pg.Config, params, apply_fn):
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, MODEL.vocab_size, (N, P + T)).astype(np.int32)
  lengths = rng.integers(1, T + 1, N)
  mask = np.arange(T)[None, :] < lengths[:, None]
  attention = np.concatenate([np.ones((N, P), bool), mask], 1)
  tokens = np.where(attention, tokens, 0)
  out = pg.response_logprobs(apply_fn, params, MODEL, jnp.asarray(tokens),
                             jnp.asarray(attention), jnp.asarray(mask))
  old = out.logp
  ref = old - 0.1 * jnp.asarray(mask, jnp.float32)
  scores = jnp.asarray(rng.integers(0, 2, N), jnp.float32)
  scores = scores.at[0].set(1.0).at[1].set(0.0)  # Group 0 is never constant.
  inputs = {"scores": scores, "group_ids": jnp.repeat(jnp.arange(N // G), G),
            "mask": jnp.asarray(mask), "old_logp": old, "ref_logp": ref,
            "kl_coef": jnp.asarray(config.kl_coef, jnp.float32),
            "baseline_scores": jnp.full((N,), 0.5, jnp.float32),
            # PRIME's implicit per-token rewards (read only by its estimator).
            "process_rewards": jnp.asarray(0.05 * rng.normal(size=(N, T)) * mask, jnp.float32)}
  adv, _ = pg.prepare(inputs, config, num_groups=N // G)
  return {"tokens": jnp.asarray(tokens), "attention_mask": jnp.asarray(attention),
          "mask": jnp.asarray(mask), "advantages": adv, "old_logp": old, "ref_logp": ref,
          "sampler_logp": old}


def _loss_at(config, apply_fn, params, batch):
  out = pg.response_logprobs(apply_fn, params, MODEL, batch["tokens"], batch["attention_mask"],
                             batch["mask"])
  per_token, _ = pg.token_loss(config, out.logp, out.entropy, batch,
                               on_policy=jnp.asarray(False), key=jax.random.PRNGKey(0))
  return ops.aggregate_loss(per_token, batch["mask"], config.loss_aggregation,
                            norm_constant=config.norm_constant)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_update_reduces_its_own_loss(algorithm):
  fields = dict(pg.PRESETS[algorithm])
  fields.update(epochs=2, minibatches=2)
  if fields.get("kl_coef", 0) > 0:
    fields["kl_coef"] = 0.05  # Make the KL term visible.
  algo = AlgorithmConfig(**fields)
  config = pg.config_from(algo, temperature=1.0, max_new_tokens=T)
  model = Decoder(MODEL)
  params, _ = init_params(MODEL, jax.random.PRNGKey(0), ONE_DEVICE)
  tx, schedule = make_optimizer(OptimizerConfig(learning_rate=3e-3, warmup_steps=0,
                                                end_learning_rate_ratio=1.0), 100)
  batch = _fixed_batch(config, params, model.apply)
  assert float(jnp.abs(batch["advantages"]).sum()) > 0
  update = jax.jit(pg.make_update(model.apply, MODEL, tx, schedule, config))
  state = TrainState.create(params, tx, jax.random.PRNGKey(1))
  before = float(_loss_at(config, model.apply, params, batch))
  for _ in range(3):
    state, metrics = update(state, batch)
    assert np.isfinite(float(metrics["train/loss"]))
    assert float(metrics["train/ratio_first_max_dev"]) == 0.0
  after = float(_loss_at(config, model.apply, state.params, batch))
  assert after < before - 1e-6, (algorithm, before, after)
  assert int(state.step) == 3 * 2 * 2  # epochs x minibatches optimizer steps per call.


def test_micro_batches_equal_one_batch():
  algo = AlgorithmConfig(**dict(pg.PRESETS["grpo"], kl_coef=0.05))
  model = Decoder(MODEL)
  params, _ = init_params(MODEL, jax.random.PRNGKey(0), ONE_DEVICE)
  tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0), 10)
  outs = []
  for micro in (1, 4):
    config = pg.config_from(dataclasses.replace(algo, micro_batches=micro), temperature=1.0,
                            max_new_tokens=T)
    batch = _fixed_batch(config, params, model.apply)
    update = jax.jit(pg.make_update(model.apply, MODEL, tx, schedule, config))
    state, metrics = update(TrainState.create(params, tx, jax.random.PRNGKey(1)), batch)
    outs.append((jax.device_get(state.params), float(metrics["train/loss"])))
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               outs[0][0], outs[1][0])


# --------------------------------------------------------------------------------------------
# Whole RL steps.


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_rl_steps_end_to_end(algorithm, data_dir, tmp_path):
  config = tiny_rl_config(data_dir, algorithm)
  out = rl_loop.train(config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [1, 2]
  for row in rows:
    for key in ("reward/mean", "reward/exact_match/mean", "reward/digit_match/mean",
                "reward/accuracy", "response/length_mean", "response/length_max",
                "response/clipped_fraction", "train/clipfrac", "train/clipfrac_lower",
                "train/approx_kl_old", "train/entropy", "train/grad_norm",
                "groups/zero_variance_fraction", "train/sampler_gap_abs_max", "train/cov",
                "train/cov_clip_band", "train/cov_kl_topk_share"):
      assert key in row and np.isfinite(row[key]), (algorithm, key)
    # On-policy: the first minibatch's ratio is exactly 1; sampler and trainer agree.
    assert row["train/ratio_first_max_dev"] == 0.0
    assert row["train/sampler_gap_abs_max"] < 1e-5
  if config.algorithm.uses_reference:
    assert "kl/ref" in rows[-1]
  else:
    assert out["setup"].reference is None  # β = 0: no reference model at all.
  perf = [json.loads(x) for x in open(tmp_path / "perf.jsonl")]
  assert {"time/generate_s", "time/reward_s", "time/update_s", "perf/tokens_per_s"} <= set(perf[0])
  assert perf[-1]["rollout/compilations"] == 1 + (algorithm == "remax")
  ev = json.load(open(tmp_path / "eval.json"))
  assert {"test/accuracy", "test/accuracy_before", "test/improvement"} <= set(ev)


def test_sampler_logprobs_equal_trainer_old_logprobs(data_dir, tmp_path):
  config = tiny_rl_config(data_dir, "grpo", old_logp_pass="always")
  setup = rl_loop.build(config, str(tmp_path))
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(3), setup.mesh)
  state = TrainState.create(params, setup.tx, jax.random.PRNGKey(0))
  batch, _, _, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  # A KL reference (train() sets the starting policy; build() leaves it unset). A different
  # model, so that the KL term has a real gradient (the untrained policy's rewards are all 0).
  setup = dataclasses.replace(setup, reference=init_params(setup.model_config,
                                                           jax.random.PRNGKey(4), setup.mesh)[0])
  calls, logprobs, reference = [], setup.logprobs, setup.reference

  def counted(p, *args):
    calls.append(p is reference)
    return logprobs(p, *args)

  setup = dataclasses.replace(setup, logprobs=counted)
  device_batch, diag = rl_loop.train_batch(setup, batch, state, 0.04)
  assert calls == [False, True]  # the old policy, then the reference
  m = np.asarray(device_batch["mask"])
  gap = np.abs(np.asarray(device_batch["old_logp"]) - batch["sampler_logp"])[m]
  assert m.sum() > 0 and gap.max() < 1e-5
  # "auto" (the default here: one epoch, one minibatch, KL in the loss) skips that forward: the
  # update reads the rollout log-probs from its own pass. Same step, same params, bit for bit;
  # the metrics that read old_logp agree within float tolerance.
  auto_config = tiny_rl_config(data_dir, "grpo")
  assert pg.reuses_update_logp(auto_config.algorithm)
  auto = dataclasses.replace(setup, config=auto_config)
  calls.clear()
  auto_batch, auto_diag = rl_loop.train_batch(auto, batch, state, 0.04)
  assert calls == [True]  # the reference only: no old-policy forward
  assert "old_logp" not in auto_batch and "kl_ref_seq" not in auto_diag
  update_auto = jax.jit(pg.make_update(setup.model.apply, setup.model_config, setup.tx,
                                       setup.schedule, pg.config_from(
                                           auto_config.algorithm, temperature=1.0,
                                           max_new_tokens=4)),
                        out_shardings=(setup.state_shardings, replicated(setup.mesh)))
  s2, m2 = update_auto(state, auto_batch)
  s1, m1 = setup.update(state, device_batch)  # donates state: last
  # Not bit for bit: the two programs differ (one also returns its log-probs), so XLA may fuse
  # and order the backward's sums differently; the step itself is the same.
  for a, b in zip(jax.tree.leaves(jax.device_get(s1.params)),
                  jax.tree.leaves(jax.device_get(s2.params))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)  # Adam: near-zero grads amplify
  assert m2["train/sampler_gap_abs_max"] < 1e-5
  np.testing.assert_allclose(float(m2["kl/ref"]), float(diag["kl_ref_seq"]), rtol=1e-4,
                             atol=1e-7)
  for key in ("train/cov", "train/loss", "train/entropy"):
    np.testing.assert_allclose(float(m2[key]), float(m1[key]), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def grpo_reference(data_dir, tmp_path_factory):
  config = replace(tiny_rl_config(data_dir, "grpo"), train=dict(steps=4, checkpoint_every=2))
  run_dir = str(tmp_path_factory.mktemp("grpo_ref"))
  out = rl_loop.train(config, run_dir)
  return config, run_dir, jax.device_get(out["state"].params), traces(out["setup"])


def traces(setup) -> dict:
  """How often each jitted step function was traced (one per compilation)."""
  return {"update": setup.update._cache_size(), "logprobs": setup.logprobs._cache_size(),
          "sampler": setup.sampler.compilations}


def test_no_step_function_is_traced_again_after_the_first_step(grpo_reference):
  # Four steps with checkpoints, a KL reference and evaluation: one trace each (a state that
  # changes sharding, committed-ness or weak types after the first donated update would show
  # here as 2).
  config, _, _, counts = grpo_reference
  assert config.algorithm.kl_coef > 0 and config.train.steps == 4
  assert counts == {"update": 1, "logprobs": 1, "sampler": 1}


def test_same_seed_same_metrics_and_resume_equality(grpo_reference, tmp_path):
  config, ref_dir, ref_params, _ = grpo_reference
  text = lambda d: open(os.path.join(d, "metrics.jsonl")).read()
  again = str(tmp_path / "again")
  os.makedirs(again)
  rl_loop.train(config, again)
  assert text(again) == text(ref_dir)
  # Interrupted after step 3 (last checkpoint at 2), then resumed: identical to uninterrupted.
  cut = str(tmp_path / "cut")
  os.makedirs(cut)
  rl_loop.train(config, cut, stop_after=3)
  assert Checkpointer(os.path.join(cut, "checkpoints"), keep=3).latest_step() == 2
  out = rl_loop.resume(cut)
  assert text(cut) == text(ref_dir)
  # A restored state has the signature of an updated one: no second trace after resume either.
  assert traces(out["setup"]) == {"update": 1, "logprobs": 1, "sampler": 1}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["state"].params), ref_params)
  # A different seed differs (the comparisons above can fail).
  other = str(tmp_path / "other")
  os.makedirs(other)
  rl_loop.train(replace(config, seed=123, train=dict(steps=1)), other)
  assert read_metrics(other)[0]["train/entropy"] != read_metrics(ref_dir)[0]["train/entropy"]


def _digit_fraction(prompts, completions, **_):
  """A reward with signal even for an untrained model: the fraction of digits in the text."""
  return np.asarray([sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions],
                    np.float32)


def test_mesh_with_fsdp_and_tensor_matches_one_device(data_dir, tmp_path):
  # Adam's eps is raised so that float noise in near-zero gradient entries is not amplified to
  # ±lr (which would make any two summation orders disagree); real gradients dominate it.
  config = replace(tiny_rl_config(data_dir, "grpo", kl_coef=0.04),
                   optimizer=dict(eps=1e-3), train=dict(steps=2),
                   reward=RewardConfig(functions=("digits",), weights=(1.0,), accuracy=""))
  specs = [RewardSpec("digits", _digit_fraction)]
  sharded = replace(config, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
  single = replace(config, mesh=MeshConfig(data=1))
  a = rl_loop.train(sharded, str(tmp_path / "a"), reward_fns=specs)
  b = rl_loop.train(single, str(tmp_path / "b"), devices=jax.devices()[:1], reward_fns=specs)
  ra, rb = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
  for x, y in zip(ra, rb):
    assert x["reward/mean"] == y["reward/mean"]  # Same samples: the sampler is mesh-independent.
    assert x["reward/std"] > 0
    np.testing.assert_allclose(x["train/loss"], y["train/loss"], rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-3, atol=2e-5),
               jax.device_get(a["state"].params), jax.device_get(b["state"].params))
  from jax.sharding import PartitionSpec
  assert a["state"].params["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")


# --------------------------------------------------------------------------------------------
# DAPO: dynamic sampling and overlong shaping.


def test_overlong_shaping_matches_spec():
  # docs/algorithms.md §24: L_max = 20480, L_cache = 4096.
  got = overlong_penalty(np.array([16000, 16384, 18432, 20480, 20481]), max_length=20480,
                         buffer=4096)
  np.testing.assert_allclose(got, [0.0, 0.0, -0.5, -1.0, -1.0], atol=1e-6)
  np.testing.assert_allclose(overlong_penalty(np.array([18432]), max_length=20480, buffer=4096,
                                              factor=0.5), [-0.25])


def _plus_only(prompts, completions, **_):
  """Varies within '+' groups (by completion), constant 0 for '-' groups."""
  return np.asarray([float("+" in p and sum(map(ord, c)) % 2 == 1)
                     for p, c in zip(prompts, completions)], np.float32)


def test_dapo_dynamic_sampling_refills_the_batch(data_dir, tmp_path):
  config = replace(tiny_rl_config(data_dir, "dapo"),
                   rollout=dict(prompts_per_step=4, gen_prompts=4, samples_per_prompt=4),
                   reward=RewardConfig(functions=("plus",), weights=(1.0,), accuracy="plus"))
  specs = [RewardSpec("plus", _plus_only)]
  setup = rl_loop.build(config, str(tmp_path), reward_fns=specs)
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(0), setup.mesh)
  batch, position, info, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  assert info["dropped_groups"] > 0 and info["gen_rounds"] > 1
  assert position == 4 * info["gen_rounds"]
  assert info["short_groups"] == 0 and batch["trainable"].all()
  assert len(batch["tokens"]) == 16
  for g in range(4):
    acc = batch["accuracy"][batch["group_ids"] == g]
    assert len(acc) == 4 and np.std(acc) > 0
  # Exhaustion: raise by default, or train on what survived with untrainable filler rows.
  never = [RewardSpec("plus", lambda p, c, **_: np.zeros(len(c), np.float32))]
  setup = rl_loop.build(replace(config, algorithm=dict(max_gen_rounds=2)), str(tmp_path),
                        reward_fns=never)
  with pytest.raises(RuntimeError, match="max_gen_rounds"):
    rl_loop.collect_rollout(setup, params, 0, 0)
  setup = rl_loop.build(replace(config, algorithm=dict(max_gen_rounds=2, on_exhausted="train")),
                        str(tmp_path), reward_fns=never)
  batch, _, info, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  assert info["short_groups"] == 4 and not batch["trainable"].any()
  assert len(batch["tokens"]) == 16


# --------------------------------------------------------------------------------------------
# Reward failures.


def _raises(prompts, completions, **_):
  raise ZeroDivisionError("boom")


def _nan_second(prompts, completions, **_):
  out = np.ones(len(completions), np.float32)
  out[1] = np.nan
  return out


def _sleeps(prompts, completions, **_):
  time.sleep(5)
  return np.ones(len(completions), np.float32)


def test_reward_runner_failure_policies():
  ok = RewardSpec("ok", lambda p, c, **_: np.full(len(c), 2.0, np.float32), weight=0.5)
  args = (["a", "b", "c"], ["x", "y", "z"])
  for on_error, expect in (("exclude", np.nan), ("fallback", -1.0)):
    runner = RewardRunner([ok, RewardSpec("bad", _raises)], on_error=on_error,
                          fallback_reward=-1.0)
    res = runner(*args)
    np.testing.assert_array_equal(res.per_function["bad"], [expect] * 3)
    np.testing.assert_array_equal(res.per_function["ok"], [2.0] * 3)
    assert res.counts["bad"]["errors"] == 3
    res = RewardRunner([RewardSpec("nan", _nan_second)], on_error=on_error,
                       fallback_reward=-1.0)(*args)
    np.testing.assert_array_equal(res.total, [1.0, expect, 1.0])
    assert res.counts["nan"]["nonfinite"] == 1
  t0 = time.perf_counter()
  res = RewardRunner([RewardSpec("slow", _sleeps)], timeout_s=0.2, on_error="fallback",
                     fallback_reward=0.0)(*args)
  assert time.perf_counter() - t0 < 2.0
  np.testing.assert_array_equal(res.total, [0.0] * 3)
  assert res.counts["slow"]["timeouts"] == 3
  with pytest.raises(RewardError, match="'bad'.*raised"):
    RewardRunner([RewardSpec("bad", _raises)], on_error="raise")(*args)
  with pytest.raises(RewardError, match="'slow'.*timed out"):
    RewardRunner([RewardSpec("slow", _sleeps)], timeout_s=0.1, on_error="raise")(*args)
  wrong = RewardSpec("short", lambda p, c, **_: [1.0])
  res = RewardRunner([wrong], on_error="exclude")(*args)
  assert np.isnan(res.total).all() and res.counts["short"]["errors"] == 3
  with pytest.raises(TimeoutError):
    call_with_timeout(lambda: time.sleep(3), 0.05)


class _FailsAtCall:
  """Raises from its third call on (i.e. at RL step 3)."""

  def __init__(self):
    self.calls = 0

  def __call__(self, prompts, completions, **_):
    self.calls += 1
    if self.calls >= 3:
      raise RuntimeError("verifier crashed")
    return np.zeros(len(completions), np.float32)


def test_reward_failure_in_the_loop(data_dir, tmp_path):
  config = replace(tiny_rl_config(data_dir, "grpo", kl_coef=0.0),
                   train=dict(steps=3, checkpoint_every=10),
                   reward=RewardConfig(functions=("flaky",), weights=(1.0,), accuracy="",
                                       on_error="raise"))
  with pytest.raises(RewardError, match="verifier crashed"):
    rl_loop.train(config, str(tmp_path / "raise"), reward_fns=[RewardSpec("flaky", _FailsAtCall())])
  # The two completed steps were checkpointed before stopping.
  assert Checkpointer(str(tmp_path / "raise" / "checkpoints"), keep=3).latest_step() == 2
  exclude = replace(config, reward=dict(on_error="exclude"))
  rl_loop.train(exclude, str(tmp_path / "exclude"), reward_fns=[RewardSpec("flaky", _FailsAtCall())])
  last = read_metrics(str(tmp_path / "exclude"))[-1]
  assert last["reward/flaky/errors_total"] == 16
  assert last["reward/unscorable_fraction"] == 1.0
  assert last["train/loss"] == 0.0  # Nothing scorable: zero advantages, no KL term.


def test_rl_config_errors_name_the_field(data_dir, tmp_path):
  base = tiny_rl_config(data_dir, "grpo")
  with pytest.raises(ConfigError, match="algorithm.name"):
    apply_overrides(base, ["algorithm.name=grpoo"])
  with pytest.raises(ConfigError, match="loss_aggregation"):
    apply_overrides(base, ["algorithm.policy_loss=gspo", "algorithm.loss_aggregation=token-mean"])
  with pytest.raises(ConfigError, match="reward.weights"):
    apply_overrides(base, ["reward.weights=[1.0]"])
  with pytest.raises(ConfigError, match="kl_controller"):
    apply_overrides(base, ["algorithm.kl_controller=adaptive"])
  with pytest.raises(ConfigError, match="rollout.prompts_per_step"):
    rl_loop.build(replace(base, rollout=dict(prompts_per_step=3)), str(tmp_path))
  with pytest.raises(ConfigError, match="reward.functions"):
    rl_loop.build(replace(base, reward=dict(functions=("nope", "digit_match"))),
                  str(tmp_path))


def test_rl_from_a_hugging_face_checkpoint(data_dir, tmp_path):
  from jaxrl_llm.data import build_char_tokenizer, save_tokenizer
  from jaxrl_llm.models.hf import save_hf
  from jaxrl_llm.models.presets import tiny

  hf_dir = str(tmp_path / "hf")
  model_config = tiny("qwen2", vocab_size=104, max_seq_len=64)
  params, _ = init_params(model_config, jax.random.PRNGKey(5), ONE_DEVICE)
  save_hf(params, model_config, hf_dir)
  save_tokenizer(build_char_tokenizer(), hf_dir)
  config = replace(tiny_rl_config(data_dir, "grpo", kl_coef=0.04), train=dict(steps=1),
                   init=InitConfig(hf_checkpoint=hf_dir))
  out = rl_loop.train(config, str(tmp_path / "run"))
  assert out["setup"].model_config.family == "qwen2"
  assert out["setup"].model_config.attention_bias  # Qwen2's q/k/v biases came from config.json.
  assert read_metrics(str(tmp_path / "run"))[0]["train/sampler_gap_abs_max"] < 1e-5


def test_hf_experiment_without_files_fails_clearly(tmp_path, capsys):
  from jaxrl_llm.cli import main

  code = main(["run", "gsm8k-hf", "--set", f"init.hf_checkpoint={tmp_path}/missing",
               "--run-dir", str(tmp_path / "run")])
  assert code == 2
  err = capsys.readouterr().err
  assert "init.hf_checkpoint" in err and "missing" in err and "hf download" in err


def test_truncated_sampling_with_rollout_correction(data_dir, tmp_path):
  config = replace(tiny_rl_config(data_dir, "grpo", tis_cap=2.0, epochs=2, minibatches=2),
                   rollout=dict(top_k=5, top_p=0.9))
  rl_loop.train(config, str(tmp_path))
  for row in read_metrics(str(tmp_path)):
    assert 0.0 < row["train/is_weight_mean"] <= 2.0
    assert 0.0 <= row["train/is_capped_fraction"] <= 1.0
    assert row["train/ratio_first_max_dev"] == 0.0
    # The gap metric compares full-distribution log-probs, unaffected by the truncation.
    assert row["train/sampler_gap_abs_max"] < 1e-5


def test_model_config_picks_the_log_prob_kernel():
  """``model.logprob_impl`` / block sizes reach the trainer's log-probs; every path agrees."""
  from jaxrl_llm.kernels import BlockSizes
  from jaxrl_llm.models import logprob_kwargs

  assert logprob_kwargs(MODEL) == dict(softcap=None, block_sizes=None, impl=None)
  kw = logprob_kwargs(dataclasses.replace(MODEL, logprob_impl="pallas", logprob_block_v=64,
                                          final_softcap=30.0))
  default = BlockSizes.default(jax.default_backend())
  assert kw == dict(softcap=30.0, impl="pallas",
                    block_sizes=BlockSizes(block_n=default.block_n, block_v=64))
  model = Decoder(MODEL)
  params, _ = init_params(MODEL, jax.random.PRNGKey(0), ONE_DEVICE)
  config = pg.config_from(AlgorithmConfig(**pg.PRESETS["grpo"]), temperature=0.7,
                          max_new_tokens=T)
  batch = _fixed_batch(config, params, model.apply)
  outs = {}
  for impl in ("reference", "chunked", "pallas_gpu", "pallas_tpu"):
    cfg = dataclasses.replace(MODEL, logprob_impl=impl, logprob_block_n=8, logprob_block_v=16)
    outs[impl] = pg.response_logprobs(model.apply, params, cfg, batch["tokens"],
                                      batch["attention_mask"], batch["mask"], temperature=0.7)
  for impl in ("chunked", "pallas_gpu", "pallas_tpu"):
    np.testing.assert_allclose(outs[impl].logp, outs["reference"].logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[impl].entropy, outs["reference"].entropy, rtol=1e-5,
                               atol=1e-5)
