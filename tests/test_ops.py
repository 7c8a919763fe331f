"""jaxrl_llm.ops: the spec's numeric vectors (docs/algorithms.md §24), edge cases (1.6), identities and
gradients. Functions run jitted; the last tests run them on inputs sharded over 8 devices."""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

from jaxrl_llm import ops
from jaxrl_llm.config import MeshConfig
from jaxrl_llm.parallel import make_mesh

approx = lambda x, **kw: pytest.approx(np.asarray(x, np.float64).tolist(), **kw)


def ones(b, t=1):
  return jnp.ones((b, t), jnp.float32)


def gid(*ids):
  return jnp.asarray(ids, jnp.int32)


# --------------------------------------------------------------------------- spec vectors (§24)

GROUP_VECTORS = [
    ([1, 0, 0, 1], [0.8660, -0.8660, -0.8660, 0.8660], [0.5, -0.5, -0.5, 0.5],
     [0.6667, -0.6667, -0.6667, 0.6667]),
    ([1, 0, 0, 0], [1.5, -0.5, -0.5, -0.5], [0.75, -0.25, -0.25, -0.25],
     [1.0, -0.3333, -0.3333, -0.3333]),
    ([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    ([1, -1, -1, -1], [1.5, -0.5, -0.5, -0.5], [1.5, -0.5, -0.5, -0.5],
     [2.0, -0.6667, -0.6667, -0.6667]),
]


@pytest.mark.parametrize("rewards,grpo,drgrpo,rloo", GROUP_VECTORS)
def test_group_advantage_vectors(rewards, grpo, drgrpo, rloo):
  r = jnp.asarray(rewards, jnp.float32)
  g = jnp.zeros(4, jnp.int32)
  a_grpo, _ = jax.jit(ops.grpo_advantages, static_argnames="num_groups")(r, g, ones(4),
                                                                         num_groups=1)
  a_dr, _ = ops.drgrpo_advantages(r, g, ones(4), num_groups=1)
  a_rloo, _ = ops.rloo_advantages(r, g, ones(4), num_groups=1)
  assert a_grpo[:, 0] == approx(grpo, abs=2e-4)
  assert a_dr[:, 0] == approx(drgrpo, abs=1e-6)
  assert a_rloo[:, 0] == approx(rloo, abs=1e-4)
  # Identity: RLOO = G/(G-1) * Dr.GRPO.
  np.testing.assert_allclose(a_rloo, 4 / 3 * a_dr, atol=1e-6)


def test_luffy_mixed_group_vector():
  r = jnp.array([0.0] * 7 + [1.0])
  a, _ = ops.drgrpo_advantages(r, jnp.zeros(8, jnp.int32), ones(8), num_groups=1)
  assert a[:, 0] == approx([-0.125] * 7 + [0.875], abs=1e-6)


def test_kl_estimator_vector():
  lp, ref = jnp.array([-1.0]), jnp.array([-1.5])
  got = {k: float(ops.kl_penalty(lp, ref, k)[0]) for k in ("k1", "abs", "k2", "k3")}
  assert got == pytest.approx({"k1": 0.5, "abs": 0.5, "k2": 0.125, "k3": 0.106531}, abs=1e-6)
  assert float(ops.kl_penalty(lp, ref, "low_var_kl")[0]) == pytest.approx(0.106531, abs=1e-6)
  with pytest.raises(ValueError, match="unknown KL estimator"):
    ops.kl_penalty(lp, ref, "k4")


def _ppo(a, ratio, **kw):
  loss, _ = ops.ppo_clip_loss(jnp.log(jnp.array([[ratio]])), jnp.zeros((1, 1)),
                              jnp.array([[a]], jnp.float32), jnp.ones((1, 1)), **kw)
  return float(loss[0, 0])


def test_ppo_clip_vectors():
  assert _ppo(1, 1.5) == pytest.approx(-1.2)
  assert _ppo(-1, 0.5) == pytest.approx(0.8)
  assert _ppo(-1, 5.0) == pytest.approx(5.0)
  assert _ppo(-1, 5.0, dual_clip=3.0) == pytest.approx(3.0)
  assert _ppo(1, 1.25, clip_low=0.2, clip_high=0.28) == pytest.approx(-1.25)
  assert _ppo(1, 1.35, clip_low=0.2, clip_high=0.28) == pytest.approx(-1.28)
  with pytest.raises(ValueError, match="dual_clip"):
    _ppo(1, 1.0, dual_clip=0.5)


def test_gae_vector_and_whitening():
  adv, ret = ops.gae_advantages(jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.5, 0.6, 0.7]]),
                                jnp.ones((1, 3)), gamma=1.0, lam=0.95)
  assert adv[0] == approx([0.46575, 0.385, 0.3], abs=1e-5)
  assert ret[0] == approx([0.96575, 0.985, 1.0], abs=1e-5)
  assert ops.masked_whiten(adv, jnp.ones((1, 3)))[0] == approx([0.9913, 0.0171, -1.0084], abs=1e-4)


