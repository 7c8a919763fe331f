"""Naive full-logits reference of the fused log-prob core. Tests and benchmarks only: it builds the
whole ``[N, V]`` logits (and autodiff keeps them, and their gradient, alive)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def transform_logits(raw: jax.Array, *, temperature: float, softcap: float | None) -> jax.Array:
  """``z = softcap·tanh(raw / softcap) / temperature`` (no cap when ``softcap`` is None), float32.

  The sampler applies exactly this transform before sampling, so trainer and sampler log-probs
  agree.
  """
  raw = raw.astype(jnp.float32)
  if softcap is not None:
    raw = softcap * jnp.tanh(raw / softcap)
  return raw / temperature


def reference_from_logits(logits, targets, *, ref_logits=None, temperature: float = 1.0,
                          softcap: float | None = None, valid=None):
  """(logp, entropy, lse, kl, max_logp) from full logits ``[N, V]``; ``kl`` is None without
  ``ref_logits``.

  Rows with ``valid == False`` give 0 everywhere.
  """
  z = transform_logits(logits, temperature=temperature, softcap=softcap)
  lse = jax.nn.logsumexp(z, axis=-1)
  logp_all = z - lse[:, None]
  p = jnp.exp(logp_all)
  logp = jnp.take_along_axis(logp_all, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  entropy = -jnp.sum(p * logp_all, axis=-1)
  top = jax.lax.stop_gradient(jnp.max(logp_all, axis=-1))
  kl = None
  if ref_logits is not None:
    zq = transform_logits(ref_logits, temperature=temperature, softcap=softcap)
    logq_all = jax.nn.log_softmax(zq, axis=-1)
    kl = jnp.sum(p * (logp_all - jax.lax.stop_gradient(logq_all)), axis=-1)
  if valid is not None:
    keep = valid.astype(bool)
    logp, entropy, lse, top = (jnp.where(keep, x, 0.0) for x in (logp, entropy, lse, top))
    kl = None if kl is None else jnp.where(keep, kl, 0.0)
  return logp, entropy, lse, kl, top


def reference_linear(h, w, targets, *, temperature: float = 1.0, softcap: float | None = None,
                     h_ref=None, w_ref=None, valid=None):
  """The same outputs from ``h [N, D]`` and ``w [D, V]`` via the full ``h @ w`` logits."""
  logits = jnp.dot(h, w, preferred_element_type=jnp.float32)
  ref_logits = None
  if h_ref is not None:
    ref_logits = jax.lax.stop_gradient(jnp.dot(h_ref, w_ref, preferred_element_type=jnp.float32))
  return reference_from_logits(logits, targets, ref_logits=ref_logits, temperature=temperature,
                               softcap=softcap, valid=valid)
