"""Policy and value losses (docs/algorithms.md §1.1, 2, 6, 11, 12, 13, 21).

Every loss is per-token: ``(loss float32[B, T], diagnostics)`` with 0 off the mask; reduce with
:func:`jaxrl_llm.ops.aggregate_loss`. ``logp`` carries the gradient; ``old_logp``, advantages and
sampler log-probs are treated as constants (``stop_gradient`` is applied here). Log-ratios are
computed in float32 and clamped to [−20, 20] before ``exp``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from jaxrl_llm.ops.basic import _bool, masked_mean

sg = jax.lax.stop_gradient


def _prepare(logp, old_logp, advantages, mask):
  """Checks shapes; returns (bool mask, x with gradient, two stop-gradient constants), all float32
  and 0 off the mask (masked garbage never reaches arithmetic)."""
  chex.assert_rank([logp, old_logp, advantages, mask], 2)
  chex.assert_equal_shape([logp, old_logp, advantages, mask])
  m = _bool(mask)
  lp = jnp.where(m, logp, 0.0).astype(jnp.float32)
  old = sg(jnp.where(m, old_logp, 0.0).astype(jnp.float32))
  adv = sg(jnp.where(m, advantages, 0.0).astype(jnp.float32))
  return m, lp, old, adv


def _masked_max(x, m):
  return jnp.max(jnp.where(m, x, -jnp.inf))


def _masked_min(x, m):
  return jnp.min(jnp.where(m, x, jnp.inf))


def _ratio_diagnostics(ratio, lp, old, m):
  return {"ratio_mean": masked_mean(ratio, m), "ratio_max": _masked_max(ratio, m),
          "ratio_min": _masked_min(ratio, m), "approx_kl": masked_mean(old - lp, m)}


def ppo_clip_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                  clip_low: float = 0.2, clip_high: float | None = None,
                  dual_clip: float | None = None):
  """PPO clipped surrogate (Schulman et al., arXiv:1707.06347), per token.

  ``ρ = exp(clamp(logp − old_logp, −20, 20))``,
  ``ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))``; ``clip_high=None`` means symmetric, a larger
  ``clip_high`` is DAPO's clip-higher (0.28). Dual-clip (Ye et al., arXiv:1912.09729) with constant
  ``c > 1`` caps negative-advantage tokens: ``ℓ = min(ℓ, −c·A)`` where ``A < 0``.

  Args:
    logp: float ``[B, T]`` (carries the gradient); old_logp, advantages, mask: ``[B, T]``.
  Returns:
    (loss float32 ``[B, T]``, diagnostics: ``clipfrac``, ``clipfrac_lower`` (dual clip active),
    ``approx_kl`` (mean ``old_logp − logp``), ``ratio_mean/max/min``).

  >>> loss, _ = ppo_clip_loss(jnp.log(jnp.array([[5.0]])), jnp.zeros((1, 1)), -jnp.ones((1, 1)),
  ...                         jnp.ones((1, 1)), dual_clip=3.0)
  >>> float(loss[0, 0])
  3.0
  """
  if clip_low < 0 or (clip_high is not None and clip_high < 0):
    raise ValueError(f"clip ranges must be >= 0, got {clip_low}, {clip_high}")
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f"dual_clip constant c must be > 1, got {dual_clip}")
  clip_high = clip_low if clip_high is None else clip_high
  m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
  ratio = jnp.exp(jnp.clip(lp - old, -20.0, 20.0))
  l1 = -adv * ratio
  l2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  loss = jnp.maximum(l1, l2)
  diag = _ratio_diagnostics(ratio, lp, old, m)
  diag["clipfrac"] = masked_mean((l2 > l1).astype(jnp.float32), m)
  if dual_clip is not None:
    l3 = -adv * dual_clip
    lower = (adv < 0) & (loss > l3)
    loss = jnp.where(adv < 0, jnp.minimum(loss, l3), loss)
    diag["clipfrac_lower"] = masked_mean(lower.astype(jnp.float32), m)
  else:
    diag["clipfrac_lower"] = jnp.zeros((), jnp.float32)
  return jnp.where(m, loss, 0.0), diag


def gspo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              clip_low: float = 3e-4, clip_high: float = 4e-4):
  """GSPO, token form (Zheng et al., arXiv:2507.18071; docs/algorithms.md §6).

  Sequence ratio ``s_i = exp((1/L_i) Σ_t m·(logp − old_logp))`` (``max(L_i, 1)``), token ratio
  ``s_{i,t} = sg(s_i)·π_θ(y_t)/sg(π_θ(y_t))`` -- i.e. ``log s_{i,t} = sg(log s_i) + logp − sg(logp)``,
  clamped at 10 -- so its value is ``s_i`` and, with ``A_{i,t} = A_i``, its gradient is GSPO's.
  ``ℓ = max(−A·s_{i,t}, −A·clip(s_{i,t}, 1 − ε_low, 1 + ε_high))``. Aggregate with
  ``seq-mean-token-mean`` (as verl forces). Default clip ranges are the paper's (3e-4, 4e-4).

  Returns:
    (loss float32 ``[B, T]``, diagnostics incl. ``seq_ratio_mean`` and ``clipfrac``).
  """
  m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
  lengths = jnp.maximum(jnp.sum(m.astype(jnp.float32), axis=-1), 1.0)
  log_s = jnp.sum(jnp.where(m, lp - old, 0.0), axis=-1) / lengths  # [B]
  log_st = jnp.minimum(sg(log_s)[:, None] + lp - sg(lp), 10.0)
  ratio = jnp.exp(log_st)
  l1 = -adv * ratio
  l2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  loss = jnp.maximum(l1, l2)
  has = jnp.any(m, axis=-1)
  diag = _ratio_diagnostics(ratio, lp, old, m)
  diag.update({"clipfrac": masked_mean((l2 > l1).astype(jnp.float32), m),
               "seq_ratio_mean": masked_mean(jnp.exp(log_s), has)})
  return jnp.where(m, loss, 0.0), diag


def token_covariance(logp: jax.Array, advantages: jax.Array, mask: jax.Array) -> jax.Array:
  """``Cov_i = (logp_i − mean logp)·(A_i − mean A)`` over valid tokens, detached (docs/algorithms.md §11).

  Returns float32 ``[B, T]``, 0 off the mask.
  """
  m = _bool(mask)
  lp = sg(jnp.where(m, logp, 0.0).astype(jnp.float32))
  adv = sg(jnp.where(m, advantages, 0.0).astype(jnp.float32))
  cov = (lp - masked_mean(lp, m)) * (adv - masked_mean(adv, m))
  return jnp.where(m, cov, 0.0)


def covariance_stats(logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                     clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0,
                     kl_cov_ratio: float = 2e-3) -> dict[str, jax.Array]:
  """The batch's entropy-dynamics statistics (Cui et al., 2025, arXiv:2505.22617; docs §11).

  Args:
    logp: float ``[B, T]`` log π of the sampled tokens (detached); advantages: float ``[B, T]``;
    mask: bool ``[B, T]``, the N_tok valid tokens.
  Returns:
    float32 scalars: ``cov`` = mean_i Cov_i = the token-level covariance of (log π, A) (a
    positive value predicts falling entropy under policy gradient); ``cov_clip_band`` = the
    number of tokens with ``clip_cov_lb < Cov_i < clip_cov_ub`` (Clip-Cov's candidate band,
    before its exclusion of already-clipped tokens); ``cov_kl_topk`` = KL-Cov's
    ``k = max(⌊κ·N_tok⌋, 1)``; ``cov_kl_topk_share`` = the share of the positive covariance mass
    ``Σ max(Cov_i, 0)`` held by those k tokens (how concentrated the entropy-lowering push is).
  """
  m = _bool(mask)
  cov = token_covariance(logp, advantages, m)
  pool = jnp.sum(m.astype(jnp.float32))
  k = _selection_size(kl_cov_ratio, pool)
  top = _first_k(-cov, m, k)
  positive = jnp.sum(jnp.where(m, jnp.maximum(cov, 0.0), 0.0))
  top_mass = jnp.sum(jnp.where(top, jnp.maximum(cov, 0.0), 0.0))
  return {"cov": masked_mean(cov, m),
          "cov_clip_band": jnp.sum((m & (cov > clip_cov_lb) & (cov < clip_cov_ub)
                                    ).astype(jnp.float32)),
          "cov_kl_topk": jnp.where(pool > 0, k, 0.0),
          "cov_kl_topk_share": jnp.where(positive > 0, top_mass / jnp.maximum(positive, 1e-30),
                                         0.0)}


def _selection_size(ratio: float, pool: jax.Array) -> jax.Array:
  # floor(ratio·N) with N traced; the 1e-3 absorbs float32 rounding (2e-4 · 100000 is 19.99999).
  return jnp.maximum(jnp.floor(ratio * pool + 1e-3), 1.0)


def _first_k(order_key: jax.Array, eligible: jax.Array, k: jax.Array) -> jax.Array:
  """bool mask of the (up to) k eligible entries with the smallest ``order_key`` (stable)."""
  flat_key = jnp.where(eligible, order_key, jnp.inf).reshape(-1)
  order = jnp.argsort(flat_key, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
  return (rank.reshape(eligible.shape) < k) & eligible


def clip_cov_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                  key: jax.Array, clip_ratio: float = 2e-4, cov_lb: float = 1.0,
                  cov_ub: float = 5.0, clip_low: float = 0.2, clip_high: float | None = None):
  """Clip-Cov (Cui et al., arXiv:2505.22617; docs/algorithms.md §11).

  Candidates: valid tokens with ``cov_lb < Cov_i < cov_ub`` that PPO has not already clipped.
  ``k = max(⌊r·N_tok⌋, 1)`` of them (fewer if fewer exist) are drawn uniformly at random with
  ``key`` and their per-token loss ``max(ℓ1, ℓ2)`` is multiplied by 0 (gradient removed; they still
  count in a ``token-mean`` denominator). Same key ⇒ same selection.

  Args:
    key: PRNG key (fold in the step and micro-batch index for reproducible runs).
  Returns:
    (loss float32 ``[B, T]``, diagnostics incl. ``clip_cov_selected``, ``clipfrac``).
  """
  m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
  clip_high = clip_low if clip_high is None else clip_high
  ratio = jnp.exp(jnp.clip(lp - old, -20.0, 20.0))
  l1 = -adv * ratio
  l2 = -adv * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  cov = token_covariance(lp, adv, m)
  candidates = m & (cov > cov_lb) & (cov < cov_ub) & ~(l2 > l1)
  pool = jnp.sum(m.astype(jnp.float32))
  selected = _first_k(jax.random.uniform(key, m.shape), candidates,
                      _selection_size(clip_ratio, pool))
  loss = jnp.maximum(l1, l2) * jnp.where(selected, 0.0, 1.0)
  diag = _ratio_diagnostics(ratio, lp, old, m)
  diag.update({"clipfrac": masked_mean((l2 > l1).astype(jnp.float32), m),
               "clip_cov_selected": jnp.sum(selected.astype(jnp.float32)),
               "clip_cov_candidates": jnp.sum(candidates.astype(jnp.float32))})
  return jnp.where(m, loss, 0.0), diag


def kl_cov_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
                kl_cov_ratio: float = 2e-3, kl_coef: float = 1.0):
  """KL-Cov (Cui et al., arXiv:2505.22617; docs/algorithms.md §11). Deterministic.

  The top ``k = max(⌊κ·N_tok⌋, 1)`` valid tokens by ``Cov_i`` get ``−A·ρ + β·|logp − old_logp|``,
  all others ``−A·ρ``; no PPO clipping. Ties are broken by position. κ = 2e-3 (7B), 2e-4 (32B).
  """
  m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
  ratio = jnp.exp(jnp.clip(lp - old, -20.0, 20.0))
  cov = token_covariance(lp, adv, m)
  pool = jnp.sum(m.astype(jnp.float32))
  selected = _first_k(-cov, m, _selection_size(kl_cov_ratio, pool))
  diff = lp - old
  # |d| written as sign(sg(d))·d so its gradient at d = 0 is 0 (as torch's abs), not 1.
  loss = -adv * ratio + jnp.where(selected, kl_coef * jnp.sign(sg(diff)) * diff, 0.0)
  diag = _ratio_diagnostics(ratio, lp, old, m)
  diag["kl_cov_selected"] = jnp.sum(selected.astype(jnp.float32))
  return jnp.where(m, loss, 0.0), diag


def luffy_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
               is_offpolicy: jax.Array, *, gamma: float = 0.1, clip_low: float = 0.2,
               clip_high: float | None = None, clip_on_policy: bool = True):
  """LUFFY mixed-policy loss with policy shaping (Yan et al., arXiv:2504.14945; docs/algorithms.md §12).

  Off-policy (teacher) tokens: ``ℓ = −A·f(π_θ)``, ``f(p) = p/(p + γ)`` with ``p = exp(logp)`` and no
  clipping (the behaviour probability is taken as 1); its gradient weight is ``γp/(p + γ)²``.
  On-policy tokens: the PPO clipped surrogate (paper), or ``−A·ρ`` with ``clip_on_policy=False``
  (the released script's ``loss_remove_clip``).

  Args:
    is_offpolicy: bool ``[B, T]`` (prefix-guided rows) or ``[B]`` (whole traces).
  """
  m, lp, old, adv = _prepare(logp, old_logp, advantages, mask)
  off = is_offpolicy.astype(bool)
  if off.ndim == 1:
    off = jnp.broadcast_to(off[:, None], m.shape)
  chex.assert_equal_shape([off, m])
  p = jnp.exp(jnp.minimum(lp, 0.0))
  off_loss = -adv * p / (p + gamma)
  if clip_on_policy:
    on_loss, diag = ppo_clip_loss(lp, old, adv, m, clip_low=clip_low, clip_high=clip_high)
  else:
    ratio = jnp.exp(jnp.clip(lp - old, -20.0, 20.0))
    on_loss, diag = -adv * ratio, _ratio_diagnostics(ratio, lp, old, m)
  loss = jnp.where(off, off_loss, on_loss)
  diag = dict(diag, offpolicy_fraction=masked_mean(off.astype(jnp.float32), m),
              offpolicy_prob_mean=masked_mean(p, m & off))
  return jnp.where(m, loss, 0.0), diag


def srft_loss(logp: jax.Array, entropy: jax.Array, advantages: jax.Array, mask: jax.Array,
              is_demonstration: jax.Array, positive: jax.Array, *, clip_low: float = 0.2,
              clip_high: float | None = None, sft_coef: float = 0.5, rl_coef: float = 0.1,
              logp_floor: float = -10.0):
  """SRFT's single-stage loss (Fu et al., arXiv:2506.19767; docs/algorithms.md §13), per token.

  With ``H̄ = sg(mean entropy of the policy's own tokens)`` (the rows that are not
  demonstrations; every masked token when there are none):

  * teacher tokens (``is_demonstration``): the entropy-weighted SFT term
    ``w_SFT·(−logp)``, ``w_SFT = sft_coef·exp(−H̄)``, plus the off-policy clipped term
    ``−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)`` with ``r = π_θ(y*_t)`` (behaviour probability
    taken as 1, so ``r ≤ 1``);
  * the policy's own tokens: on a ``positive`` (correct) row the likelihood term
    ``w_RL·(−logp)``, ``w_RL = rl_coef·exp(+H̄)``; on a negative row the unlikelihood term
    ``+max(logp, logp_floor)`` (no gradient once a token's log-prob is below the floor: the
    unbounded ``+log π`` is capped, an implementation choice the paper leaves open).

  The sign in ``w_RL`` is ``exp(+H̄)``: the paper's rationale (the positive pull grows with
  entropy, which then lowers it) needs it; a summary that writes ``exp(−H̄)`` contradicts that
  rationale. Both weights are under ``stop_gradient``.

  Args:
    logp, entropy, advantages, mask: ``[B, T]``; is_demonstration: bool ``[B, T]`` (teacher
      tokens) or ``[B]``; positive: bool ``[B]`` (the row's reward says correct).
  Returns:
    (loss float32 ``[B, T]``, diagnostics: ``srft_w_sft``, ``srft_w_rl``, ``srft_entropy``,
    ``offpolicy_fraction``).
  """
  m, lp, _, adv = _prepare(logp, logp, advantages, mask)
  demo = is_demonstration.astype(bool)
  if demo.ndim == 1:
    demo = jnp.broadcast_to(demo[:, None], m.shape)
  chex.assert_equal_shape([demo, m])
  chex.assert_rank(positive, 1)
  own = m & ~demo
  ent = sg(jnp.where(m, entropy, 0.0).astype(jnp.float32))
  h_bar = jnp.where(jnp.any(own), masked_mean(ent, own), masked_mean(ent, m))
  w_sft = sft_coef * jnp.exp(-h_bar)
  w_rl = rl_coef * jnp.exp(h_bar)
  hi = clip_low if clip_high is None else clip_high
  r = jnp.exp(jnp.minimum(lp, 0.0))
  off_rl = -jnp.minimum(r * adv, jnp.clip(r, 1.0 - clip_low, 1.0 + hi) * adv)
  demo_loss = w_sft * (-lp) + off_rl
  pos = jnp.broadcast_to(positive.astype(bool)[:, None], m.shape)
  own_loss = jnp.where(pos, w_rl * (-lp), jnp.maximum(lp, logp_floor))
  loss = jnp.where(demo, demo_loss, own_loss)
  diag = {"srft_w_sft": w_sft, "srft_w_rl": w_rl, "srft_entropy": h_bar,
          "offpolicy_fraction": masked_mean(demo.astype(jnp.float32), m)}
  return jnp.where(m, loss, 0.0), diag


def truncated_is_weights(logp: jax.Array, sampler_logp: jax.Array, mask: jax.Array, *,
                         cap: float = 2.0):
  """Token-level truncated importance weights for rollout/trainer mismatch (docs/algorithms.md §21).

  ``w = min(exp(logp − sampler_logp), cap)``, stop-gradient, where ``logp`` is the trainer's
  log-prob of the rollout token (usually ``old_logp``) and ``sampler_logp`` the sampler's. Multiply
  ``w`` into the per-token policy loss.

  Returns:
    (weights float32 ``[B, T]`` (0 off the mask), diagnostics: ``is_weight_mean``,
    ``is_capped_fraction``, ``sampler_gap_k1`` (mean ``logp − sampler_logp``), ``sampler_gap_abs_max``).
  """
  chex.assert_rank([logp, sampler_logp, mask], 2)
  chex.assert_equal_shape([logp, sampler_logp, mask])
  if not cap >= 1.0:
    raise ValueError(f"cap must be >= 1, got {cap}")
  m = _bool(mask)
  gap = sg(jnp.where(m, logp - sampler_logp, 0.0).astype(jnp.float32))
  raw = jnp.exp(jnp.clip(gap, -20.0, 20.0))
  w = jnp.where(m, jnp.minimum(raw, cap), 0.0)
  return w, {"is_weight_mean": masked_mean(w, m),
             "is_capped_fraction": masked_mean((raw > cap).astype(jnp.float32), m),
             "sampler_gap_k1": masked_mean(gap, m),
             "sampler_gap_abs_max": jnp.max(jnp.abs(gap))}


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, *,
               clip: float | None = 0.5):
  """Clipped value loss (docs/algorithms.md §2), per token.

  ``V_clip = clip(V, V_old − ε_v, V_old + ε_v)``, ``ℓ = ½·max((V − R)², (V_clip − R)²)``;
  ``clip=None`` gives ``½(V − R)²``. Default ε_v = 0.5 (verl).

  Returns:
    (loss float32 ``[B, T]``, diagnostics: ``vf_clipfrac``, ``value_mean``, ``value_error``).
  """
  m, v, old, ret = _prepare(values, old_values, returns, mask)  # old and ret: constants.
  unclipped = (v - ret) ** 2
  if clip is None:
    loss, clipped_frac = 0.5 * unclipped, jnp.zeros((), jnp.float32)
  else:
    # clip(V, V_old − ε, V_old + ε) equals V bit for bit inside the band (``V_old + clip(V − V_old)``
    # does not, and its rounding would be counted as clipping); same value and gradient otherwise.
    v_clip = jnp.clip(v, old - clip, old + clip)
    clipped = (v_clip - ret) ** 2
    loss = 0.5 * jnp.maximum(unclipped, clipped)
    clipped_frac = masked_mean((clipped > unclipped).astype(jnp.float32), m)
  return jnp.where(m, loss, 0.0), {"vf_clipfrac": clipped_frac, "value_mean": masked_mean(v, m),
                                   "value_error": masked_mean(unclipped, m)}