def test_reinforce_pp_returns_vector():
  mask = jnp.ones((1, 4))
  r = ops.scores_to_token_rewards(jnp.array([1.0]), mask, kl=jnp.array([[0.1, 0.2, 0.0, 0.3]]),
                                  kl_coef=0.01)
  assert r[0] == approx([-0.001, -0.002, 0.0, 0.997], abs=1e-7)
  assert ops.discounted_returns(r, mask, gamma=1.0)[0] == approx([0.994, 0.995, 0.997, 0.997],
                                                                 abs=1e-6)
  adv, _ = ops.reinforce_pp_advantages(r, mask)
  g = np.array([0.994, 0.995, 0.997, 0.997])
  assert adv[0] == approx((g - g.mean()) / np.sqrt(g.var(ddof=1) + 1e-8), abs=2e-3)


def test_gspo_sequence_ratio_vector():
  lr = jnp.array([[0.01, -0.02, 0.03]])
  _, diag = ops.gspo_loss(lr, jnp.zeros((1, 3)), jnp.ones((1, 3)), jnp.ones((1, 3)))
  assert float(diag["seq_ratio_mean"]) == pytest.approx(1.006689, abs=1e-6)


def test_aggregation_vectors():
  loss = jnp.array([[1.0, 1.0, 1.0, jnp.nan], [2.0, 2.0, jnp.inf, 0.0]])
  mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  agg = lambda mode, **kw: float(ops.aggregate_loss(loss, mask, mode, **kw))
  assert agg("token-mean") == pytest.approx(1.4)
  assert agg("token-sum") == pytest.approx(7.0)
  assert agg("seq-mean-token-mean") == pytest.approx(1.5)
  assert agg("seq-mean-token-sum") == pytest.approx(3.5)
  assert agg("seq-mean-token-sum-norm", norm_constant=4) == pytest.approx(0.875)
  with pytest.raises(ValueError, match="norm_constant"):
    agg("seq-mean-token-sum-norm")
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    agg("mean")


@pytest.mark.parametrize("p,f,weight", [(0.01, 0.0909, 0.0826), (0.1, 0.5, 0.25),
                                        (0.5, 0.8333, 0.1389), (0.9, 0.9, 0.09)])
def test_luffy_shaping_vector(p, f, weight):
  logp = jnp.log(jnp.array([[p]]))
  args = (jnp.zeros((1, 1)), -jnp.ones((1, 1)), jnp.ones((1, 1)), jnp.ones((1,), bool))
  loss, _ = ops.luffy_loss(logp, *args, gamma=0.1)
  assert float(loss[0, 0]) == pytest.approx(f, abs=1e-4)  # -A * f(p) with A = -1.
  grad = jax.grad(lambda lp: ops.luffy_loss(lp, *args, gamma=0.1)[0].sum())(logp)
  assert float(grad[0, 0]) == pytest.approx(weight, abs=1e-4)


def test_pass_at_k_vector():
  assert float(ops.pass_at_k(10, 3, 1)) == pytest.approx(0.3, abs=1e-5)
  assert float(ops.pass_at_k(10, 3, 5)) == pytest.approx(0.9167, abs=1e-4)
  assert float(ops.pass_at_k(10, 8, 5)) == 1.0
  assert float(ops.pass_at_k(10, 0, 5)) == pytest.approx(0.0, abs=1e-6)
  out = ops.pass_at_k(jnp.array([10, 10, 20]), jnp.array([3, 0, 20]), 2)
  assert out == approx([1 - math.comb(7, 2) / math.comb(10, 2), 0.0, 1.0], abs=1e-5)


def _cov_batch():
  # 100 x 1000 valid tokens; Cov_i = 2 for every token (logp dev ±2 aligned with A dev ±1).
  sign = jnp.where(jnp.arange(100_000).reshape(100, 1000) % 2 == 0, 1.0, -1.0)
  logp = -3.0 + 2.0 * sign
  return logp, logp, sign, jnp.ones_like(sign)


def test_clip_cov_and_kl_cov_selection_sizes():
  logp, old, adv, mask = _cov_batch()
  np.testing.assert_allclose(ops.token_covariance(logp, adv, mask), 2.0, rtol=1e-6)
  loss, diag = jax.jit(ops.clip_cov_loss)(logp, old, adv, mask, key=jax.random.PRNGKey(0))
  assert float(diag["clip_cov_selected"]) == 20.0
  assert int(jnp.sum(loss == 0.0)) == 20  # The selected tokens' loss (and gradient) is removed.
  loss2, _ = ops.clip_cov_loss(logp, old, adv, mask, key=jax.random.PRNGKey(0))
  np.testing.assert_array_equal(loss, loss2)  # Same key, same selection.
  loss3, _ = ops.clip_cov_loss(logp, old, adv, mask, key=jax.random.PRNGKey(1))
  assert not np.array_equal(loss, loss3)
  _, diag = ops.kl_cov_loss(logp, old, adv, mask)
  assert float(diag["kl_cov_selected"]) == 200.0


