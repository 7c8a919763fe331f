"""PPO with a critic and GAE: the docs/algorithms.md §24 GAE vectors through prepare (padding, NaN
scores, KL in the reward), critic warm-up with a bitwise-frozen actor, full updates for a separate
critic and a shared trunk, the on-policy first minibatch, micro-batching and an 8-device mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm import ops
from jaxrl_llm.algorithms import policy_gradient
from jaxrl_llm.algorithms import ppo
from jaxrl_llm.algorithms.common import make_optimizer
from jaxrl_llm.config import MeshConfig, ModelConfig, OptimizerConfig
from jaxrl_llm.models import Decoder, init_params
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel import make_mesh, replicated, tree_shardings

MODEL = ModelConfig(vocab_size=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_seq_len=16)
N, P_LEN, T = 8, 4, 4
ONE_DEVICE = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                               ("data", "fsdp", "tensor"))
SEPARATE = ppo.Config(critic="separate", epochs=2, minibatches=2, kl_coef=0.05, gae_lambda=0.95)
SHARED = dataclasses.replace(SEPARATE, critic="shared", vf_coef=0.5)


def _prepare_inputs(scores, mask, values, old=None, ref=None, beta=0.0):
  mask = jnp.asarray(mask, bool)
  zeros = jnp.zeros(mask.shape, jnp.float32)
  return {"scores": jnp.asarray(scores, jnp.float32), "mask": mask,
          "old_logp": zeros if old is None else jnp.asarray(old, jnp.float32),
          "ref_logp": zeros if ref is None else jnp.asarray(ref, jnp.float32),
          "old_values": jnp.asarray(values, jnp.float32), "kl_coef": jnp.float32(beta)}


# --------------------------------------------------------------------------------------------
# prepare.


def test_gae_vectors_nan_and_empty_rows():
  # docs/algorithms.md §24: r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 1, λ = 0.95. Row 1 is unscorable,
  # row 2 empty: neither may enter the whitening statistics.
  config = ppo.Config(kl_coef=0.0, gamma=1.0, gae_lambda=0.95)
  inputs = _prepare_inputs([1.0, np.nan, 1.0], [[1, 1, 1], [1, 1, 0], [0, 0, 0]],
                           [[0.5, 0.6, 0.7], [3.0, -2.0, 7.0], [1.0, 1.0, 1.0]])
  adv, ret, diag = ppo.prepare(inputs, config)
  np.testing.assert_allclose(adv[0], [0.9913, 0.0171, -1.0084], atol=1e-4)
  np.testing.assert_allclose(ret[0], [0.96575, 0.985, 1.0], atol=1e-6)
  np.testing.assert_array_equal(adv[1:], 0.0)
  assert np.isnan(np.asarray(ret[1, :2])).all() and float(ret[1, 2]) == 0.0
  np.testing.assert_array_equal(ret[2], 0.0)
  assert float(diag["adv/unscorable_rows"]) == 1.0
  np.testing.assert_allclose(diag["returns/mean"], np.mean([0.96575, 0.985, 1.0]), atol=1e-6)
  assert all(np.isfinite(float(v)) for v in diag.values())
  raw, _, _ = ppo.prepare(inputs, dataclasses.replace(config, whiten_advantages=False))
  np.testing.assert_allclose(raw[0], [0.46575, 0.385, 0.3], atol=1e-6)


def test_gae_skips_padding_in_the_middle_and_at_the_end():
  config = ppo.Config(kl_coef=0.0, gae_lambda=0.95, whiten_advantages=False)
  junk = 9.0  # Values at masked positions must not matter.
  inputs = _prepare_inputs([1.0, 1.0], [[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]],
                           [[0.5, 0.6, 0.7, junk, junk], [0.5, junk, 0.6, 0.7, junk]])
  adv, ret, _ = ppo.prepare(inputs, config)
  np.testing.assert_allclose(adv[0], [0.46575, 0.385, 0.3, 0, 0], atol=1e-6)
  np.testing.assert_allclose(adv[1], [0.46575, 0, 0.385, 0.3, 0], atol=1e-6)
  np.testing.assert_allclose(ret[1], [0.96575, 0, 0.985, 1.0, 0], atol=1e-6)
  # Whitening is token-weighted over the 6 valid tokens of the batch.
  white, _, _ = ppo.prepare(inputs, dataclasses.replace(config, whiten_advantages=True))
  m = np.asarray(inputs["mask"])
  x = np.asarray(adv)[m]
  np.testing.assert_allclose(np.asarray(white)[m], (x - x.mean()) / x.std(ddof=1), atol=1e-5)


def test_kl_in_reward_moves_token_rewards_by_minus_beta_k1():
  beta = 0.1
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)
  old = np.array([[-1.0, -0.5, -2.0, -0.1], [-0.3, -0.7, 0.0, 0.0]], np.float32)
  ref = np.array([[-1.2, -0.5, -1.0, -0.4], [-0.1, -1.0, 0.0, 0.0]], np.float32)
  values = np.zeros((2, 4), np.float32)  # V = 0, γ = λ = 1: A_t = Σ_{s ≥ t} r_s.
  config = ppo.Config(kl_coef=beta, kl_placement="reward", kl_estimator="k1", gamma=1.0,
                      gae_lambda=1.0, whiten_advantages=False)
  inputs = _prepare_inputs([1.0, 0.5], mask, values, old, ref, beta)
  adv, ret, diag = ppo.prepare(inputs, config)
  k1 = np.where(mask, old - ref, 0.0)
  rewards = -beta * k1
  rewards[0, 3] += 1.0
  rewards[1, 1] += 0.5
  expected = np.where(mask, np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1], 0.0)
  np.testing.assert_allclose(adv, expected, atol=1e-6)
  np.testing.assert_allclose(ret, expected, atol=1e-6)
  # The controller's observation: batch mean of per-row mean k1 (the critic-free family's).
  np.testing.assert_allclose(diag["kl_ref_seq"], np.mean([k1[0].mean(), k1[1, :2].mean()]),
                             atol=1e-6)
  no_kl, _, _ = ppo.prepare(inputs, dataclasses.replace(config, kl_coef=0.0))
  np.testing.assert_allclose(np.asarray(adv) - np.asarray(no_kl),
                             np.where(mask, -beta * np.cumsum(k1[:, ::-1], 1)[:, ::-1], 0.0),
                             atol=1e-6)
  # β is traced: the controller's value is used, not the static switch.
  half, _, _ = ppo.prepare(dict(inputs, kl_coef=jnp.float32(beta / 2)), config)
  np.testing.assert_allclose(np.asarray(half) - np.asarray(no_kl),
                             (np.asarray(adv) - np.asarray(no_kl)) / 2, atol=1e-6)


# --------------------------------------------------------------------------------------------
# update on a fixed batch.


@pytest.fixture(scope="module")
def world():
  """Model, params, optimizers and jitted functions shared by every update test."""
  model = Decoder(MODEL)
  params, param_shardings = init_params(MODEL, jax.random.PRNGKey(0), ONE_DEVICE)
  # Adam's eps is raised so that float noise in near-zero gradient entries is not amplified to
  # ±lr when comparing summation orders (mesh vs one device); real gradients dominate it.
  opt = OptimizerConfig(learning_rate=3e-3, warmup_steps=0, end_learning_rate_ratio=1.0,
                        eps=1e-3)
  tx, schedule = make_optimizer(opt, 100)
  critic_tx, critic_schedule = make_optimizer(dataclasses.replace(opt, learning_rate=1e-2), 100)
  updates, rollouts, states = {}, {}, {}

  def update_fn(config):
    if config not in updates:
      updates[config] = jax.jit(ppo.make_update(model.apply, MODEL, tx, schedule, critic_tx,
                                                critic_schedule, config))
    return updates[config]

  def init(config):
    # Jitted into its shardings, as the loop does (and as update's outputs are: one compilation).
    if config.critic not in states:
      shardings = ppo.state_shardings(config, MODEL, tx, critic_tx, abstract_params(MODEL),
                                      param_shardings, ONE_DEVICE)
      make = jax.jit(lambda p, k: ppo.init_state(p, MODEL, config, tx, critic_tx, k),
                     out_shardings=shardings)
      states[config.critic] = make(params, jax.random.PRNGKey(1))
    return states[config.critic]

  def rollout(config, state, tokens, attention, mask):
    if config.critic not in rollouts:
      rollouts[config.critic] = jax.jit(
          lambda s, tok, att, m: ppo.rollout_logprobs_and_values(model.apply, MODEL, s, tok, att,
                                                                 m, config))
    return rollouts[config.critic](state, tokens, attention, mask)

  def batch(config, state, train_actor=True):
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, MODEL.vocab_size, (N, P_LEN + T)).astype(np.int32)
    lengths = rng.integers(1, T + 1, N)
    mask = np.arange(T)[None, :] < lengths[:, None]
    attention = np.concatenate([np.ones((N, P_LEN), bool), mask], 1)
    tokens = jnp.asarray(np.where(attention, tokens, 0))
    attention, mask = jnp.asarray(attention), jnp.asarray(mask)
    old, values = rollout(config, state, tokens, attention, mask)
    ref = old - 0.1 * mask.astype(jnp.float32)
    scores = np.asarray(rng.integers(0, 2, N), np.float32)
    scores[:2] = [1.0, 0.0]
    scores[2] = np.nan  # Unscorable: no value target, advantage 0.
    inputs = {"scores": jnp.asarray(scores), "mask": mask, "old_logp": old, "ref_logp": ref,
              "old_values": values, "kl_coef": jnp.float32(config.kl_coef)}
    adv, ret, _ = ppo.prepare(inputs, config)
    return {"tokens": tokens, "attention_mask": attention, "mask": mask, "advantages": adv,
            "returns": ret, "old_logp": old, "ref_logp": ref, "old_values": values,
            "sampler_logp": old, "train_actor": jnp.asarray(train_actor)}

  @jax.jit
  def actor_loss(policy, batch):
    out = policy_gradient.response_logprobs(model.apply, policy, MODEL, batch["tokens"],
                                            batch["attention_mask"], batch["mask"])
    per_token, _ = policy_gradient.token_loss(SEPARATE.pg, out.logp, out.entropy, batch,
                                              on_policy=jnp.asarray(False),
                                              key=jax.random.PRNGKey(0))
    return ops.aggregate_loss(per_token, batch["mask"], SEPARATE.loss_aggregation)

  logprobs = jax.jit(lambda p, tok, att, m: policy_gradient.response_logprobs(
      model.apply, p, MODEL, tok, att, m).logp)
  return dict(model=model, params=params, tx=tx, critic_tx=critic_tx, update=update_fn,
              init=init, batch=batch, rollout=rollout, actor_loss=actor_loss, logprobs=logprobs)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_bitwise(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("config", [SEPARATE, SHARED], ids=["separate", "shared"])
def test_values_and_logprobs_are_aligned_with_the_response(world, config):
  state = world["init"](config)
  b = world["batch"](config, state)
  logp, values = world["rollout"](config, state, b["tokens"], b["attention_mask"], b["mask"])
  # Same slice as the family's log-probs: V[:, t] is read where y_t is predicted.
  np.testing.assert_array_equal(logp, world["logprobs"](ppo.policy_params(state, config),
                                                       b["tokens"], b["attention_mask"],
                                                       b["mask"]))
  assert np.all(np.asarray(values)[~np.asarray(b["mask"])] == 0.0)
  # Causality: changing response token 1 leaves V_0, V_1 and logp_0 alone and moves V_2, logp_1.
  row = int(np.argmax(np.asarray(b["mask"]).sum(1) == T))
  tokens = b["tokens"].at[row, P_LEN + 1].set((b["tokens"][row, P_LEN + 1] + 1) % MODEL.vocab_size)
  logp2, values2 = world["rollout"](config, state, tokens, b["attention_mask"], b["mask"])
  np.testing.assert_array_equal(values2[row, :2], values[row, :2])
  np.testing.assert_array_equal(logp2[row, :1], logp[row, :1])
  assert float(values2[row, 2]) != float(values[row, 2])
  assert float(logp2[row, 1]) != float(logp[row, 1])


@pytest.mark.parametrize("config", [SEPARATE, SHARED], ids=["separate", "shared"])
def test_critic_warmup_trains_the_critic_and_freezes_the_actor(world, config):
  state = world["init"](config)
  batch = world["batch"](config, state, train_actor=False)
  update = world["update"](config)
  losses = []
  new = state
  for _ in range(4):
    new, metrics = update(new, batch)
    losses.append(float(metrics["critic/loss"]))
    assert float(metrics["actor/trained"]) == 0.0 and float(metrics["train/skipped"]) == 0.0
  assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0], losses
  if config.shared:
    _assert_bitwise(new.actor.params["policy"], state.actor.params["policy"])
    assert not np.array_equal(new.actor.params["value_head"]["kernel"],
                              state.actor.params["value_head"]["kernel"])
  else:
    _assert_bitwise(new.actor, state.actor)  # Params, optimizer state and step.
    assert int(new.critic.step) == 4 * 2 * 2


@pytest.fixture(scope="module")
def trained(world):
  """Three updates from the initial state on the fixed batch, for both critic modes."""
  out = {}
  for config in (SEPARATE, SHARED):
    state = world["init"](config)
    batch = world["batch"](config, state)
    history = [world["update"](config)(state, batch)]
    for _ in range(2):
      history.append(world["update"](config)(history[-1][0], batch))
    out[config.critic] = (state, batch, history)
  return out


@pytest.mark.parametrize("config", [SEPARATE, SHARED], ids=["separate", "shared"])
def test_update_end_to_end(world, trained, config):
  state, batch, history = trained[config.critic]
  for _, metrics in history:
    for key in ("train/loss", "actor/pg_loss", "actor/clipfrac", "actor/approx_kl",
                "actor/entropy", "critic/loss", "critic/vf_clipfrac", "critic/values_mean",
                "critic/explained_var", "actor/grad_norm", "critic/grad_norm",
                "actor/learning_rate", "critic/learning_rate", "train/skipped"):
      assert np.isfinite(float(metrics[key])), key
    assert float(metrics["train/skipped"]) == 0.0
    # On-policy first minibatch: ratio exactly 1.
    assert float(metrics["actor/ratio_first_max_dev"]) == 0.0
    assert float(metrics["train/sampler_gap_abs_max"]) == 0.0
  final = history[-1][0]
  assert int(final.actor.step) == 3 * 2 * 2
  policy = lambda s: ppo.policy_params(s, config)
  before = float(world["actor_loss"](policy(state), batch))
  after = float(world["actor_loss"](policy(final), batch))
  assert after < before - 1e-4, (before, after)
  assert float(history[-1][1]["critic/loss"]) < float(history[0][1]["critic/loss"])
  # Later minibatches are off-policy: ratios move away from 1.
  assert abs(float(history[0][1]["actor/ratio_mean"]) - 1.0) > 0.0


def test_micro_batches_equal_one_batch(world, trained):
  state, batch, history = trained["separate"]
  micro = dataclasses.replace(SEPARATE, micro_batches=2)
  new, metrics = world["update"](micro)(state, batch)
  ref_state, ref_metrics = history[0]
  assert set(metrics) == set(ref_metrics)
  for k in ref_metrics:  # Losses and (token-weighted) diagnostics alike.
    np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-4, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(new.actor.params), jax.device_get(ref_state.actor.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(new.critic.params), jax.device_get(ref_state.critic.params))


def test_sharded_update_matches_one_device(world, trained):
  state, batch, history = trained["separate"]
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  abstract = abstract_params(MODEL)
  shardings = ppo.state_shardings(SEPARATE, MODEL, world["tx"], world["critic_tx"], abstract,
                                  tree_shardings(abstract, param_logical_axes(MODEL), mesh), mesh)
  rows = NamedSharding(mesh, P(("data", "fsdp")))
  sharded_state = jax.device_put(jax.device_get(state), shardings)
  sharded_batch = {k: jax.device_put(np.asarray(v), replicated(mesh) if np.ndim(v) == 0 else rows)
                   for k, v in batch.items()}
  update = jax.jit(world["update"](SEPARATE), out_shardings=(shardings, replicated(mesh)))
  new, metrics = update(sharded_state, sharded_batch)
  ref_state, ref_metrics = history[0]
  assert new.actor.params["embedding"].sharding.spec == P("tensor", "fsdp")
  for k in ("train/loss", "critic/loss", "actor/pg_loss", "actor/entropy"):
    np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5),
               jax.device_get(new), jax.device_get(ref_state))
