"""One pass over the LM head for token-local losses: value, log-probs, entropy *and* gradient.

For a loss that is a sum of per-token terms ``L = Σ_t ℓ_t(logp_t, H_t)`` (PPO-clip and its
variants, k1/k2/k3 KL to a fixed reference, an entropy bonus, SFT / DPO-style weighted sums), the
gradient of row ``t``'s logits is known as soon as that row's log-normaliser is:

  ∂L/∂z_tj = g_t·(1[j = y_t] − p_tj) − e_t·p_tj·(log p_tj + H_t),   g_t = ∂ℓ_t/∂logp_t,
                                                                    e_t = ∂ℓ_t/∂H_t,

(softmax calculus; the entropy term from ``∂H/∂z_j = −p_j (log p_j + H)``). So rows are processed
in chunks with the whole vocabulary per chunk: one matmul for the chunk's logits, the softmax
statistics, ``g`` and ``e`` from ``jax.vjp`` of the caller's per-token loss on the chunk, then
``dh = dz·Wᵀ`` and ``dW += hᵀ·dz`` -- three vocabulary-sized matmuls in all and no recompute (the
two-pass path of :mod:`.chunked` recomputes the logits in the backward: four). The custom VJP's
backward only scales the stored ``dh`` / ``dW`` by the incoming cotangent. Peak extra memory is a
few ``[block_rows, V]`` float32 tiles plus ``dW`` itself.

Sequence-coupled losses (GSPO's sequence ratio, Clip-Cov / KL-Cov's batch-wide token selection)
are not token-local and keep the two-pass path. Reference: :func:`linear_token_loss_reference`
(plain autodiff through full logits), compared in ``tests/test_kernels.py``.
"""

from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp

# loss_fn(logp [c], entropy [c], aux_chunk) -> per-token loss [c] (already weighted).
TokenLoss = Callable[[jax.Array, jax.Array, dict], jax.Array]


def _chunk_stats(h, w, y, temperature):
  z = jnp.dot(h, w, preferred_element_type=jnp.float32) / temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  logp_all = z - lse[:, None]
  p = jnp.exp(logp_all)
  logp = jnp.take_along_axis(logp_all, y[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(p * logp_all, axis=-1)
  return logp_all, p, logp, entropy


def _pad_rows(x, rows):
  pad = rows - x.shape[0]
  return x if not pad else jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _forward(loss_fn, temperature, block_rows, h, w, y, aux):
  n, d = h.shape
  c = min(block_rows, n)
  chunks = -(-n // c)
  rows = chunks * c
  valid = jnp.arange(rows) < n
  hs = _pad_rows(h, rows).reshape(chunks, c, d)
  ys = _pad_rows(y, rows).reshape(chunks, c)
  auxs = jax.tree.map(lambda a: _pad_rows(a, rows).reshape((chunks, c) + a.shape[1:]), aux)
  vs = valid.reshape(chunks, c)

  def body(dw, xs):
    h_c, y_c, aux_c, v_c = xs
    logp_all, p, logp, ent = _chunk_stats(h_c, w, y_c, temperature)

    def total(lp, en):
      return jnp.sum(jnp.where(v_c, loss_fn(lp, en, aux_c), 0.0))

    value, vjp = jax.vjp(total, logp, ent)
    g, e = vjp(jnp.ones((), value.dtype))
    # dz = g·(onehot − p) − e·p·(log p + H), written so that no one-hot tile is built: one fused
    # elementwise pass over the chunk's logits, then g added at the targets.
    dz = -p * (g[:, None] + e[:, None] * (logp_all + ent[:, None]))
    dz = dz.at[jnp.arange(dz.shape[0]), y_c].add(g) / temperature
    # Contract without transposing W or h in memory (a [D, V] copy per chunk otherwise).
    dh_c = jax.lax.dot_general(dz.astype(w.dtype), w, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
    dw = dw + jax.lax.dot_general(h_c.astype(jnp.float32), dz, (((0,), (0,)), ((), ())),
                                  preferred_element_type=jnp.float32)
    return dw, (value, logp, ent, dh_c)

  dw, (values, logp, ent, dh) = jax.lax.scan(
      body, jnp.zeros(w.shape, jnp.float32), (hs, ys, auxs, vs))
  return (jnp.sum(values), logp.reshape(rows)[:n], ent.reshape(rows)[:n],
          dh.reshape(rows, d)[:n], dw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _onepass(loss_fn, temperature, block_rows, h, w, y, aux):
  loss, logp, ent, _, _ = _forward(loss_fn, temperature, block_rows, h, w, y, aux)
  return loss, logp, ent


def _onepass_fwd(loss_fn, temperature, block_rows, h, w, y, aux):
  loss, logp, ent, dh, dw = _forward(loss_fn, temperature, block_rows, h, w, y, aux)
  return (loss, logp, ent), (dh, dw, h, w)


def _onepass_bwd(loss_fn, temperature, block_rows, res, cot):
  dh, dw, h, w = res
  g = cot[0]  # log-probs and entropy are outputs for metrics: no gradient flows through them
  return (g * dh).astype(h.dtype), (g * dw).astype(w.dtype), None, None


_onepass.defvjp(_onepass_fwd, _onepass_bwd)


def linear_token_loss(h: jax.Array, w: jax.Array, targets: jax.Array, loss_fn: TokenLoss,
                      aux: dict, *, temperature: float = 1.0, block_rows: int = 256):
  """``Σ_t loss_fn(logp_t, H_t, aux_t)`` over the rows of ``h @ w / temperature``, with its
  gradient w.r.t. ``h`` and ``w`` computed during the forward (module docstring).

  Args:
    h: ``[N, D]`` hidden states (float32 or bfloat16); w: ``[D, V]`` LM-head matrix.
    targets: int32 ``[N]`` token ids.
    loss_fn: per-token loss ``(logp [c], entropy [c], aux_chunk) -> [c]``, elementwise in the
      rows (a row's value may depend only on that row's inputs); weights and masks go in ``aux``.
      It must be a hashable callable (a module-level function or a ``functools.partial`` of one
      with hashable arguments) because it is a static argument.
    aux: dict of per-row arrays ``[N, ...]`` handed to ``loss_fn`` chunk by chunk (no gradient).
    block_rows: rows per chunk (peak extra memory ~ a few ``block_rows × V`` float32 tiles).
  Returns:
    ``(loss float32[], logp float32[N], entropy float32[N])``; only ``loss`` carries a gradient.
  """
  chex.assert_rank([h, w, targets], [2, 2, 1])
  chex.assert_equal(h.shape[0], targets.shape[0])
  chex.assert_equal(h.shape[1], w.shape[0])
  return _onepass(loss_fn, float(temperature), int(block_rows), h, w,
                  targets.astype(jnp.int32), aux)


def linear_token_loss_reference(h, w, targets, loss_fn: TokenLoss, aux: dict, *,
                                temperature: float = 1.0):
  """The plain-``jnp`` reference of :func:`linear_token_loss`: full ``[N, V]`` logits, gradient
  by autodiff. Same returns."""
  z = jnp.dot(h, w, preferred_element_type=jnp.float32) / temperature
  logp_all = jax.nn.log_softmax(z, axis=-1)
  logp = jnp.take_along_axis(logp_all, targets[:, None].astype(jnp.int32), axis=-1)[:, 0]
  ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  loss = jnp.sum(loss_fn(logp, ent, aux))
  return loss, jax.lax.stop_gradient(logp), jax.lax.stop_gradient(ent)


__all__ = ["TokenLoss", "linear_token_loss", "linear_token_loss_reference"]