def test_covariance_stats_by_hand():
  # 5 valid tokens (one padded, set to values that would dominate if counted).
  logp = jnp.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, 100.0]])
  adv = jnp.array([[2.0, 1.0, 0.0], [0.0, -3.0, 50.0]])
  mask = jnp.array([[True, True, True], [True, True, False]])
  # mean logp = -3, mean A = 0: Cov = (2·2, 1·1, 0·0, -1·0, -2·-3) = (4, 1, 0, 0, 6).
  stats = jax.jit(lambda a, b, c: ops.covariance_stats(a, b, c, clip_cov_lb=0.5,
                                                       clip_cov_ub=5.0, kl_cov_ratio=0.2))(
      logp, adv, mask)
  assert float(stats["cov"]) == pytest.approx(11 / 5)
  assert float(stats["cov_clip_band"]) == 2.0  # 4 and 1 (6 is above the band)
  assert float(stats["cov_kl_topk"]) == 1.0  # max(floor(0.2·5), 1)
  assert float(stats["cov_kl_topk_share"]) == pytest.approx(6 / 11)
  empty = ops.covariance_stats(logp, adv, jnp.zeros_like(mask))
  assert {k: float(v) for k, v in empty.items()} == {
      "cov": 0.0, "cov_clip_band": 0.0, "cov_kl_topk": 0.0, "cov_kl_topk_share": 0.0}


# --------------------------------------------------------------------------- edge cases (§1.6)

def test_constant_groups_get_exactly_zero_advantage():
  r = jnp.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7])  # 0.1 is inexact in float32.
  a, diag = ops.grpo_advantages(r, gid(0, 0, 0, 1, 1, 1), ones(6), num_groups=2)
  assert np.all(np.asarray(a) == 0.0)
  assert float(diag["zero_std_groups"]) == 2.0


def test_singleton_groups_follow_the_policy_and_are_counted():
  r = jnp.array([1.0, 0.0, 3.0])
  g = gid(0, 0, 1)
  zero, diag = ops.grpo_advantages(r, g, ones(3), num_groups=2)
  raw, _ = ops.grpo_advantages(r, g, ones(3), num_groups=2, singleton="raw")
  assert float(zero[2, 0]) == 0.0 and float(raw[2, 0]) == 3.0
  assert float(diag["singleton_groups"]) == 1.0
  for fn in (ops.rloo_advantages, ops.drgrpo_advantages):
    assert float(fn(r, g, ones(3), num_groups=2)[0][2, 0]) == 0.0
    assert float(fn(r, g, ones(3), num_groups=2, singleton="raw")[0][2, 0]) == 3.0
  with pytest.raises(ValueError, match="singleton"):
    ops.grpo_advantages(r, g, ones(3), num_groups=2, singleton="drop")


def test_non_contiguous_groups_and_unscorable_rows():
  r = jnp.array([1.0, 5.0, 0.0, jnp.nan, 7.0])
  g = gid(0, 1, 0, 0, 1)
  a, diag = ops.drgrpo_advantages(r, g, ones(5), num_groups=2)
  # Group 0 = {1, 0} (the NaN row is excluded), group 1 = {5, 7}.
  assert a[:, 0] == approx([0.5, -1.0, -0.5, 0.0, 1.0])
  assert float(diag["unscorable_rows"]) == 1.0
  a, _ = ops.rloo_advantages(r, g, ones(5), num_groups=2)
  assert a[:, 0] == approx([1.0, -2.0, -1.0, 0.0, 2.0])


