"""Parameters stored in bfloat16 with a float32 master copy in the optimizer state
(``model.param_dtype=bfloat16``): what is stored, what accumulates, resume and HF round trip."""

import numpy as np
import pytest


def test_master_weights_accumulate_steps_below_bf16_resolution():
  import jax
  import jax.numpy as jnp
  import optax

  from jaxrl_llm.algorithms.common import (MasterWeightsState, TrainState, guarded_apply,
                                           with_master_weights)

  sgd = optax.sgd(1e-4)
  assert with_master_weights(sgd, "float32") is sgd
  tx = with_master_weights(sgd, "bfloat16")
  params = {"w": jnp.ones((3,), jnp.bfloat16)}
  grads = {"w": jnp.ones((3,), jnp.float32)}
  bare = TrainState.create(params, sgd, jax.random.PRNGKey(0))
  f32 = TrainState.create({"w": jnp.ones((3,), jnp.float32)}, sgd, jax.random.PRNGKey(0))
  state = TrainState.create(params, tx, jax.random.PRNGKey(0))
  assert isinstance(state.opt_state, MasterWeightsState)
  assert state.opt_state.master["w"].dtype == jnp.float32
  step = jax.jit(lambda s, t=tx: guarded_apply(s, grads, t, jnp.array(True)))
  bare_step = jax.jit(lambda s: guarded_apply(s, grads, sgd, jnp.array(True)))
  for _ in range(100):
    state, bare, f32 = step(state), bare_step(bare), bare_step(f32)
  # Each step (1e-4) is below bf16's resolution at 1.0 (2^-8): stored bf16 alone never moves.
  assert np.all(np.asarray(bare.params["w"], np.float32) == 1.0)
  master = np.asarray(state.opt_state.master["w"])
  # The master follows the float32 run exactly.
  np.testing.assert_array_equal(master, np.asarray(f32.params["w"]))
  np.testing.assert_allclose(master, 1.0 - 100 * 1e-4, rtol=1e-5)
  assert state.params["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(state.params["w"]),
                                np.asarray(jnp.asarray(master).astype(jnp.bfloat16)))
  # A skipped (non-finite) step keeps the master and the stored params.
  kept = guarded_apply(state, grads, tx, jnp.array(False))
  np.testing.assert_array_equal(np.asarray(kept.opt_state.master["w"]), master)


def _leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_bf16_params_sft_resume_is_bit_identical_and_stored_in_bf16(tiny, tmp_path):
  import jax.numpy as jnp
  from conftest import replace

  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import sft_loop

  cfg = replace(tiny, model=dict(param_dtype="bfloat16"),
                train=dict(steps=4, checkpoint_every=2, eval_every=0, test_examples=0,
                           async_checkpointing=False))
  whole = str(tmp_path / "whole")
  sft_loop.train(cfg, whole)
  cut = str(tmp_path / "cut")
  sft_loop.train(cfg, cut, stop_after=2)
  sft_loop.train(cfg, cut, resume=True)
  a, b = load_run(whole), load_run(cut)
  assert a.step == b.step == 4
  params = a.policy_params()
  assert all(x.dtype == jnp.bfloat16 for x in _leaves(params))
  # The float32 master copy is checkpointed with the optimizer state (exact resume needs it).
  assert all(x.dtype == np.float32 for x in _leaves(a.state["opt_state"]["master"]))
  for x, y in zip(_leaves(a.state), _leaves(b.state)):
    np.testing.assert_array_equal(x, y)


def test_grpo_in_bf16_from_a_float32_warm_start(tiny, data_dir, tmp_path):
  import jax.numpy as jnp
  from conftest import replace
  from test_rl import _digit_fraction, tiny_rl_config

  from jaxrl_llm.config import InitConfig, RewardConfig
  from jaxrl_llm.rewards import RewardSpec
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import read_metrics, rl_loop, sft_loop

  start = str(tmp_path / "sft")
  sft_loop.train(replace(tiny, train=dict(steps=2, eval_every=0, test_examples=0)), start)
  cfg = replace(tiny_rl_config(data_dir), model=dict(param_dtype="bfloat16"),
                init=InitConfig(policy_run=start),
                reward=RewardConfig(functions=("digits",), weights=(1.0,), accuracy=""))
  run = str(tmp_path / "grpo")
  # A reward with signal for an untrained policy, so that the steps have real gradients.
  rl_loop.train(cfg, run, reward_fns=[RewardSpec("digits", _digit_fraction)])
  rows = read_metrics(run)
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  art = load_run(run)
  assert art.model_config.param_dtype == "bfloat16"
  p0 = load_run(start).policy_params()
  p2 = art.policy_params()
  assert all(x.dtype == jnp.bfloat16 for x in _leaves(p2))
  assert all(x.dtype == np.float32 for x in _leaves(art.state["opt_state"]["master"]))
  # The warm start is rounded once to bf16 storage; RL then moves most of every matrix.
  moved = [np.mean(np.asarray(a, np.float32).astype(jnp.bfloat16) != b)
           for a, b in zip(_leaves(p0), _leaves(p2))]
  assert max(moved) > 0.5, moved
