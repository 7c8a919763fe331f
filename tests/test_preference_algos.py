"""DPO family and reward-model training (docs/algorithms.md §16, 17): losses against hand computation,
DPO at the reference point (loss log 2, the step moves chosen up and rejected down), identical pairs
dropped, Plackett–Luce with K = 2 equal to Bradley–Terry through the update, a reward model that
learns a separable preference, micro-batching and the 8-device mesh against one device."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm.algorithms import dpo
from jaxrl_llm.algorithms import reward_model as rm
from jaxrl_llm.algorithms.common import TrainState, train_state_shardings
from jaxrl_llm.config import MeshConfig, ModelConfig
from jaxrl_llm.models import Decoder, init_params, last_token_rewards
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel import make_mesh, replicated, tree_shardings

MODEL = ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_seq_len=16)
L = 12
B = 8
BOS, EOS, GOOD = 1, 2, 5
ONE = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
SCHEDULE = lambda step: 0.1
LOSSES = jax.jit(dpo.preference_losses, static_argnums=0)
SCORES = jax.jit(lambda params, t, a, last: rm._scores(params, MODEL, t, a, last))
DPO_KEYS = ("tokens", "attention_mask", "response_mask", "ranking", "valid", "margin")


def _tree_rel_diff(a, b):
  a, b = jax.device_get(a), jax.device_get(b)
  num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(float(np.sum(np.asarray(y) ** 2)) for y in jax.tree.leaves(b))
  return math.sqrt(num / den)


def make_lists(rng, b, k=2, *, good=False, shuffle=False):
  """Preference lists of right-padded ``BOS prompt response EOS`` rows, shapes ``[b, k, L]``.

  ``good``: the best-ranked response contains token 5, the others never do (a separable
  preference). ``shuffle``: the best response sits at a random index (ranking says where).
  """
  tokens = np.zeros((b, k, L), np.int32)
  att = np.zeros((b, k, L), bool)
  resp = np.zeros((b, k, L), bool)
  last = np.zeros((b, k), np.int32)
  ranking = np.tile(np.arange(k, dtype=np.int32), (b, 1))
  for i in range(b):
    if shuffle:
      ranking[i] = rng.permutation(k)
    prompt = list(rng.integers(3, MODEL.vocab_size, rng.integers(1, 4)))
    for pos in range(k):
      j = ranking[i, pos]
      body = rng.integers(3, MODEL.vocab_size, rng.integers(1, 5))
      if good:
        body = np.where(body == GOOD, GOOD + 1, body)
        if pos == 0:
          body[rng.integers(len(body))] = GOOD
      seq = [BOS] + prompt + list(body) + [EOS]
      n = len(seq)
      tokens[i, j, :n] = seq
      att[i, j, :n] = True
      resp[i, j, 1 + len(prompt):n] = True
      last[i, j] = n - 1
  return {"tokens": tokens, "attention_mask": att, "response_mask": resp, "last_index": last,
          "ranking": ranking, "valid": np.ones((b, k), bool), "margin": np.zeros((b,), np.float32)}


def accum(batch, a=1):
  """Adds the accumulation axis: ``[B, ...] -> [a, B / a, ...]``."""
  return {key: jnp.asarray(v).reshape((a, v.shape[0] // a) + v.shape[1:])
          for key, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Shared, compiled once per module.


@pytest.fixture(scope="module")
def policy():
  params, _ = init_params(MODEL, jax.random.PRNGKey(0), ONE)
  return params


@pytest.fixture(scope="module")
def model():
  return Decoder(MODEL)


@pytest.fixture(scope="module")
def ref_fn(model):
  return jax.jit(lambda params, batch: dpo.reference_logprobs(model.apply, params, MODEL, batch))


@pytest.fixture(scope="module")
def seq_logp(model):
  return jax.jit(lambda params, t, a, r: dpo.sequence_logprobs(model.apply, params, MODEL, t, a, r))


@pytest.fixture(scope="module")
def sgd():
  return optax.sgd(0.1)


@pytest.fixture(scope="module")
def dpo_update(model, sgd):
  return jax.jit(dpo.make_update(model.apply, MODEL, sgd, SCHEDULE, dpo.Config(beta=0.1)))


def dpo_batch(ref_fn, ref_params, batch, a=1):
  """A DPO update batch (with accumulation axis) whose reference comes from ``ref_params``."""
  ref = ref_fn(ref_params, accum({k: batch[k] for k in DPO_KEYS}))  # [1, B, ...]: one compile.
  out = {k: batch[k] for k in DPO_KEYS}
  out.update(ref_chosen_logp=ref["ref_chosen_logp"][0],
             ref_rejected_logp=ref["ref_rejected_logp"][0])
  return accum(out, a)


# --------------------------------------------------------------------------------------------
# DPO.


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="'variant'"):
    dpo.Config(variant="kto")
  with pytest.raises(ValueError, match="'beta'"):
    dpo.Config(beta=0.0)
  with pytest.raises(ValueError, match="'label_smoothing'"):
    dpo.Config(variant="dpo", label_smoothing=0.1)
  with pytest.raises(ValueError, match="'label_smoothing'"):
    dpo.Config(variant="rdpo", label_smoothing=0.5)
  with pytest.raises(ValueError, match="'objective'"):
    rm.Config(objective="pointwise")
  with pytest.raises(ValueError, match="'margin'"):
    rm.Config(objective="ranking", margin=True)
  with pytest.raises(ValueError, match="'num_levels'"):
    rm.Config(objective="rating", rating_loss="ordinal", num_levels=1)


def test_variants_match_hand_computation():
  rng = np.random.default_rng(0)
  logp = rng.normal(-10, 3, (6, 2)).astype(np.float32)
  ref = rng.normal(-10, 3, (6, 2)).astype(np.float32)
  counts = rng.integers(1, 9, (6, 2)).astype(np.float32)
  ranking = np.array([[0, 1], [1, 0]] * 3, np.int32)
  c, r = ranking[:, 0], ranking[:, 1]
  pick = lambda x, i: x[np.arange(6), i]
  h = (pick(logp, c) - pick(ref, c)) - (pick(logp, r) - pick(ref, r))
  ls = lambda x: -np.log1p(np.exp(-x))  # log σ(x)
  beta, eps = 0.3, 0.2
  want = {
      "dpo": -ls(beta * h),
      "cdpo": -(1 - eps) * ls(beta * h) - eps * ls(-beta * h),
      "rdpo": (-(1 - eps) * ls(beta * h) + eps * ls(-beta * h)) / (1 - 2 * eps),
      "hinge": np.maximum(0, 1 - beta * h),
  }
  for variant, expected in want.items():
    cfg = dpo.Config(variant=variant, beta=beta,
                     label_smoothing=eps if variant in ("cdpo", "rdpo") else 0.0)
    loss, stats = LOSSES(cfg, logp, ref, counts, ranking)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6, err_msg=variant)
    np.testing.assert_allclose(stats["reward_margin"], beta * h, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stats["reward_accuracy"], (h > 0).astype(np.float32))
  # IPO: (h − 1/(2τ))², on sums, or on per-token means (length-normalised, the default).
  loss, _ = LOSSES(dpo.Config(variant="ipo", beta=beta, ipo_length_normalize=False),
                                  logp, ref, counts, ranking)
  np.testing.assert_allclose(loss, (h - 1 / (2 * beta)) ** 2, rtol=1e-5)
  m, mref = logp / counts, ref / counts
  hn = (pick(m, c) - pick(mref, c)) - (pick(m, r) - pick(mref, r))
  loss, _ = LOSSES(dpo.Config(variant="ipo", beta=beta), logp, ref, counts, ranking)
  np.testing.assert_allclose(loss, (hn - 1 / (2 * beta)) ** 2, rtol=1e-5)


def test_listwise_dpo_is_plackett_luce_and_reduces_to_dpo():
  rng = np.random.default_rng(1)
  logp = rng.normal(-8, 2, (4, 3)).astype(np.float32)
  ref = rng.normal(-8, 2, (4, 3)).astype(np.float32)
  counts = np.ones((4, 3), np.float32)
  ranking = np.array([rng.permutation(3) for _ in range(4)], np.int32)
  beta = 0.5
  cfg = dpo.Config(beta=beta)
  loss, stats = LOSSES(cfg, logp, ref, counts, ranking)
  u = beta * (logp - ref)
  for i in range(4):
    s = u[i, ranking[i]]
    want = -sum(s[k] - np.log(np.sum(np.exp(s[k:]))) for k in range(3))
    np.testing.assert_allclose(loss[i], want, rtol=1e-5)
    pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
    np.testing.assert_allclose(stats["reward_accuracy"][i],
                               np.mean([s[a] > s[b] for a, b in pairs]), rtol=1e-6)
  # Listwise with K = 2 (the first two ranked) is sigmoid DPO.
  two = lambda x: np.take_along_axis(x, ranking[:, :2], 1)
  dpo_loss, _ = LOSSES(cfg, two(logp), two(ref), two(counts),
                                      np.tile(np.arange(2, dtype=np.int32), (4, 1)))
  valid = np.array([[True, True, False]] * 4)
  pl_loss, _ = LOSSES(cfg, logp, ref, counts, ranking, valid)
  np.testing.assert_allclose(pl_loss, dpo_loss, rtol=1e-5)
  with pytest.raises(ValueError, match="listwise"):
    LOSSES(dpo.Config(variant="ipo"), logp, ref, counts, ranking)


def test_dpo_at_the_reference_is_log2_and_the_step_prefers_chosen(policy, ref_fn, seq_logp,
                                                                  dpo_update, model, sgd):
  rng = np.random.default_rng(2)
  raw = make_lists(rng, B)
  batch = dpo_batch(ref_fn, policy, raw)
  state = TrainState.create(policy, sgd, jax.random.PRNGKey(1))
  new_state, metrics = dpo_update(state, batch)
  np.testing.assert_allclose(metrics["train/loss"], math.log(2), rtol=1e-6)
  assert float(metrics["dpo/reward_margin"]) == pytest.approx(0.0, abs=1e-6)
  assert float(metrics["dpo/pairs"]) == B and float(metrics["train/skipped"]) == 0.0
  assert float(metrics["train/grad_norm"]) > 0
  # Policy = reference for any β: h = 0 and every loss is log 2.
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  t, a, r = (flat(batch[k]).reshape(-1, L) for k in ("tokens", "attention_mask", "response_mask"))
  logp, counts = (x.reshape(B, 2) for x in seq_logp(policy, t, a, r))
  for beta in (0.01, 0.1, 0.5, 2.0):
    loss, _ = LOSSES(dpo.Config(beta=beta), logp, logp, counts,
                                    flat(batch["ranking"]))
    np.testing.assert_allclose(loss, math.log(2), rtol=1e-6)
  evaluate = jax.jit(lambda p, bt: dpo.evaluate_pairs(model.apply, p, MODEL, bt,
                                                      dpo.Config(beta=0.5)))
  unbatched = jax.tree.map(flat, batch)
  np.testing.assert_allclose(evaluate(policy, unbatched)["dpo/loss"], math.log(2), rtol=1e-6)
  # One SGD step raises every chosen and lowers every rejected sequence log-prob.
  after, _ = (x.reshape(B, 2) for x in seq_logp(new_state.params, t, a, r))
  assert np.all(after[:, 0] > logp[:, 0]), (after[:, 0], logp[:, 0])
  assert np.all(after[:, 1] < logp[:, 1]), (after[:, 1], logp[:, 1])
  # Measured against the frozen reference, the trained policy now wins the pairs.
  m = evaluate(new_state.params, unbatched)
  assert float(m["dpo/reward_accuracy"]) == 1.0 and float(m["dpo/loss"]) < math.log(2)
  assert float(m["dpo/chosen_reward"]) > 0 > float(m["dpo/rejected_reward"])


def test_identical_pairs_are_dropped(policy, ref_fn, dpo_update, sgd):
  rng = np.random.default_rng(3)
  raw = make_lists(rng, B)
  # Reference = a perturbed policy, so that h ≠ 0 and the distinct pairs have a real gradient.
  ref_params = jax.tree.map(lambda p: p * 1.05, policy)
  same = {k: v.copy() for k, v in raw.items()}
  for key in ("tokens", "attention_mask", "response_mask"):
    same[key][:4, 1] = same[key][:4, 0]
  same["tokens"][:4, 1][~same["attention_mask"][:4, 1]] = 7  # Padding content is irrelevant.
  masked = {k: v.copy() for k, v in raw.items()}
  masked["valid"][:4] = False
  state = TrainState.create(policy, sgd, jax.random.PRNGKey(1))
  s_same, m_same = dpo_update(state, dpo_batch(ref_fn, ref_params, same))
  s_mask, m_mask = dpo_update(state, dpo_batch(ref_fn, ref_params, masked))
  assert float(m_same["dpo/dropped_identical"]) == 4 and float(m_same["dpo/pairs"]) == 4
  np.testing.assert_allclose(m_same["train/loss"], m_mask["train/loss"], rtol=1e-6)
  np.testing.assert_allclose(m_same["train/grad_norm"], m_mask["train/grad_norm"], rtol=1e-5)
  assert _tree_rel_diff(s_same.params, s_mask.params) < 1e-6
  # A batch of identical pairs only: zero loss, zero gradient, params unchanged.
  for key in ("tokens", "attention_mask", "response_mask"):
    same[key][:, 1] = same[key][:, 0]
  s_all, m_all = dpo_update(state, dpo_batch(ref_fn, ref_params, same))
  assert float(m_all["train/loss"]) == 0.0 and float(m_all["train/grad_norm"]) == 0.0
  assert float(m_all["dpo/dropped_identical"]) == B
  assert _tree_rel_diff(s_all.params, policy) == 0.0


def test_dpo_micro_batches_and_mesh_equal_one_batch(policy, ref_fn, dpo_update, model, sgd):
  rng = np.random.default_rng(4)
  raw = make_lists(rng, B)
  ref_params = jax.tree.map(lambda p: p * 0.97, policy)
  state = TrainState.create(policy, sgd, jax.random.PRNGKey(1))
  s1, m1 = dpo_update(state, dpo_batch(ref_fn, ref_params, raw))
  s2, m2 = dpo_update(state, dpo_batch(ref_fn, ref_params, raw, a=2))
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  update8 = _sharded(dpo.make_update(model.apply, MODEL, sgd, SCHEDULE, dpo.Config(beta=0.1)),
                     mesh, sgd, policy)
  s8, m8 = update8(state, dpo_batch(ref_fn, ref_params, raw))
  assert float(m1["train/loss"]) != pytest.approx(math.log(2), abs=1e-4)
  for s, m in ((s2, m2), (s8, m8)):
    np.testing.assert_allclose(m["train/loss"], m1["train/loss"], rtol=1e-5, atol=1e-6)
    for k in ("dpo/reward_accuracy", "dpo/reward_margin", "dpo/chosen_logp", "train/grad_norm"):
      np.testing.assert_allclose(m[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert _tree_rel_diff(s.params, s1.params) < 1e-5
  assert s8.params["embedding"].sharding.spec == P("tensor", "fsdp")


def _state_shardings(mesh, tx, params):
  if "trunk" in params:
    abstract = jax.eval_shape(lambda: params)
    param_sh = rm.param_shardings(abstract, MODEL, mesh)
  else:
    abstract = abstract_params(MODEL)
    param_sh = tree_shardings(abstract, param_logical_axes(MODEL), mesh)
  return train_state_shardings(tx, abstract, param_sh, mesh)


def _sharded(update_fn, mesh, tx, params):
  """``jit(update)`` on ``mesh`` with the batch split over data × fsdp (as the SFT loop does)."""
  state_sh = _state_shardings(mesh, tx, params)
  batch_sh = NamedSharding(mesh, P(None, ("data", "fsdp")))
  update = jax.jit(update_fn, in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, replicated(mesh)))
  return lambda state, batch: update(jax.device_put(state, state_sh),
                                     jax.device_put(batch, batch_sh))


# --------------------------------------------------------------------------------------------
# Reward models.

RM_KEYS = ("tokens", "attention_mask", "last_index", "ranking", "valid", "margin")
ADAM = optax.adam(1e-2)


@pytest.fixture(scope="module")
def rm_params(policy):
  return rm.init_params(policy, MODEL, jax.random.PRNGKey(5))


@pytest.fixture(scope="module")
def rm_pairwise_update():
  """Adam: learns fast."""
  return jax.jit(rm.make_update(MODEL, ADAM, SCHEDULE, rm.Config(objective="pairwise")))


@pytest.fixture(scope="module")
def rm_sgd_update(sgd):
  """SGD: a param update proportional to the gradient (Adam's first step is ~ lr·sign(g), which
  turns float-noise-level gradient differences into visible parameter differences)."""
  return jax.jit(rm.make_update(MODEL, sgd, SCHEDULE, rm.Config(objective="pairwise")))


def rm_batch(raw, a=1):
  return accum({k: raw[k] for k in RM_KEYS}, a)


def test_score_reads_the_last_token_and_normalization(rm_params):
  rng = np.random.default_rng(6)
  raw = make_lists(rng, 4)
  t, a, last = (raw[k].reshape(8, *raw[k].shape[2:]) for k in ("tokens", "attention_mask",
                                                                 "last_index"))
  want = jax.jit(lambda p, t, a: last_token_rewards(p, MODEL, t, a))(rm_params, t, a)
  scorer = rm.make_scorer(MODEL)
  got = scorer(rm_params, jnp.asarray(t), jnp.asarray(a), jnp.asarray(last))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  stats = rm.normalization_stats(got)
  z = rm.normalize_scores(got, stats)
  assert abs(float(jnp.mean(z))) < 1e-5 and abs(float(jnp.std(z)) - 1) < 1e-3
  # Padding content never changes a score.
  t2 = np.where(a, t, 9)
  np.testing.assert_allclose(scorer(rm_params, jnp.asarray(t2), jnp.asarray(a), jnp.asarray(last)),
                             got, rtol=1e-5, atol=1e-6)


def test_plackett_luce_with_two_responses_is_bradley_terry(rm_params, rm_sgd_update, sgd):
  rng = np.random.default_rng(7)
  batch = rm_batch(make_lists(rng, B, shuffle=True))
  ranking_update = jax.jit(rm.make_update(MODEL, sgd, SCHEDULE, rm.Config(objective="ranking")))
  state = TrainState.create(rm_params, sgd, jax.random.PRNGKey(1))
  s_bt, m_bt = rm_sgd_update(state, batch)
  s_pl, m_pl = ranking_update(state, batch)
  for k in ("train/loss", "rm/accuracy", "rm/margin", "rm/score_mean", "rm/score_std",
            "train/grad_norm"):
    np.testing.assert_allclose(m_pl[k], m_bt[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert _tree_rel_diff(s_pl.params, s_bt.params) < 1e-6
  # And the BT loss is the hand formula on the scores.
  flat = jax.tree.map(lambda x: x[0], batch)
  scores = SCORES(rm_params, flat["tokens"], flat["attention_mask"], flat["last_index"])
  ranked = np.take_along_axis(np.asarray(scores), np.asarray(flat["ranking"]), 1)
  want = np.mean(np.log1p(np.exp(-(ranked[:, 0] - ranked[:, 1]))))
  np.testing.assert_allclose(m_bt["train/loss"], want, rtol=1e-5)


def test_reward_model_learns_a_separable_preference(rm_params, rm_pairwise_update):
  rng = np.random.default_rng(8)
  state = TrainState.create(rm_params, ADAM, jax.random.PRNGKey(1))
  for _ in range(30):
    state, metrics = rm_pairwise_update(state, rm_batch(make_lists(rng, B, good=True,
                                                                   shuffle=True)))
  assert float(metrics["train/skipped_total"]) == 0.0
  held_out = make_lists(rng, 64, good=True, shuffle=True)
  evaluate = jax.jit(lambda p, bt: rm.evaluate(p, MODEL, bt, rm.Config()))
  m = evaluate(state.params, {k: jnp.asarray(held_out[k]) for k in RM_KEYS})
  assert float(m["rm/accuracy"]) > 0.95, m
  assert float(m["rm/margin"]) > 0
  # The sharded batch scorer ranks the held-out pairs the same way.
  mesh = make_mesh(MeshConfig(data=8))
  scorer = rm.make_scorer(MODEL, mesh)
  flat = lambda k: jnp.asarray(held_out[k].reshape((128,) + held_out[k].shape[2:]))
  s8 = np.asarray(scorer(state.params, flat("tokens"), flat("attention_mask"),
                          flat("last_index"))).reshape(64, 2)
  best = np.take_along_axis(s8, held_out["ranking"][:, :1], 1)[:, 0]
  worst = np.take_along_axis(s8, held_out["ranking"][:, 1:], 1)[:, 0]
  assert np.mean(best > worst) > 0.95


def test_rm_micro_batches_and_mesh_equal_one_batch(rm_params, rm_sgd_update, sgd):
  rng = np.random.default_rng(9)
  raw = make_lists(rng, B, shuffle=True)
  state = TrainState.create(rm_params, sgd, jax.random.PRNGKey(1))
  s1, m1 = rm_sgd_update(state, rm_batch(raw))
  s2, m2 = rm_sgd_update(state, rm_batch(raw, a=2))
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  update8 = _sharded(rm.make_update(MODEL, sgd, SCHEDULE, rm.Config(objective="pairwise")),
                     mesh, sgd, rm_params)
  s8, m8 = update8(state, rm_batch(raw))
  for s, m in ((s2, m2), (s8, m8)):
    for k in ("train/loss", "rm/accuracy", "rm/margin", "rm/score_mean", "rm/score_std",
              "train/grad_norm"):
      np.testing.assert_allclose(m[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert _tree_rel_diff(s.params, s1.params) < 1e-4


def test_pairwise_margin_centering_and_ordinal_ratings(rm_params):
  rng = np.random.default_rng(10)
  raw = make_lists(rng, B)
  flat = {k: jnp.asarray(raw[k]) for k in RM_KEYS}
  flat["margin"] = jnp.asarray(rng.uniform(0, 2, B).astype(np.float32))
  scores = SCORES(rm_params, flat["tokens"], flat["attention_mask"], flat["last_index"])
  rw, rl = np.asarray(scores[:, 0]), np.asarray(scores[:, 1])
  cfg = rm.Config(margin=True, center_coef=0.01)
  got = jax.jit(lambda p, bt: rm.evaluate(p, MODEL, bt, cfg))(rm_params, flat)["rm/loss"]
  want = np.mean(np.log1p(np.exp(-(rw - rl - np.asarray(flat["margin"])))) + 0.01 * (rw + rl) ** 2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Ordinal ratings: the thresholds are learnable head params and stay increasing.
  ordinal = rm.Config(objective="rating", rating_loss="ordinal", num_levels=4)
  params = rm.init_params(jax.tree.map(lambda x: x, rm_params["trunk"]), MODEL,
                          jax.random.PRNGKey(2), ordinal)
  np.testing.assert_allclose(rm.ordinal_thresholds(params), [-1.0, 0.0, 1.0], atol=1e-6)
  rows = make_lists(rng, 16, k=1)
  ratings = {"tokens": rows["tokens"][:, 0], "attention_mask": rows["attention_mask"][:, 0],
             "last_index": rows["last_index"][:, 0],
             "score": (rows["tokens"][:, 0, 2] % 4).astype(np.float32)}  # Learnable from a token.
  update = jax.jit(rm.make_update(MODEL, ADAM, SCHEDULE, ordinal))
  state = TrainState.create(params, ADAM, jax.random.PRNGKey(1))
  batch = accum(ratings)
  losses = []
  for _ in range(5):
    state, m = update(state, batch)
    losses.append(float(m["train/loss"]))
  assert losses[-1] < losses[0] and "rm/level_accuracy" in m
  th = np.asarray(rm.ordinal_thresholds(state.params))
  assert np.all(np.diff(th) > 0)
  assert not np.allclose(state.params["head"]["thresholds_raw"], params["head"]["thresholds_raw"])