def test_empty_rows_and_all_masked_batches():
  mask = jnp.array([[1, 1, 0], [0, 0, 0]], jnp.float32)
  a, diag = ops.grpo_advantages(jnp.array([1.0, 0.0]), gid(0, 0), mask, num_groups=1)
  assert float(diag["empty_rows"]) == 1.0
  assert np.all(np.asarray(a[1]) == 0.0) and float(a[0, 0]) != 0.0
  # The empty row takes part in the group statistics but not in the normalisers.
  loss = jnp.ones((2, 3))
  assert float(ops.aggregate_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx(1.0)
  assert float(ops.aggregate_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx(2.0)
  empty = jnp.zeros((2, 3))
  for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
    val, grad = jax.value_and_grad(lambda x: ops.aggregate_loss(x, empty, mode))(loss)
    assert float(val) == 0.0 and np.all(np.asarray(grad) == 0.0)
  idx, has = ops.last_token_index(mask)
  assert idx.tolist() == [1, 0] and has.tolist() == [True, False]
  r = ops.scores_to_token_rewards(jnp.array([2.0, 3.0]), mask)
  assert r.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]  # No wrap-around to the last column.


def test_nan_in_padding_never_leaks_into_values_or_gradients():
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
  bad = jnp.where(mask, 0.0, jnp.nan)
  logp = jnp.array([[-1.0, -2.0, 0.0, 0.0], [-0.5, -1.5, -0.2, 0.0]]) + bad
  old = logp - 0.1 + bad
  adv = jnp.array([[1.0, 1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]]) + bad
  values = jnp.full((2, 4), 0.3) + bad

  def total(lp):
    pg, _ = ops.ppo_clip_loss(lp, old, adv, mask, dual_clip=3.0)
    gs, _ = ops.gspo_loss(lp, old, adv, mask)
    lf, _ = ops.luffy_loss(lp, old, adv, mask, jnp.array([True, False]))
    kc, _ = ops.kl_cov_loss(lp, old, adv, mask)
    kl = ops.kl_penalty(lp, old, "k3+", mask=mask)
    vl, _ = ops.value_loss(lp, values, adv, mask)
    terms = pg + gs + lf + kc + kl + vl
    return sum(ops.aggregate_loss(terms, mask, m, norm_constant=4.0)
               for m in ops.AGGREGATION_MODES)

  val, grad = jax.value_and_grad(total)(logp)
  assert np.isfinite(float(val))
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0.0)  # Masked tokens: exactly zero.
  a, r = ops.gae_advantages(adv, values, mask, gamma=0.9, lam=0.8)
  assert np.all(np.isfinite(np.asarray(a))) and np.all(np.isfinite(np.asarray(r)))
  w = ops.masked_whiten(adv, mask)
  assert np.all(np.isfinite(np.asarray(w)))
  assert float(ops.masked_var(adv, mask)) == pytest.approx(np.var([1, 1, -1, -1, -1], ddof=1))


def test_gae_skips_holes_inside_a_response():
  # A masked observation token in the middle must not break the recursion.
  r = jnp.array([[0.1, 9.0, 0.2, 1.0]])
  v = jnp.array([[0.5, 9.0, 0.4, 0.3]])
  hole = jnp.array([[1, 0, 1, 1]])
  a_hole, ret_hole = ops.gae_advantages(r, v, hole, gamma=0.9, lam=0.8)
  a_dense, ret_dense = ops.gae_advantages(r[:, [0, 2, 3]], v[:, [0, 2, 3]], jnp.ones((1, 3)),
                                          gamma=0.9, lam=0.8)
  np.testing.assert_allclose(a_hole[:, [0, 2, 3]], a_dense, rtol=1e-6)
  np.testing.assert_allclose(ret_hole[:, [0, 2, 3]], ret_dense, rtol=1e-6)
  assert float(a_hole[0, 1]) == 0.0


def test_whiten_needs_two_tokens():
  x = jnp.array([[3.0, 0.0]])
  m = jnp.array([[1, 0]])
  assert ops.masked_whiten(x, m).tolist() == [[0.0, 0.0]]  # x − μ.
  assert ops.masked_whiten(x, m, shift_mean=False).tolist() == [[3.0, 0.0]]
  assert float(ops.masked_var(x, m)) == 0.0


# --------------------------------------------------------------------------- identities

def test_gae_lambda_one_is_discounted_return_minus_value():
  key = jax.random.PRNGKey(3)
  r = jax.random.normal(key, (3, 6))
  v = jax.random.normal(jax.random.fold_in(key, 1), (3, 6))
  m = jnp.array([[1] * 6, [1] * 4 + [0] * 2, [1, 1, 0, 1, 1, 0]])
  adv, ret = ops.gae_advantages(r, v, m, gamma=0.9, lam=1.0)
  g = ops.discounted_returns(r, m, gamma=0.9)
  np.testing.assert_allclose(adv, jnp.where(m > 0, g - v, 0.0), atol=1e-5)
  np.testing.assert_allclose(ret, jnp.where(m > 0, g, 0.0), atol=1e-5)
  manual = sum(0.9 ** k * float(r[0, k]) for k in range(6))
  assert float(g[0, 0]) == pytest.approx(manual, rel=1e-5)


def test_dual_clip_bounds_loss_by_c_abs_a():
  key = jax.random.PRNGKey(0)
  logp = jax.random.normal(key, (4, 50)) * 3
  adv = jax.random.normal(jax.random.fold_in(key, 1), (4, 50))
  loss, diag = ops.ppo_clip_loss(logp, jnp.zeros_like(logp), adv, jnp.ones_like(logp),
                                 dual_clip=3.0)
  neg = np.asarray(adv) < 0
  assert np.all(np.asarray(loss)[neg] <= 3.0 * np.abs(np.asarray(adv))[neg] + 1e-5)
  assert float(diag["clipfrac_lower"]) > 0


