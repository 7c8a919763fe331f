"""Masked statistics, loss aggregation, log-probs/entropy from logits and the SFT loss.

Conventions (docs/algorithms.md section 0): token data is ``[B, T]`` with a ``mask`` (bool or 0/1 float).
Padded positions may hold garbage, even NaN or inf: every function here selects with ``jnp.where``
*before* doing arithmetic, so neither values nor gradients leak out of masked slots.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

AGGREGATION_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                     "seq-mean-token-sum-norm")


def _bool(mask: jax.Array) -> jax.Array:
  return mask.astype(bool) if mask.dtype != bool else mask


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """``Σ m·x``; masked-out entries may hold garbage, even NaN (they never leak).

  Args:
    x: float ``[...]``; mask: bool or 0/1, same shape.
  Returns:
    float32 sum over ``axis`` (all axes by default).
  """
  chex.assert_equal_shape([x, mask])
  return jnp.sum(jnp.where(_bool(mask), x, 0.0).astype(jnp.float32), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """``Σ m·x / Σ m``; 0 (not NaN, zero gradient) where nothing is unmasked."""
  chex.assert_equal_shape([x, mask])
  count = jnp.sum(_bool(mask).astype(jnp.float32), axis=axis)
  return masked_sum(x, mask, axis=axis) / jnp.maximum(count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, axis=None, *, unbiased: bool = True) -> jax.Array:
  """Masked variance ``Σ m·(x − μ)² / Σ m``, times ``n/(n − 1)`` when ``unbiased`` (default).

  With fewer than 2 unmasked entries the unbiased variance is undefined; 0 is returned.
  """
  chex.assert_equal_shape([x, mask])
  m = _bool(mask)
  xs = jnp.where(m, x, 0.0).astype(jnp.float32)
  n = jnp.sum(m.astype(jnp.float32), axis=axis, keepdims=True)
  mean = jnp.sum(xs, axis=axis, keepdims=True) / jnp.maximum(n, 1.0)
  centred = jnp.where(m, xs - mean, 0.0)
  ss = jnp.sum(centred * centred, axis=axis)
  n = jnp.sum(m.astype(jnp.float32), axis=axis)
  if unbiased:
    return jnp.where(n >= 2, ss / jnp.maximum(n - 1.0, 1.0), 0.0)
  return ss / jnp.maximum(n, 1.0)


def masked_whiten(x: jax.Array, mask: jax.Array, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """Whitening over all unmasked entries (docs/algorithms.md §1.5).

  ``μ = Σ m·x / Σ m``, ``σ²`` the Bessel-corrected masked variance,
  ``out = (x − μ) / sqrt(σ² + eps)``; with ``shift_mean=False`` μ is added back. Statistics are
  token-weighted (long rows weigh more). With fewer than 2 unmasked entries the spec's fallback is
  used: ``x − μ`` (or ``x`` when ``shift_mean=False``). Masked entries of the output are 0.

  Args:
    x: float ``[B, T]`` (any shape); mask: same shape.
  Returns:
    float32, same shape.
  """
  chex.assert_equal_shape([x, mask])
  m = _bool(mask)
  xs = jnp.where(m, x, 0.0).astype(jnp.float32)
  mean = masked_mean(xs, m)
  var = masked_var(xs, m, unbiased=True)
  n = jnp.sum(m.astype(jnp.float32))
  scale = jnp.where(n >= 2, jax.lax.rsqrt(var + eps), 1.0)
  out = (xs - mean) * scale
  if not shift_mean:
    out = out + mean
  return jnp.where(m, out, 0.0)


def _row_counts(mask):
  lengths = jnp.sum(_bool(mask).astype(jnp.float32), axis=-1)
  rows = jnp.sum((lengths > 0).astype(jnp.float32))
  return lengths, rows


def aggregation_weights(mask: jax.Array, mode: str, *, norm_constant: float | None = None
                        ) -> jax.Array:
  """Per-token weights ``w`` with ``aggregate_loss(ℓ, mask, mode) == Σ w·ℓ``.

  Computing ``w`` once over a whole optimizer-step batch and summing ``w·ℓ`` per micro-batch makes
  gradient accumulation exact (docs/algorithms.md §1.2, "normalizer scope"). Leading dimensions beyond
  ``[B, T]`` are folded into the rows (e.g. ``[A, b, T]`` micro-batches).

  Args:
    mask: bool or 0/1 ``[..., T]``.
    mode: one of ``AGGREGATION_MODES``.
    norm_constant: the constant C of ``seq-mean-token-sum-norm`` (required there, unused elsewhere).
  Returns:
    float32 weights, same shape, 0 where ``mask`` is 0.
  """
  if mode not in AGGREGATION_MODES:
    raise ValueError(f"unknown loss aggregation mode {mode!r}; known: {AGGREGATION_MODES}")
  m = _bool(mask).astype(jnp.float32)
  lengths, rows = _row_counts(mask)
  if mode == "token-mean":
    return m / jnp.maximum(jnp.sum(m), 1.0)
  if mode == "token-sum":
    return m
  if mode == "seq-mean-token-sum":
    return m / jnp.maximum(rows, 1.0)
  if mode == "seq-mean-token-mean":
    return m / jnp.maximum(lengths, 1.0)[..., None] / jnp.maximum(rows, 1.0)
  if norm_constant is None or not norm_constant > 0:
    raise ValueError("aggregation 'seq-mean-token-sum-norm' (Dr. GRPO) needs a positive constant "
                     "norm_constant C (e.g. the generation budget), never the batch's padded width; "
                     f"got {norm_constant!r}")
  return m / jnp.maximum(rows, 1.0) / norm_constant


def aggregate_loss(per_token: jax.Array, mask: jax.Array, mode: str, *,
                   norm_constant: float | None = None) -> jax.Array:
  """Reduces a per-token loss ``ℓ [B, T]`` to a scalar (docs/algorithms.md §1.2).

  With ``L_i = Σ_t m`` and ``N_eff`` the number of rows with ``L_i > 0`` (empty rows excluded):

  * ``token-mean``: ``Σ m·ℓ / Σ m`` (DAPO; verl default)
  * ``token-sum``: ``Σ m·ℓ``
  * ``seq-mean-token-sum``: ``(1/N_eff) Σ_i Σ_t m·ℓ``
  * ``seq-mean-token-mean``: ``(1/N_eff) Σ_i (Σ_t m·ℓ / L_i)`` (original GRPO)
  * ``seq-mean-token-sum-norm``: ``(1/N_eff) Σ_{i,t} m·ℓ / C`` with a constant C (Dr. GRPO)

  An all-masked batch gives 0 with zero gradient. Masked entries may hold NaN.

  >>> x = jnp.array([[1., 1., 1., jnp.nan], [2., 2., 0., 0.]])
  >>> m = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  >>> round(float(aggregate_loss(x, m, "token-mean")), 4)
  1.4
  >>> round(float(aggregate_loss(x, m, "seq-mean-token-sum-norm", norm_constant=4)), 4)
  0.875
  """
  chex.assert_equal_shape([per_token, mask])
  return masked_sum(per_token * aggregation_weights(mask, mode, norm_constant=norm_constant), mask)


def logprobs_from_logits(logits: jax.Array, targets: jax.Array, *, temperature: float = 1.0
                         ) -> jax.Array:
  """``log_softmax(logits / temperature)[..., target]`` in float32.

  The temperature divides the logits exactly as the sampler does, so on-policy ratios are 1.

  Args:
    logits: float ``[..., V]``; targets: int ``[...]``.
  Returns:
    float32 ``[...]``.
  """
  chex.assert_equal_shape_prefix([logits, targets], targets.ndim)
  z = logits.astype(jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked - lse


token_logprobs = logprobs_from_logits


def entropy_from_logits(logits: jax.Array, *, temperature: float = 1.0) -> jax.Array:
  """Entropy ``H = −Σ_v p_v log p_v`` of ``softmax(logits / temperature)``, float32 ``[...]``.

  Computed as ``lse − Σ p·z`` (no ``0·log 0`` NaNs for vanishing probabilities) on logits shifted
  by their row maximum, which leaves ``H`` unchanged but keeps both terms small: unshifted, large
  logits (scale 30, or a +1000 offset) cancel catastrophically in float32.
  """
  z = logits.astype(jnp.float32) / temperature
  z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  lse = jax.nn.logsumexp(z, axis=-1)
  p = jnp.exp(z - lse[..., None])
  return lse - jnp.sum(p * z, axis=-1)


def full_kl_from_logits(logits: jax.Array, ref_logits: jax.Array, *, temperature: float = 1.0
                        ) -> jax.Array:
  """Exact per-position ``KL(π‖π_ref) = Σ_v π(v)(log π(v) − log π_ref(v))``, float32 ``[...]``.

  Both logit sets are divided by the same ``temperature``. This is the ``full`` KL of
  docs/algorithms.md §1.3; it needs full-vocabulary logits (the fused kernels compute it without
  materialising them).
  """
  chex.assert_equal_shape([logits, ref_logits])
  lp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  lq = jax.nn.log_softmax(ref_logits.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def sft_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Next-token negative log-likelihood aligned with ``tokens``.

  ``nll[:, t] = −log p(tokens[:, t] | tokens[:, :t])`` for ``t ≥ 1``; ``nll[:, 0] = 0`` (nothing
  predicts the first token). Multiply by a loss mask marking answer tokens.

  Args:
    logits: float ``[B, T, V]`` from the model on ``tokens``; tokens: int32 ``[B, T]``.
  Returns:
    float32 ``[B, T]``.
  """
  chex.assert_rank([logits, tokens], [3, 2])
  lp = logprobs_from_logits(logits[:, :-1], tokens[:, 1:])
  return jnp.pad(-lp, ((0, 0), (1, 0)))


def sft_loss(logp: jax.Array, mask: jax.Array):
  """Masked token cross-entropy from log-probs: ``ℓ = −logp`` on masked-in tokens.

  Reduce with :func:`aggregate_loss` (RFT/SFT use ``token-mean``).

  Args:
    logp: float ``[B, T]`` log-probs of the target tokens; mask: ``[B, T]``.
  Returns:
    (per_token float32 ``[B, T]``, 0 off the mask; diagnostics ``{"nll": token-mean NLL}``).
  """
  chex.assert_rank([logp, mask], 2)
  chex.assert_equal_shape([logp, mask])
  m = _bool(mask)
  per_token = jnp.where(m, -logp.astype(jnp.float32), 0.0)
  return per_token, {"nll": masked_mean(per_token, m)}
