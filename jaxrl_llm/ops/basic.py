"""Masked reductions, token log-probs and the SFT loss."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """``sum(x * mask)`` where masked-out entries may hold garbage, even NaN (they never leak).

  Args:
    x: float array ``[...]``; mask: bool or 0/1 array of the same shape.
  """
  chex.assert_equal_shape([x, mask])
  return jnp.sum(jnp.where(mask.astype(bool), x, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """``sum(x * mask) / max(sum(mask), 1)`` (0 for an all-masked reduction, never NaN)."""
  chex.assert_equal_shape([x, mask])
  count = jnp.sum(mask.astype(jnp.float32), axis=axis)
  return masked_sum(x, mask, axis=axis) / jnp.maximum(count, 1.0)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """``log_softmax(logits)[..., target]`` in float32.

  Args:
    logits: ``float[B, T, V]``; targets: ``int32[B, T]``.
  Returns:
    ``float32[B, T]``.
  """
  chex.assert_rank([logits, targets], [3, 2])
  chex.assert_equal_shape_prefix([logits, targets], 2)
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return picked - lse


def sft_token_nll(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Next-token negative log-likelihood, aligned with ``tokens``.

  ``nll[:, t] = -log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``; ``nll[:, 0] = 0`` (nothing
  predicts the first token). Multiply by a loss mask marking answer tokens.

  Args:
    logits: ``float[B, T, V]`` from the model on ``tokens``; tokens: ``int32[B, T]``.
  Returns:
    ``float32[B, T]``.
  """
  chex.assert_rank([logits, tokens], [3, 2])
  lp = token_logprobs(logits[:, :-1], tokens[:, 1:])
  return jnp.pad(-lp, ((0, 0), (1, 0)))


def aggregation_weights(mask: jax.Array, mode: str) -> jax.Array:
  """Per-token weights ``w`` such that ``aggregate_loss(x, mask, mode) == sum(w * x)``.

  Computing the weights once over a whole batch and summing ``w * x`` per micro-batch makes
  gradient accumulation exact: the accumulated loss equals the full-batch loss.

  Modes: ``token-mean`` (``w = m / sum(m)``) and ``seq-mean-token-mean``
  (``w[i, t] = m[i, t] / (L_i * #rows with L_i > 0)``). Leading dimensions beyond ``[B, T]`` are
  flattened into B (e.g. ``[A, b, T]`` micro-batches).

  Args:
    mask: bool or 0/1 ``[..., T]``.
  Returns:
    ``float32`` weights of the same shape; 0 wherever ``mask`` is 0.
  """
  m = mask.astype(jnp.float32)
  if mode == "token-mean":
    return m / jnp.maximum(jnp.sum(m), 1.0)
  if mode == "seq-mean-token-mean":
    lengths = jnp.sum(m, axis=-1, keepdims=True)
    rows = jnp.sum((lengths > 0).astype(jnp.float32))
    return m / jnp.maximum(lengths, 1.0) / jnp.maximum(rows, 1.0)
  raise ValueError(f"unknown loss aggregation mode {mode!r}; "
                   "known: 'token-mean', 'seq-mean-token-mean'")


def aggregate_loss(per_token: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Reduces a per-token loss ``[..., T]`` to a scalar with the named aggregation ``mode``.

  ``token-mean``: every unmasked token weighs the same. ``seq-mean-token-mean``: mean over tokens
  within each row, then mean over rows that have any token. Masked entries may hold NaN.

  >>> x = jnp.array([[1., 1., 1., jnp.nan], [2., 2., 0., 0.]])
  >>> m = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  >>> round(float(aggregate_loss(x, m, "token-mean")), 4)
  1.4
  >>> round(float(aggregate_loss(x, m, "seq-mean-token-mean")), 4)
  1.5
  """
  chex.assert_equal_shape([per_token, mask])
  return masked_sum(per_token * aggregation_weights(mask, mode), mask)