def test_straight_through_estimators_have_the_k2_gradient():
  lp = jnp.array([-1.0, -0.3, -2.0])
  ref = jnp.array([-1.5, -0.1, -2.0])
  delta = lp - ref
  for kind, base in (("k1+", "k1"), ("k3+", "k3"), ("abs+", "abs")):
    value = ops.kl_penalty(lp, ref, kind)
    np.testing.assert_allclose(value, ops.kl_penalty(lp, ref, base), atol=1e-7)
    grad = jax.grad(lambda x: ops.kl_penalty(x, ref, kind).sum())(lp)
    np.testing.assert_allclose(grad, delta, atol=1e-6)


def test_zero_advantages_give_zero_policy_gradient_and_on_policy_ratio_is_one():
  lp = jnp.log(jnp.array([[0.2, 0.5, 0.9]]))
  mask = jnp.ones_like(lp)
  for fn in (ops.ppo_clip_loss, ops.gspo_loss, ops.kl_cov_loss):
    grad = jax.grad(lambda x: fn(x, lp, jnp.zeros_like(lp), mask)[0].sum())(lp)
    assert np.all(np.asarray(grad) == 0.0)
  _, diag = ops.ppo_clip_loss(lp, lp, jnp.ones_like(lp), mask)
  assert float(diag["ratio_mean"]) == 1.0 and float(diag["clipfrac"]) == 0.0


def test_gspo_gradient_equals_sequence_level_objective():
  key = jax.random.PRNGKey(5)
  lp = -jnp.abs(jax.random.normal(key, (2, 5)))
  old = lp + 0.01 * jax.random.normal(jax.random.fold_in(key, 1), (2, 5))
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)
  a_row = jnp.array([0.7, -1.3])
  adv = a_row[:, None] * mask

  def token_form(x):
    loss, _ = ops.gspo_loss(x, old, adv, mask, clip_low=0.5, clip_high=0.5)  # Inside the region.
    return ops.aggregate_loss(loss, mask, "seq-mean-token-mean")

  def sequence_form(x):
    s = jnp.exp(jnp.sum((x - old) * mask, -1) / jnp.sum(mask, -1))
    return jnp.mean(-a_row * s)

  np.testing.assert_allclose(jax.grad(token_form)(lp), jax.grad(sequence_form)(lp), atol=1e-6)
  assert float(token_form(lp)) == pytest.approx(float(sequence_form(lp)), rel=1e-6)


def test_ppo_gradient_zero_outside_the_trust_region():
  lp = jnp.log(jnp.array([[1.5, 0.5, 1.5, 0.5]]))
  adv = jnp.array([[1.0, -1.0, -1.0, 1.0]])
  grad = jax.grad(lambda x: ops.ppo_clip_loss(x, jnp.zeros_like(x), adv, jnp.ones_like(x))[0]
                  .sum())(lp)
  # A>0 & ρ>1+ε and A<0 & ρ<1−ε: clipped, zero gradient; the other two are not clipped.
  assert grad[0, 0] == 0.0 and grad[0, 1] == 0.0
  assert float(grad[0, 2]) == pytest.approx(1.5) and float(grad[0, 3]) == pytest.approx(-0.5)


def test_clip_cov_removes_gradient_of_selected_tokens_only():
  logp, old, adv, mask = (x[:2, :50] for x in _cov_batch())
  old = logp
  loss_fn = lambda x: ops.clip_cov_loss(x, old, adv, mask, key=jax.random.PRNGKey(2),
                                        clip_ratio=0.1)[0]
  grad = jax.grad(lambda x: loss_fn(x).sum())(logp)
  zero = np.asarray(loss_fn(logp)) == 0.0
  assert zero.sum() == 10
  assert np.all(np.asarray(grad)[zero] == 0.0) and np.all(np.asarray(grad)[~zero] != 0.0)


def test_value_loss_clipping():
  v = jnp.array([[1.0, 0.0]])
  old = jnp.array([[0.0, 0.0]])
  ret = jnp.array([[0.0, 1.0]])
  loss, diag = ops.value_loss(v, old, ret, jnp.ones((1, 2)), clip=0.5)
  # Token 0: unclipped (1-0)^2=1, clipped (0.5-0)^2=0.25 -> max 1 -> 0.5.
  assert loss[0].tolist() == pytest.approx([0.5, 0.5])
  loss, _ = ops.value_loss(v, old, ret, jnp.ones((1, 2)), clip=None)
  assert loss[0].tolist() == pytest.approx([0.5, 0.5])
  check_grads(lambda x: ops.value_loss(x, old, ret, jnp.ones((1, 2)))[0].sum(),
              (jnp.array([[0.3, 0.2]]),), order=1, modes=["rev"])


