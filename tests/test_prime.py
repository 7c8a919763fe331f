"""PRIME (docs/algorithms.md §10): the advantage's numbers, the implicit PRM's update order, its
place on the mesh and in the checkpoint, the accuracy-band filter, and whole runs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import replace
from test_rl import tiny_rl_config

from jaxrl_llm import ops
from jaxrl_llm.algorithms import prime as prime_lib
from jaxrl_llm.config import AlgorithmConfig, ConfigError, RewardConfig
from jaxrl_llm.models import init_params
from jaxrl_llm.rewards import RewardSpec
from jaxrl_llm.rundir.checkpoint import Checkpointer
from jaxrl_llm.train import rl_loop

# One group of K = 4: row 2 is an empty response (no process reward, left out of the process
# baseline; its outcome 0 still counts in the outcome's leave-one-out).
PROC = jnp.array([[0.3, -0.1, 0.4], [0.0, 0.6, 0.0], [0.0, 0.0, 0.0], [-0.2, 0.0, 0.0]])
MASK = jnp.array([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]], bool)
OUTCOME = jnp.array([1.0, 0.0, 0.0, 1.0])
GID = jnp.zeros(4, jnp.int32)


def test_prime_advantages_of_a_hand_computed_group():
  # Per-token means r̄ = 0.2, 0.3, -, -0.2; paper baselines (Σ_{j≠i} r̄_j)/2 = 0.05, 0, -, 0.25.
  # Process returns: row 0 [0.25, -0.15, 0.35] -> [0.45, 0.2, 0.35]; row 1 [0, 0.6] -> [0.6, 0.6];
  # row 3 [-0.45]. Outcome RLOO over 4 rows (Σ = 2): ±2/3.
  adv, _ = ops.prime_advantages(PROC, OUTCOME, GID, MASK, num_groups=1)
  a = 2.0 / 3.0
  want = np.array([[0.45 + a, 0.2 + a, 0.35 + a], [0.6 - a, 0.6 - a, 0.0], [0.0, 0.0, 0.0],
                   [-0.45 + a, 0.0, 0.0]])
  np.testing.assert_allclose(adv, want, atol=1e-6)
  # The verl recipe's per-token r·K/(K−1) − Σ_j r̄_j/(K−1) with K = 3 non-empty rows:
  # row 0 [0.30, -0.30, 0.45] -> [0.45, 0.15, 0.45]; row 1 [-0.15, 0.75] -> [0.60, 0.75];
  # row 3 [-0.45]. It differs from the paper's by Σ_{s≥t} (r_s − r̄_i)/(K−1).
  rec, _ = ops.prime_advantages(PROC, OUTCOME, GID, MASK, num_groups=1, loo="recipe")
  want_rec = np.array([[0.45 + a, 0.15 + a, 0.45 + a], [0.60 - a, 0.75 - a, 0.0],
                       [0.0, 0.0, 0.0], [-0.45 + a, 0.0, 0.0]])
  np.testing.assert_allclose(rec, want_rec, atol=1e-6)
  # Only the outcome part: identical under both leave-one-outs.
  o_p, _ = ops.prime_advantages(PROC, OUTCOME, GID, MASK, num_groups=1, process_coef=0.0)
  o_r, _ = ops.prime_advantages(PROC, OUTCOME, GID, MASK, num_groups=1, process_coef=0.0,
                                loo="recipe")
  np.testing.assert_array_equal(o_p, o_r)
  # Coefficients and whitening (the recipe's 5 / 5, whitened over the batch's tokens).
  w, _ = ops.prime_advantages(PROC, OUTCOME, GID, MASK, num_groups=1, process_coef=5.0,
                              outcome_coef=5.0, whiten=True)
  v = 5.0 * want[np.asarray(MASK)]
  np.testing.assert_allclose(np.asarray(w)[np.asarray(MASK)],
                             (v - v.mean()) / np.sqrt(v.var(ddof=1) + 1e-8), atol=1e-5)


def test_implicit_rewards_granularity_norm_and_the_ce_loss():
  cfg = prime_lib.Config(beta=0.5)
  lp = jnp.array([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
  ref = jnp.array([[-2.0, -2.0, -1.5], [-1.0, -3.0, -1.0]])
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
  tok = prime_lib.process_rewards(lp, ref, mask, cfg)
  np.testing.assert_allclose(tok, [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
  whole = prime_lib.process_rewards(lp, ref, mask, prime_lib.Config(beta=0.5,
                                                                     granularity="whole"))
  np.testing.assert_allclose(whole, [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  # batch_norm: divide by the largest |reverse cumulative sum| in the batch (1.0 here).
  normed = prime_lib.process_rewards(lp, ref, mask, prime_lib.Config(beta=1.0, norm="batch_norm"))
  np.testing.assert_allclose(normed, [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0]], atol=1e-5)
  seq = prime_lib.sequence_rewards(lp, ref, mask, 0.5)
  np.testing.assert_allclose(seq, [1.0, 1.0])
  loss, diag = prime_lib.ce_loss(seq, jnp.array([1.0, 0.0]), jnp.array([True, True]))
  want = 0.5 * (np.log1p(np.exp(-1.0)) + np.log1p(np.exp(1.0)))
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert float(diag["accuracy"]) == 0.5 and float(diag["rows"]) == 2.0


def _parity(prompts, completions, **_):
  """A verdict that varies within groups: 1 when the completion's code-point sum is odd."""
  return np.asarray([float(sum(map(ord, c)) % 2 == 1) for c in completions], np.float32)


