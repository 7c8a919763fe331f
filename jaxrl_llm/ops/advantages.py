"""Advantage estimators (docs/algorithms.md sections 1.5, 1.6, 2-4, 7-10, 22.4).

Inputs: outcome ``scores float[B]`` (NaN = unscorable: excluded from group statistics, advantage
0), ``group_ids int32[B]`` in ``[0, num_groups)`` with ``num_groups`` static (rows need not be
contiguous), token data ``[B, T]`` with a ``mask``. Group statistics use segment reductions, never
Python loops over groups. Every estimator returns ``(advantages float32[B, T], diagnostics)``
(``gae_advantages`` returns ``(advantages, returns)``); advantages are 0 off the mask.

Group edge cases (1.6): a group whose scorable rewards are all equal gets A = 0 exactly (tested by
max == min, not by a float std, which rounding makes slightly non-zero); a group with one scorable
member follows ``singleton``: ``"zero"`` (A = 0, the default) or ``"raw"`` (A = the raw reward, i.e.
mean 0 and std 1). Diagnostics count both, plus unscorable and empty rows.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrl_llm.ops.basic import _bool, masked_mean, masked_whiten

SINGLETON_POLICIES = ("zero", "raw")


class GroupStats(NamedTuple):
  """Per-group statistics over scorable members, each ``float32[num_groups]``."""

  count: jax.Array
  total: jax.Array
  mean: jax.Array
  std: jax.Array  # Unbiased (ddof = 1); 0 for groups with fewer than 2 members.
  constant: jax.Array  # bool: every scorable member has the same score.


def group_stats(scores: jax.Array, group_ids: jax.Array, *, num_groups: int,
                valid: jax.Array | None = None) -> GroupStats:
  """Segment statistics of ``scores [B]`` by ``group_ids [B]``; ``valid`` (default: finite)."""
  chex.assert_rank([scores, group_ids], 1)
  chex.assert_equal_shape([scores, group_ids])
  if valid is None:
    valid = jnp.isfinite(scores)
  s = jnp.where(valid, scores, 0.0).astype(jnp.float32)
  v = valid.astype(jnp.float32)
  seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)
  count = seg(v)
  total = seg(s)
  mean = total / jnp.maximum(count, 1.0)
  dev = jnp.where(valid, s - mean[group_ids], 0.0)
  std = jnp.sqrt(seg(dev * dev) / jnp.maximum(count - 1.0, 1.0))
  hi = jax.ops.segment_max(jnp.where(valid, s, -jnp.inf), group_ids, num_segments=num_groups)
  lo = jax.ops.segment_min(jnp.where(valid, s, jnp.inf), group_ids, num_segments=num_groups)
  return GroupStats(count, total, mean, std, hi == lo)


def _check_group_inputs(scores, group_ids, mask, singleton):
  chex.assert_rank([scores, group_ids, mask], [1, 1, 2])
  chex.assert_equal_shape([scores, group_ids])
  chex.assert_equal_shape_prefix([scores, mask], 1)
  if singleton not in SINGLETON_POLICIES:
    raise ValueError(f"singleton must be one of {SINGLETON_POLICIES}, got {singleton!r}")


def _group_diagnostics(stats: GroupStats, valid, mask) -> dict[str, jax.Array]:
  present = stats.count > 0
  return {
      "singleton_groups": jnp.sum((stats.count == 1).astype(jnp.float32)),
      "zero_std_groups": jnp.sum((stats.constant & (stats.count >= 2) & present)
                                 .astype(jnp.float32)),
      "unscorable_rows": jnp.sum((~valid).astype(jnp.float32)),
      "empty_rows": jnp.sum((jnp.sum(_bool(mask), axis=-1) == 0).astype(jnp.float32)),
  }


def _broadcast(row_values, mask):
  return jnp.where(_bool(mask), row_values[:, None], 0.0).astype(jnp.float32)


def grpo_advantages(scores: jax.Array, group_ids: jax.Array, mask: jax.Array, *, num_groups: int,
                    normalize_std: bool = True, eps: float = 1e-6, singleton: str = "zero"):
  """GRPO outcome advantage (Shao et al., arXiv:2402.03300; docs/algorithms.md §3).

  ``A_i = (R_i − mean_g R) / (std_g R + eps)`` (unbiased std), broadcast over the row's tokens;
  with ``normalize_std=False`` it is Dr. GRPO's ``R_i − mean_g R``.

  Args:
    scores: float ``[B]`` (NaN = unscorable); group_ids: int32 ``[B]``; mask: ``[B, T]``.
  Returns:
    (advantages float32 ``[B, T]``, diagnostics).

  >>> a, _ = grpo_advantages(jnp.array([1., 0., 0., 1.]), jnp.zeros(4, jnp.int32),
  ...                        jnp.ones((4, 1)), num_groups=1)
  >>> [round(float(x), 4) for x in a[:, 0]]
  [0.866, -0.866, -0.866, 0.866]
  """
  _check_group_inputs(scores, group_ids, mask, singleton)
  valid = jnp.isfinite(scores)
  stats = group_stats(scores, group_ids, num_groups=num_groups, valid=valid)
  s = jnp.where(valid, scores, 0.0).astype(jnp.float32)
  centred = s - stats.mean[group_ids]
  adv = centred / (stats.std[group_ids] + eps) if normalize_std else centred
  count = stats.count[group_ids]
  adv = jnp.where(stats.constant[group_ids], 0.0, adv)
  adv = jnp.where(count == 1, s if singleton == "raw" else 0.0, adv)
  adv = jnp.where(valid, adv, 0.0)
  return _broadcast(adv, mask), _group_diagnostics(stats, valid, mask)


def drgrpo_advantages(scores: jax.Array, group_ids: jax.Array, mask: jax.Array, *,
                      num_groups: int, singleton: str = "zero"):
  """Dr. GRPO advantage ``A_i = R_i − mean_g R`` (Liu et al., arXiv:2503.20783; docs/algorithms.md §4).

  Pair it with ``aggregate_loss(..., "seq-mean-token-sum-norm", norm_constant=C)``.
  """
  return grpo_advantages(scores, group_ids, mask, num_groups=num_groups, normalize_std=False,
                         singleton=singleton)


def rloo_advantages(scores: jax.Array, group_ids: jax.Array, mask: jax.Array, *,
                    num_groups: int, singleton: str = "zero"):
  """REINFORCE leave-one-out (Ahmadian et al., arXiv:2402.14740; docs/algorithms.md §8).

  ``A_i = R_i − (Σ_{j∈g, j≠i} R_j) / (n_g − 1)`` over the scorable members, which equals
  ``n_g/(n_g − 1)·(R_i − mean_g R)``. For the paper's KL-regularised reward pass
  ``R_i − β·Σ_t k1`` as ``scores``.
  """
  _check_group_inputs(scores, group_ids, mask, singleton)
  valid = jnp.isfinite(scores)
  stats = group_stats(scores, group_ids, num_groups=num_groups, valid=valid)
  s = jnp.where(valid, scores, 0.0).astype(jnp.float32)
  count = stats.count[group_ids]
  adv = s - (stats.total[group_ids] - s) / jnp.maximum(count - 1.0, 1.0)
  adv = jnp.where(stats.constant[group_ids], 0.0, adv)
  adv = jnp.where(count == 1, s if singleton == "raw" else 0.0, adv)
  adv = jnp.where(valid, adv, 0.0)
  return _broadcast(adv, mask), _group_diagnostics(stats, valid, mask)


def gae_advantages(token_rewards: jax.Array, values: jax.Array, mask: jax.Array, *,
                   gamma: float = 1.0, lam: float = 1.0):
  """Generalised advantage estimation (Schulman et al., arXiv:1506.02438; docs/algorithms.md §2).

  Right to left with ``g = 0`` and ``V_next = 0`` after the last valid token (terminal):
  ``δ_t = r_t + γ·V_next − V_t``, ``g ← δ_t + γ·λ·g``, ``A_t = g``, ``V_next ← V_t`` -- only at valid
  tokens; masked tokens (padding, or tool tokens inside a response) carry ``g`` and ``V_next``
  through unchanged. ``returns = A + V`` is taken before any whitening (PPO whitens ``A`` with
  :func:`masked_whiten`). With γ = λ = 1, ``A_t = Σ_{s≥t} r_s − V_t``. Defaults are verl's.

  Args:
    token_rewards, values: float ``[B, T]``; mask: ``[B, T]``.
  Returns:
    (advantages float32 ``[B, T]``, returns float32 ``[B, T]``), both 0 off the mask.
  """
  chex.assert_rank([token_rewards, values, mask], 2)
  chex.assert_equal_shape([token_rewards, values, mask])
  m = _bool(mask)
  r = jnp.where(m, token_rewards, 0.0).astype(jnp.float32)
  v = jnp.where(m, values, 0.0).astype(jnp.float32)

  def step(carry, xs):
    g, v_next = carry
    r_t, v_t, m_t = xs
    g_new = r_t + gamma * v_next - v_t + gamma * lam * g
    g = jnp.where(m_t, g_new, g)
    v_next = jnp.where(m_t, v_t, v_next)
    return (g, v_next), g

  zeros = jnp.zeros(r.shape[:1], jnp.float32)
  _, adv = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
  adv = jnp.where(m, adv.T, 0.0)
  return adv, jnp.where(m, adv + v, 0.0)


def discounted_returns(token_rewards: jax.Array, mask: jax.Array, *, gamma: float = 1.0
                       ) -> jax.Array:
  """Reward-to-go ``G_t = Σ_{s≥t, valid} γ^{(#valid steps from t to s)} r_s``, float32 ``[B, T]``.

  Masked tokens are skipped (they neither add reward nor count as a step); 0 off the mask.
  """
  return gae_advantages(token_rewards, jnp.zeros_like(token_rewards, jnp.float32), mask,
                        gamma=gamma, lam=1.0)[0]


def last_token_index(mask: jax.Array):
  """(index int32 ``[B]`` of each row's last valid token, has_token bool ``[B]``).

  Rows without any valid token get index 0 and ``has_token=False`` -- never a wrap-around to −1.
  """
  m = _bool(mask)
  t = m.shape[-1]
  has = jnp.any(m, axis=-1)
  idx = jnp.where(has, t - 1 - jnp.argmax(m[:, ::-1], axis=-1), 0)
  return idx.astype(jnp.int32), has


def scores_to_token_rewards(scores: jax.Array, mask: jax.Array, *, kl: jax.Array | None = None,
                            kl_coef: float = 0.0) -> jax.Array:
  """Token-level rewards ``r = s − β·kl·m`` with ``s`` = ``R_i`` at the last valid token.

  An empty row (``L_i = 0``) receives no reward token (its score belongs in group statistics,
  not in any token). NaN scores place 0.

  Args:
    scores: float ``[B]``; mask: ``[B, T]``; kl: optional per-token KL estimate ``[B, T]``.
  Returns:
    float32 ``[B, T]``.
  """
  chex.assert_rank([scores, mask], [1, 2])
  m = _bool(mask)
  idx, has = last_token_index(m)
  s = jnp.where(jnp.isfinite(scores) & has, scores, 0.0).astype(jnp.float32)
  rewards = jax.nn.one_hot(idx, m.shape[-1], dtype=jnp.float32) * s[:, None]
  if kl is not None:
    chex.assert_equal_shape([kl, mask])
    rewards = rewards - kl_coef * jnp.where(m, kl, 0.0)
  return jnp.where(m, rewards, 0.0)


def reinforce_pp_advantages(token_rewards: jax.Array, mask: jax.Array, *, gamma: float = 1.0):
  """REINFORCE++ (Hu, arXiv:2501.03262; docs/algorithms.md §9.1).

  Discounted return-to-go of the token rewards (build them with :func:`scores_to_token_rewards`,
  KL in the reward), then whitened over every valid token of the batch: ``A = whiten(G, m)``.

  Returns:
    (advantages float32 ``[B, T]``, diagnostics with the pre-whitening ``returns_mean``).
  """
  chex.assert_rank([token_rewards, mask], 2)
  returns = discounted_returns(token_rewards, mask, gamma=gamma)
  adv = masked_whiten(returns, mask)
  return adv, {"returns_mean": masked_mean(returns, mask),
               "whiten_degenerate": (jnp.sum(_bool(mask)) < 2).astype(jnp.float32)}


def reinforce_pp_baseline_advantages(scores: jax.Array, group_ids: jax.Array, mask: jax.Array, *,
                                     num_groups: int, singleton: str = "zero"):
  """REINFORCE++-baseline (docs/algorithms.md §9.2): ``Ã_i = R_i − mean_g R`` broadcast to tokens, then
  whitened over every valid token of the batch (token-weighted, so an all-equal group ends with
  the small ``−μ/σ``, as in verl and OpenRLHF)."""
  centred, diag = drgrpo_advantages(scores, group_ids, mask, num_groups=num_groups,
                                    singleton=singleton)
  diag = dict(diag, whiten_degenerate=(jnp.sum(_bool(mask)) < 2).astype(jnp.float32))
  return masked_whiten(centred, mask), diag


def remax_advantages(scores: jax.Array, baseline_scores: jax.Array, mask: jax.Array):
  """ReMax (Li et al., arXiv:2310.10505; docs/algorithms.md §7): return-to-go minus the greedy reward.

  ``A[i, t] = Σ_{s≥t} r[i, s] − b_i`` on valid tokens (γ = 1, no whitening), where ``b_i`` is the
  reward of the greedy response to row i's prompt.

  Args:
    scores: outcome scores ``[B]`` (placed at the last token) or token rewards ``[B, T]`` (e.g.
      with an in-reward KL).
    baseline_scores: float ``[B]``, the greedy rollout's reward broadcast to the prompt's samples.
    mask: ``[B, T]``.
  """
  chex.assert_rank([baseline_scores, mask], [1, 2])
  token_rewards = scores if scores.ndim == 2 else scores_to_token_rewards(scores, mask)
  chex.assert_equal_shape([token_rewards, mask])
  rtg = discounted_returns(token_rewards, mask, gamma=1.0)
  adv = jnp.where(_bool(mask), rtg - baseline_scores.astype(jnp.float32)[:, None], 0.0)
  return adv, {"baseline_mean": jnp.mean(baseline_scores.astype(jnp.float32))}


def prime_advantages(process_rewards: jax.Array, outcome_scores: jax.Array, group_ids: jax.Array,
                     mask: jax.Array, *, num_groups: int, gamma: float = 1.0,
                     process_coef: float = 1.0, outcome_coef: float = 1.0, whiten: bool = False,
                     singleton: str = "zero", loo: str = "paper"):
  """PRIME advantage (Cui et al., arXiv:2502.01456; docs/algorithms.md §10), leave-one-out on both parts.

  Process part: ``A^φ_{i,t} = Σ_{s≥t} γ^{s−t} [r_φ(y_{i,s}) − (1/(K−1)) Σ_{j≠i} r̄_φ(y_j)]`` with
  ``r̄_φ(y_j)`` the per-token mean implicit reward of row j (rows with no tokens are left out of the
  baseline). Outcome part: ``A^o_i = r_o(y_i) − (1/(K−1)) Σ_{j≠i} r_o(y_j)``, placed at the last
  token and returned to every position. ``A = process_coef·A^φ + outcome_coef·A^o``, optionally
  whitened over the batch. The defaults follow the paper's formula; the verl recipe uses
  ``process_coef=5, outcome_coef=5, whiten=True, loo="recipe"``.

  ``loo="recipe"``: the verl recipe's process baseline ``r_t·K/(K−1) − Σ_j r̄_j/(K−1)`` (the sum
  over the whole group, row i included), which exceeds the paper's by ``(r_t − r̄_i)/(K−1)`` per
  token; the outcome part is the same under both. K counts the group's non-empty rows.

  Args:
    process_rewards: float ``[B, T]`` implicit rewards ``β·log(π_φ/π_ref)`` per token.
    outcome_scores: float ``[B]`` verifier rewards (NaN = unscorable).
  """
  _check_group_inputs(outcome_scores, group_ids, mask, singleton)
  chex.assert_equal_shape([process_rewards, mask])
  m = _bool(mask)
  nonempty = jnp.any(m, axis=-1)
  row_mean = masked_mean(process_rewards, m, axis=-1)
  proc_stats = group_stats(row_mean, group_ids, num_groups=num_groups, valid=nonempty)
  others = proc_stats.count[group_ids] - nonempty.astype(jnp.float32)
  base = (proc_stats.total[group_ids] - jnp.where(nonempty, row_mean, 0.0)) / jnp.maximum(
      others, 1.0)
  if singleton == "raw":
    base = jnp.where(others >= 1, base, 0.0)
  if loo not in ("paper", "recipe"):
    raise ValueError(f"loo must be 'paper' or 'recipe', got {loo!r}")
  proc = process_rewards - base[:, None]
  if loo == "recipe":
    proc = proc + (process_rewards - row_mean[:, None]) / jnp.maximum(others, 1.0)[:, None]
  proc = jnp.where(m, proc, 0.0)
  proc_adv = discounted_returns(proc, m, gamma=gamma)
  if singleton == "zero":
    proc_adv = jnp.where((others >= 1)[:, None], proc_adv, 0.0)
  loo, diag = rloo_advantages(outcome_scores, group_ids, mask, num_groups=num_groups,
                              singleton=singleton)
  outcome_adv = discounted_returns(scores_to_token_rewards(_row_value(loo, m), m),
                                   m, gamma=gamma)
  adv = process_coef * proc_adv + outcome_coef * outcome_adv
  if whiten:
    adv = masked_whiten(adv, m)
  return jnp.where(m, adv, 0.0), diag


def _row_value(per_token: jax.Array, mask: jax.Array) -> jax.Array:
  """The (row-constant) value of a broadcast ``[B, T]`` array; 0 for empty rows."""
  idx, has = last_token_index(mask)
  return jnp.where(has, jnp.take_along_axis(per_token, idx[:, None], axis=1)[:, 0], 0.0)


def pass_at_k(n, c, k: int) -> jax.Array:
  """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al., arXiv:2107.03374).

  ``pass@k = 1 − C(n − c, k) / C(n, k)``, and 1 when ``n − c < k``. Computed with ``lgamma`` so it
  is jit-able and vectorised over arrays of ``n`` and ``c``.

  >>> round(float(pass_at_k(10, 3, 5)), 4)
  0.9167
  """
  n = jnp.asarray(n, jnp.float32)
  c = jnp.asarray(c, jnp.float32)
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  lg = jax.lax.lgamma
  free = n - c
  log_ratio = (lg(free + 1.0) - lg(jnp.maximum(free - k, 0.0) + 1.0)
               - lg(n + 1.0) + lg(jnp.maximum(n - k, 0.0) + 1.0))
  return jnp.where(free < k, 1.0, 1.0 - jnp.exp(log_ratio))