def test_truncated_is_weights():
  lp = jnp.log(jnp.array([[0.5, 0.5, 0.5]]))
  sampler = jnp.log(jnp.array([[0.5, 0.1, 0.9]]))
  w, diag = ops.truncated_is_weights(lp, sampler, jnp.array([[1, 1, 0]]), cap=2.0)
  assert w[0].tolist() == pytest.approx([1.0, 2.0, 0.0])
  assert float(diag["is_capped_fraction"]) == 0.5


def test_remax_and_reinforce_baseline():
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
  adv, _ = ops.remax_advantages(jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]), mask)
  np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]], atol=1e-7)
  adv, _ = ops.reinforce_pp_baseline_advantages(jnp.array([1.0, 0.0, 2.0, 2.0]), gid(0, 0, 1, 1),
                                                jnp.ones((4, 2)), num_groups=2)
  # Centred [0.5, -0.5, 0, 0] then whitened over 8 tokens; the constant group gets -mu/sigma = 0.
  expected = np.array([0.5, -0.5, 0.0, 0.0]).repeat(2)
  expected = (expected - expected.mean()) / np.sqrt(expected.var(ddof=1) + 1e-8)
  np.testing.assert_allclose(np.asarray(adv).reshape(-1), expected, atol=1e-5)


def test_prime_advantages_match_the_formula():
  proc = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.0, 0.0], [0.3, 0.3, 0.0]])
  mask = jnp.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], jnp.float32)
  outcome = jnp.array([1.0, 0.0, 1.0])
  adv, _ = ops.prime_advantages(proc, outcome, gid(0, 0, 0), mask, num_groups=1)
  rbar = np.array([0.2, 0.4, 0.3])
  m = np.asarray(mask)
  expected = np.zeros((3, 3))
  for i in range(3):
    base = (rbar.sum() - rbar[i]) / 2
    a_o = float(outcome[i]) - (float(outcome.sum()) - float(outcome[i])) / 2
    for t in range(3):
      if m[i, t]:
        expected[i, t] = sum(float(proc[i, s]) - base for s in range(t, 3) if m[i, s]) + a_o
  np.testing.assert_allclose(adv, expected, atol=1e-6)


def test_kl_controllers():
  fixed = ops.FixedKLController(0.05)
  state = fixed.update(fixed.init(), 1.0, 64)
  assert float(state.coef) == pytest.approx(0.05)
  ctl = ops.AdaptiveKLController(0.1, target_kl=0.1, horizon=1000)
  s = ctl.init()
  s = jax.jit(ctl.update)(s, jnp.float32(0.3), jnp.float32(100))  # error clipped to +0.2.
  assert float(s.coef) == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
  s = ctl.update(s, 0.09, 100)  # error -0.1.
  assert float(s.coef) == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 100 / 1000), rel=1e-5)


# --------------------------------------------------------------------------- preferences

def test_dpo_family():
  c, r = jnp.array([-3.0, -2.0]), jnp.array([-4.0, -1.0])
  rc, rr = jnp.array([-3.5, -2.0]), jnp.array([-3.5, -2.0])
  h = (c - rc) - (r - rr)  # [1.0, -1.0]
  loss, diag = ops.dpo_loss(c, r, rc, rr, beta=0.1)
  np.testing.assert_allclose(loss, -jax.nn.log_sigmoid(0.1 * h), rtol=1e-6)
  assert float(diag["reward_accuracy"]) == 0.5
  eps = 0.1
  cdpo, _ = ops.dpo_loss(c, r, rc, rr, beta=0.1, label_smoothing=eps)
  np.testing.assert_allclose(cdpo, -(1 - eps) * jax.nn.log_sigmoid(0.1 * h)
                             - eps * jax.nn.log_sigmoid(-0.1 * h), rtol=1e-6)
  # Robust DPO is unbiased: averaging over label flips with rate eps gives the clean DPO loss.
  rob, _ = ops.dpo_loss(c, r, rc, rr, beta=0.1, kind="robust", label_smoothing=eps)
  rob_flipped, _ = ops.dpo_loss(r, c, rr, rc, beta=0.1, kind="robust", label_smoothing=eps)
  np.testing.assert_allclose((1 - eps) * rob + eps * rob_flipped, loss, rtol=1e-5)
  ipo, _ = ops.dpo_loss(c, r, rc, rr, beta=0.1, kind="ipo")
  np.testing.assert_allclose(ipo, (h - 5.0) ** 2, rtol=1e-6)
  hinge, _ = ops.dpo_loss(c, r, rc, rr, beta=0.1, kind="hinge")
  np.testing.assert_allclose(hinge, jnp.maximum(0, 1 - 0.1 * h), rtol=1e-6)
  check_grads(lambda x: ops.dpo_loss(x, r, rc, rr, beta=0.5)[0].sum(), (c,), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)