SPECS = [RewardSpec("parity", _parity)]


def prime_config(data_dir, **algorithm):
  base = tiny_rl_config(data_dir, "prime", prime_learning_rate=1e-3, **algorithm)
  return replace(base, experiment="tiny-prime",
                 reward=RewardConfig(functions=("parity",), weights=(1.0,), accuracy="parity"))


def _fresh(setup, seed=0):
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(seed), setup.mesh)
  setup.prime.reference = jax.tree.map(jnp.copy, params)
  return params, setup.prime.make_state(jax.tree.map(jnp.copy, params))


def test_prm_update_order_and_one_device_equals_eight(data_dir, tmp_path):
  config = prime_config(data_dir)
  setup = rl_loop.build(config, str(tmp_path / "a"), reward_fns=SPECS)
  params, prm0 = _fresh(setup)
  batch, _, _, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  assert 0 < np.mean(batch["accuracy"]) < 1
  prm1, process, metrics = rl_loop.prime_step(setup, prm0, batch)
  assert int(prm1.step) == 1 and metrics["prm/rows"] == 16.0
  # "before": the rewards come from the updated PRM, β·(log π_φ' − log π_ref).
  put = setup.put_rows
  t, a = put(batch["tokens"]), put(batch["prompt_mask"] | batch["response_mask"])
  m = put(rl_loop._train_mask(setup, batch))
  lp_new = setup.prime.logprobs(prm1.params, t, a, m)
  lp_ref = setup.prime.logprobs(setup.prime.reference, t, a, m)
  want = 0.05 * np.where(np.asarray(m), np.asarray(lp_new) - np.asarray(lp_ref), 0.0)
  np.testing.assert_allclose(process, want, atol=1e-6)
  assert np.abs(want).max() > 0
  # "after": the PRM as it was -- at step 0 it *is* the reference, so every reward is exactly 0;
  # the update itself is the same.
  after = rl_loop.build(replace(config, algorithm=dict(prime_update="after")),
                        str(tmp_path / "b"), reward_fns=SPECS)
  _, prm0b = _fresh(after)
  prm1b, process_b, _ = rl_loop.prime_step(after, prm0b, batch)
  assert not np.asarray(process_b).any()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(prm1b.params),
               jax.device_get(prm1.params))
  # One device equals the 8-device mesh (the PRM is sharded like the policy).
  one = rl_loop.build(config, str(tmp_path / "c"), reward_fns=SPECS, devices=jax.devices()[:1])
  _, prm0c = _fresh(one)
  prm1c, process_c, metrics_c = rl_loop.prime_step(one, prm0c, batch)
  # Adam's first step is ~lr·sign(g): a gradient near 0 may move by up to lr (1e-3) either way.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=2e-5),
               jax.device_get(prm1c.params), jax.device_get(prm1.params))
  np.testing.assert_allclose(process_c, process, atol=1e-6)
  for k, v in metrics.items():
    assert metrics_c[k] == pytest.approx(v, abs=1e-5), k


