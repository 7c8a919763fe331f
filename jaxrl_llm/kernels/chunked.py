"""The plain-``jnp`` chunked path: ``lax.scan`` over vocabulary tiles (the fast CPU default).

Forward and backward are separate scans (the backward recomputes each tile's logits from the
residual ``h`` and ``W``), so nothing of size ``[N, V]`` is ever stored; peak extra memory is
``O(N · block_v)`` plus the ``[D, V]`` weight gradient itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrl_llm.kernels import tiles


def _slice(x, start, size):
  return jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)


def linear_forward(h, w, targets, h_ref, w_ref, *, temperature, softcap, block_v) -> tiles.Stats:
  """Partial statistics of ``z = transform(h @ w)`` over this ``w``'s columns.

  Args:
    h: ``[N, D]``; w: ``[D, V]``; targets: int32 ``[N]`` (column ids into this ``w``; out-of-range
      ids simply never match); h_ref/w_ref: optional reference pair (``w_ref`` ``[D, V]``).
  """
  vocab = w.shape[1]
  bv = min(block_v, vocab)
  with_ref = h_ref is not None
  tz = lambda raw: tiles.tile_z(raw, temperature=temperature, softcap=softcap)

  def body(stats, i):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    z = tz(jnp.dot(h, _slice(w, start, bv), preferred_element_type=jnp.float32))
    zq = tz(jnp.dot(h_ref, _slice(w_ref, start, bv), preferred_element_type=jnp.float32)
            ) if with_ref else None
    return tiles.update(stats, z, zq, fresh, cols, targets), None

  stats, _ = jax.lax.scan(body, tiles.init_stats(h.shape[0]),
                          jnp.arange(tiles.num_tiles(vocab, bv)))
  return stats


def linear_backward(h, w, targets, h_ref, w_ref, fin: tiles.Final, cot: tiles.Cotangents, *,
                    temperature, softcap, block_v):
  """(dh float32 ``[N, D]``, dw float32 ``[D, V]``) for this ``w``'s columns."""
  vocab = w.shape[1]
  bv = min(block_v, vocab)
  with_ref = h_ref is not None
  tz = lambda raw: tiles.tile_z(raw, temperature=temperature, softcap=softcap)
  hf = h.astype(jnp.float32)

  def body(carry, i):
    dh, dw = carry
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    w_tile = _slice(w, start, bv)
    raw = jnp.dot(h, w_tile, preferred_element_type=jnp.float32)
    zq = tz(jnp.dot(h_ref, _slice(w_ref, start, bv), preferred_element_type=jnp.float32)
            ) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, targets, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    dh = dh + jnp.dot(draw, w_tile.astype(jnp.float32).T)
    # Overlapped (non-fresh) columns of the last tile carry dz = 0, so adding is exact.
    dw = jax.lax.dynamic_update_slice_in_dim(dw, _slice(dw, start, bv) + jnp.dot(hf.T, draw),
                                             start, axis=1)
    return (dh, dw), None

  init = (jnp.zeros(h.shape, jnp.float32), jnp.zeros(w.shape, jnp.float32))
  (dh, dw), _ = jax.lax.scan(body, init, jnp.arange(tiles.num_tiles(vocab, bv)))
  return dh, dw


def logits_forward(logits, targets, ref_logits, *, temperature, softcap, block_v) -> tiles.Stats:
  """Partial statistics from precomputed logits ``[N, V]`` (row-wise fused log-softmax)."""
  vocab = logits.shape[1]
  bv = min(block_v, vocab)
  tz = lambda raw: tiles.tile_z(raw, temperature=temperature, softcap=softcap)

  def body(stats, i):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    z = tz(_slice(logits, start, bv))
    zq = tz(_slice(ref_logits, start, bv)) if ref_logits is not None else None
    return tiles.update(stats, z, zq, fresh, cols, targets), None

  stats, _ = jax.lax.scan(body, tiles.init_stats(logits.shape[0]),
                          jnp.arange(tiles.num_tiles(vocab, bv)))
  return stats


def logits_backward(logits, targets, ref_logits, fin, cot, *, temperature, softcap, block_v):
  """d logits float32 ``[N, V]``."""
  vocab = logits.shape[1]
  bv = min(block_v, vocab)
  tz = lambda raw: tiles.tile_z(raw, temperature=temperature, softcap=softcap)

  def body(dl, i):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    raw = _slice(logits, start, bv)
    zq = tz(_slice(ref_logits, start, bv)) if ref_logits is not None else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, targets, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    return jax.lax.dynamic_update_slice_in_dim(dl, _slice(dl, start, bv) + draw, start,
                                               axis=1), None

  dl, _ = jax.lax.scan(body, jnp.zeros(logits.shape, jnp.float32),
                       jnp.arange(tiles.num_tiles(vocab, bv)))
  return dl