def test_reward_model_losses():
  w, l = jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0])
  bt, diag = ops.bradley_terry_loss(w, l)
  np.testing.assert_allclose(bt, -jax.nn.log_sigmoid(w - l), rtol=1e-6)
  assert float(diag["accuracy"]) == 0.5
  bt_m, _ = ops.bradley_terry_loss(w, l, margin=0.5)
  np.testing.assert_allclose(bt_m, -jax.nn.log_sigmoid(w - l - 0.5), rtol=1e-6)
  # Plackett-Luce with K = 2 is Bradley-Terry; invariant to how responses are stored.
  scores = jnp.stack([l, w], axis=1)  # Response 1 is the chosen one.
  pl, _ = ops.plackett_luce_loss(scores, jnp.array([[1, 0], [1, 0]]))
  np.testing.assert_allclose(pl, bt, rtol=1e-6)
  s3 = jnp.array([[0.3, 2.0, -1.0]])
  manual = -((2.0 - np.log(np.exp([2.0, 0.3, -1.0]).sum())) + (0.3 - np.log(np.exp([0.3, -1.0])
                                                                             .sum())))
  pl3, d3 = ops.plackett_luce_loss(s3, jnp.array([[1, 0, 2]]))
  assert float(pl3[0]) == pytest.approx(manual, rel=1e-5)
  assert float(d3["top1_accuracy"]) == 1.0
  # A shorter list: only the first two ranked positions count.
  pl_short, _ = ops.plackett_luce_loss(s3, jnp.array([[1, 0, 2]]),
                                       valid=jnp.array([[True, True, False]]))
  assert float(pl_short[0]) == pytest.approx(float(-jax.nn.log_sigmoid(2.0 - 0.3)), rel=1e-5)
  check_grads(lambda x: ops.plackett_luce_loss(x, jnp.array([[1, 0, 2]]))[0].sum(), (s3,),
              order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_pointwise_reward_losses():
  loss, _ = ops.pointwise_reward_loss(jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0]))
  assert loss.tolist() == [1.0, 0.0]
  loss, _ = ops.pointwise_reward_loss(jnp.zeros((2, 3)), jnp.ones((2, 3)))
  assert loss.tolist() == [3.0, 3.0]
  loss, _ = ops.pointwise_reward_loss(jnp.array([0.0]), jnp.array([1.0]), kind="binary")
  assert float(loss[0]) == pytest.approx(math.log(2))
  th = jnp.array([-1.0, 0.5, 2.0])  # 4 ordinal classes.
  probs = [float(jnp.exp(-ops.pointwise_reward_loss(jnp.array([0.3]), jnp.array([c]),
                                                    kind="ordinal", thresholds=th)[0][0]))
           for c in range(4)]
  assert sum(probs) == pytest.approx(1.0, abs=1e-6)
  assert probs[0] == pytest.approx(float(jax.nn.sigmoid(-1.3)), rel=1e-5)


def test_logits_helpers_and_sft_loss():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 11)) * 5
  targets = jax.random.randint(jax.random.PRNGKey(1), (2, 3), 0, 11)
  lp = ops.logprobs_from_logits(logits, targets, temperature=0.6)
  ref = jax.nn.log_softmax(logits / 0.6, -1)
  np.testing.assert_allclose(lp, jnp.take_along_axis(ref, targets[..., None], -1)[..., 0],
                             atol=1e-5)
  p = jnp.exp(ref)
  np.testing.assert_allclose(ops.entropy_from_logits(logits, temperature=0.6),
                             -jnp.sum(p * ref, -1), atol=1e-4)
  other = logits[::-1]
  kl = ops.full_kl_from_logits(logits, other)
  q = jax.nn.log_softmax(other, -1)
  p1 = jax.nn.log_softmax(logits, -1)
  np.testing.assert_allclose(kl, jnp.sum(jnp.exp(p1) * (p1 - q), -1), atol=1e-4)
  assert np.all(np.asarray(ops.full_kl_from_logits(logits, logits)) < 1e-5)
  per_token, diag = ops.sft_loss(lp, jnp.array([[1, 1, 0], [1, 0, 0]]))
  assert float(per_token[0, 2]) == 0.0
  assert float(diag["nll"]) == pytest.approx(-float(lp[0, 0] + lp[0, 1] + lp[1, 0]) / 3, rel=1e-5)


def test_docstring_examples():
  import jaxrl_llm.ops.advantages as a
  import jaxrl_llm.ops.basic as b
  import jaxrl_llm.ops.kl as k
  import jaxrl_llm.ops.policy as p

  for mod in (a, b, k, p):
    result = doctest.testmod(mod, extraglobs={"jnp": jnp})
    assert result.failed == 0 and result.attempted > 0, mod.__name__


# --------------------------------------------------------------------------- sharded