def test_accuracy_band_keeps_exactly_the_groups_in_band_and_refills(data_dir, tmp_path):
  config = replace(prime_config(data_dir),
                   rollout=dict(gen_prompts=8, filters=("accuracy_band",),
                                accuracy_band_low=0.3, accuracy_band_high=0.7))
  setup = rl_loop.build(config, str(tmp_path), reward_fns=SPECS)
  params, _ = init_params(setup.model_config, jax.random.PRNGKey(0), setup.mesh)
  batch, position, info, _ = rl_loop.collect_rollout(setup, params, 0, 0)
  assert position == 8 * info["gen_rounds"] and info["short_groups"] == 0
  assert info["dropped_groups"] > 0
  assert len(batch["tokens"]) == 16 and batch["trainable"].all()
  for g in range(4):
    mean = batch["accuracy"][batch["group_ids"] == g].mean()
    assert 0.3 <= mean <= 0.7
  # The filter alone: exactly the groups whose on-policy accuracy lies in the band.
  from jaxrl_llm.train.experience.filters import accuracy_band

  # Group means 0.5, 1.0, 0.25 and 2/3: group 3's last row is a teacher trace and does not count.
  rows = {"accuracy": np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1.]),
          "group_ids": np.repeat(np.arange(4), 4),
          "is_demonstration": np.arange(16) == 15}
  band = replace(config, rollout=dict(accuracy_band_low=0.25, accuracy_band_high=0.7))
  keep = accuracy_band(type("S", (), {"config": band})(), rows, 4)
  np.testing.assert_array_equal(keep.groups, [True, False, True, True])  # bounds inclusive


def test_prime_config_errors_name_the_field(data_dir):
  with pytest.raises(ConfigError, match="prime_update"):
    AlgorithmConfig(name="prime", prime_update="during")
  with pytest.raises(ConfigError, match="algorithm.advantage"):
    AlgorithmConfig(name="grpo", advantage="prime")
  config = replace(prime_config(data_dir), reward=dict(accuracy=""))
  with pytest.raises(ConfigError, match="reward.accuracy"):
    rl_loop.train(config, "/nonexistent/never-created", reward_fns=SPECS)


def test_two_prime_steps_same_seed_and_resume_with_the_prm(data_dir, tmp_path):
  config = replace(prime_config(data_dir), train=dict(steps=2, checkpoint_every=1))
  text = lambda d: open(os.path.join(d, "metrics.jsonl")).read()  # noqa: E731
  ref = str(tmp_path / "ref")
  out = rl_loop.train(config, ref, reward_fns=SPECS)
  rows = [json.loads(line) for line in text(ref).splitlines()]
  assert len(rows) == 2
  for row in rows:
    assert row["prm/rows"] == 16.0 and np.isfinite(row["prm/loss"])
    assert np.isfinite(row["train/loss"]) and row["adv/abs_mean"] > 0
  assert int(out["prm_state"].step) == 2
  # The implicit PRM moved away from its reference.
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       out["prm_state"].params, out["setup"].prime.reference)
  assert max(jax.tree.leaves(moved)) > 0
  again = str(tmp_path / "again")
  rl_loop.train(config, again, reward_fns=SPECS)
  assert text(again) == text(ref)
  cut = str(tmp_path / "cut")
  rl_loop.train(config, cut, stop_after=1, reward_fns=SPECS)
  assert Checkpointer(os.path.join(cut, "checkpoints"), keep=3).latest_step() == 1
  resumed = rl_loop.resume(cut, reward_fns=SPECS)
  assert text(cut) == text(ref)
  for a, b in ((resumed["state"], out["state"]), (resumed["prm_state"], out["prm_state"])):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.params),
                 jax.device_get(b.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["prm_state"].opt_state),
               jax.device_get(out["prm_state"].opt_state))
  # The policy of a PRIME run reads back like any other run's.
  from jaxrl_llm.rundir.artifacts import load_run

  art = load_run(ref)
  jax.tree.map(np.testing.assert_array_equal, art.policy_params(),
               jax.device_get(out["state"].params))
  assert "implicit_prm" in art.state