def test_everything_jits_and_matches_when_sharded_over_8_devices():
  mesh = make_mesh(MeshConfig(data=-1))
  key = jax.random.PRNGKey(11)
  b, t = 16, 6
  logp = -jnp.abs(jax.random.normal(key, (b, t)))
  old = logp + 0.05 * jax.random.normal(jax.random.fold_in(key, 1), (b, t))
  mask = (jnp.arange(t)[None] < jax.random.randint(jax.random.fold_in(key, 2), (b, 1), 0, t + 1)
          ).astype(jnp.float32)
  scores = jax.random.bernoulli(jax.random.fold_in(key, 3), 0.5, (b,)).astype(jnp.float32)
  groups = jnp.arange(b, dtype=jnp.int32) % 4
  values = jax.random.normal(jax.random.fold_in(key, 4), (b, t))

  def pipeline(logp, old, mask, scores, groups, values):
    adv, _ = ops.grpo_advantages(scores, groups, mask, num_groups=4)
    rl, _ = ops.rloo_advantages(scores, groups, mask, num_groups=4)
    gae, ret = ops.gae_advantages(ops.scores_to_token_rewards(scores, mask), values, mask,
                                  gamma=1.0, lam=0.95)
    pg, _ = ops.ppo_clip_loss(logp, old, adv + rl, mask, dual_clip=3.0)
    vl, _ = ops.value_loss(values, values, ret, mask)
    kl = ops.kl_penalty(logp, old, "k3", mask=mask)
    wa = ops.masked_whiten(gae, mask)
    loss = ops.aggregate_loss(pg + vl + 0.1 * kl, mask, "token-mean")
    return loss, wa

  f = jax.jit(pipeline)
  args = (logp, old, mask, scores, groups, values)
  ref = f(*args)
  row = lambda x: NamedSharding(mesh, P(("data", "fsdp"), *([None] * (x.ndim - 1))))
  sharded = [jax.device_put(x, row(x)) for x in args]
  assert sharded[0].sharding.spec == P(("data", "fsdp"), None)
  out = f(*sharded)
  np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
  np.testing.assert_allclose(out[1], ref[1], rtol=1e-5, atol=1e-6)
  grad = jax.jit(jax.grad(lambda lp: pipeline(lp, *sharded[1:])[0]))(sharded[0])
  np.testing.assert_allclose(grad, jax.grad(lambda lp: pipeline(lp, *args[1:])[0])(logp),
                             rtol=1e-4, atol=1e-7)


def test_entropy_is_stable_for_large_logits():
  """Shifting by the row maximum: no catastrophic cancellation at logit scale 30 or +1000."""
  base = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (16, 512), jnp.float32))

  def exact(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return -(p * np.log(np.maximum(p, 1e-300))).sum(-1)

  for logits in (base + 1000.0, base - 1000.0, 30.0 * base, 30.0 * base + 1000.0):
    h = ops.entropy_from_logits(jnp.asarray(logits, jnp.float32))
    assert bool(jnp.all(h >= 0.0)), float(h.min())
    np.testing.assert_allclose(h, exact(logits.astype(np.float32)), atol=2e-5)


def test_value_clip_fraction_ignores_rounding():
  """Values inside the clip band are never counted as clipped (float rounding of old + (v − old)
  used to be), and the loss is then the unclipped one."""
  old = jnp.asarray([[1e4 + 0.1, -3.3, 0.7, 123.456]], jnp.float32)
  ret = jnp.asarray([[0.0, 1.0, -1.0, 5.0]], jnp.float32)
  mask = jnp.ones_like(old, bool)
  v = old + jnp.asarray([[0.3, -0.2, 0.49, 0.0]], jnp.float32)
  loss, diag = ops.value_loss(v, old, ret, mask, clip=0.5)
  assert float(diag["vf_clipfrac"]) == 0.0
  np.testing.assert_allclose(loss, 0.5 * (v - ret) ** 2, rtol=1e-6)
  far = old + jnp.asarray([[2.0, -2.0, -2.0, 0.0]], jnp.float32)
  _, diag = ops.value_loss(far, old, ret, mask, clip=0.5)
  f, o, r = (np.asarray(x, np.float64) for x in (far, old, ret))
  want = np.mean((np.clip(f, o - 0.5, o + 0.5) - r) ** 2 > (f - r) ** 2)
  assert want == 0.25 and float(diag["vf_clipfrac"]) == pytest.approx(want)


def test_warmup_never_wastes_the_first_update():
  from jaxrl_llm.algorithms.common import warmup_cosine_schedule
  sched = warmup_cosine_schedule(2e-4, 10, 100, 0.1)
  lrs = [float(sched(s)) for s in range(101)]
  assert lrs[0] == pytest.approx(2e-5) and lrs[9] == pytest.approx(2e-4)
  assert all(b > a for a, b in zip(lrs[:9], lrs[1:10]))  # rising through the warm-up
  assert lrs[10] == pytest.approx(2e-4) and lrs[100] == pytest.approx(2e-5)
  assert float(warmup_cosine_schedule(1e-3, 0, 10, 1.0)(0)) == pytest.approx(1e-3)
