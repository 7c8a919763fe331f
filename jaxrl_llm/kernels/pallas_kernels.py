"""Pallas kernels of the fused log-prob core (forward statistics, ``dh``, ``dW``, logits-level).

Layout: the forward and ``dh`` kernels run one program per block of ``block_n`` rows and loop over
vocabulary tiles *inside* the kernel (``fori_loop``), so the grid stays small -- that is also what
keeps ``interpret=True`` affordable on CPU. The ``dW`` kernel runs one program per vocabulary tile
and loops over row blocks inside, so no two programs write the same output block (safe on GPUs,
whose programs run concurrently). All arithmetic is the shared tile maths of
:mod:`jaxrl_llm.kernels.tiles`, so the kernels and the chunked path agree by construction and a test
checks they agree numerically.

Status: verified in interpret mode on CPU only. The forward and ``dh`` kernels take the whole
``W`` as one block; on GPU (Triton) that is a pointer into global memory, but on TPU Mosaic places
blocks in VMEM, which bounds the vocabulary it can handle there until a manual-DMA variant exists.
Triton also needs power-of-two block shapes (``D`` included).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxrl_llm.kernels import tiles

_BWD_WIDTH = 9  # tiles.pack_backward layout.


def _pad_rows(x, n_pad, value=0):
  n = x.shape[0]
  if n == n_pad:
    return x
  pad = [(0, n_pad - n)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad, constant_values=value)


def _geometry(n, vocab, block_n, block_v):
  """(tile width, row block, padded row count)."""
  return min(block_v, vocab), block_n, -(-n // block_n) * block_n


def _row_spec(bn, width):
  return pl.BlockSpec((bn, width), lambda i: (i, 0))


def _whole(shape):
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _linear_fwd_kernel(*refs, with_ref, vocab, bv, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, hq_ref, wq_ref, out_ref = refs
  else:
    h_ref, w_ref, y_ref, out_ref = refs
  h = h_ref[...]
  y = y_ref[...][:, 0]
  hq = hq_ref[...] if with_ref else None
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(i, stats):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    z = tz(jnp.dot(h, w_ref[:, pl.ds(start, bv)], preferred_element_type=jnp.float32))
    zq = tz(jnp.dot(hq, wq_ref[:, pl.ds(start, bv)], preferred_element_type=jnp.float32)
            ) if with_ref else None
    return tiles.update(stats, z, zq, fresh, cols, y)

  stats = jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body, tiles.init_stats(h.shape[0]))
  out_ref[...] = tiles.pack(stats)


def linear_forward(h, w, targets, h_ref, w_ref, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Pallas version of :func:`jaxrl_llm.kernels.chunked.linear_forward`."""
  n, d = h.shape
  vocab = w.shape[1]
  bv, bn, n_pad = _geometry(n, vocab, block_n, block_v)
  with_ref = h_ref is not None
  args = [_pad_rows(h, n_pad), w, _pad_rows(targets.astype(jnp.int32)[:, None], n_pad, -1)]
  specs = [_row_spec(bn, d), _whole(w.shape), _row_spec(bn, 1)]
  if with_ref:
    args += [_pad_rows(h_ref, n_pad), w_ref]
    specs += [_row_spec(bn, h_ref.shape[1]), _whole(w_ref.shape)]
  kernel = functools.partial(_linear_fwd_kernel, with_ref=with_ref, vocab=vocab, bv=bv,
                             temperature=temperature, softcap=softcap)
  packed = pl.pallas_call(
      kernel, grid=(n_pad // bn,), in_specs=specs, out_specs=_row_spec(bn, tiles.NUM_STATS),
      out_shape=jax.ShapeDtypeStruct((n_pad, tiles.NUM_STATS), jnp.float32),
      interpret=interpret)(*args)
  return tiles.unpack(packed[:n])


def _linear_dh_kernel(*refs, with_ref, vocab, bv, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, b_ref, hq_ref, wq_ref, dh_ref = refs
  else:
    h_ref, w_ref, y_ref, b_ref, dh_ref = refs
  h = h_ref[...]
  y = y_ref[...][:, 0]
  fin, cot = tiles.unpack_backward(b_ref[...])
  hq = hq_ref[...] if with_ref else None
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(i, dh):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    w_tile = w_ref[:, pl.ds(start, bv)]
    raw = jnp.dot(h, w_tile, preferred_element_type=jnp.float32)
    zq = tz(jnp.dot(hq, wq_ref[:, pl.ds(start, bv)], preferred_element_type=jnp.float32)
            ) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    return dh + jnp.dot(draw, w_tile.astype(jnp.float32).T)

  dh_ref[...] = jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body,
                                  jnp.zeros(h.shape, jnp.float32))


def _linear_dw_kernel(*refs, with_ref, vocab, bv, bn, n_rows, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, b_ref, hq_ref, wq_ref, dw_ref = refs
  else:
    h_ref, w_ref, y_ref, b_ref, dw_ref = refs
  j = pl.program_id(0)
  cols = j * bv + jnp.arange(bv, dtype=jnp.int32)
  fresh = cols < vocab  # The last tile may reach past V: those columns are masked.
  w_tile = w_ref[...]
  wq_tile = wq_ref[...] if with_ref else None
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(r, dw):
    rows = pl.ds(r * bn, bn)
    h = h_ref[rows, :]
    y = y_ref[rows, :][:, 0]
    fin, cot = tiles.unpack_backward(b_ref[rows, :])
    raw = jnp.where(fresh[None, :], jnp.dot(h, w_tile, preferred_element_type=jnp.float32), 0.0)
    zq = None
    if with_ref:
      zq = tz(jnp.where(fresh[None, :], jnp.dot(hq_ref[rows, :], wq_tile,
                                                preferred_element_type=jnp.float32), 0.0))
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    return dw + jnp.dot(h.astype(jnp.float32).T, draw)

  dw_ref[...] = jax.lax.fori_loop(0, n_rows // bn, body, jnp.zeros(w_tile.shape, jnp.float32))


def linear_backward(h, w, targets, h_ref, w_ref, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Pallas version of :func:`jaxrl_llm.kernels.chunked.linear_backward` (float32 dh, dw)."""
  n, d = h.shape
  vocab = w.shape[1]
  bv, bn, n_pad = _geometry(n, vocab, block_n, block_v)
  with_ref = h_ref is not None
  hp = _pad_rows(h, n_pad)
  yp = _pad_rows(targets.astype(jnp.int32)[:, None], n_pad, -1)
  bp = _pad_rows(tiles.pack_backward(fin, cot), n_pad)  # Padded rows: zero cotangents.
  common = dict(with_ref=with_ref, vocab=vocab, bv=bv, temperature=temperature, softcap=softcap)

  args = [hp, w, yp, bp]
  specs = [_row_spec(bn, d), _whole(w.shape), _row_spec(bn, 1), _row_spec(bn, _BWD_WIDTH)]
  if with_ref:
    args += [_pad_rows(h_ref, n_pad), w_ref]
    specs += [_row_spec(bn, h_ref.shape[1]), _whole(w_ref.shape)]
  dh = pl.pallas_call(
      functools.partial(_linear_dh_kernel, **common), grid=(n_pad // bn,), in_specs=specs,
      out_specs=_row_spec(bn, d), out_shape=jax.ShapeDtypeStruct((n_pad, d), jnp.float32),
      interpret=interpret)(*args)[:n]

  n_tiles = tiles.num_tiles(vocab, bv)
  col_spec = lambda rows: pl.BlockSpec((rows, bv), lambda j: (0, j))
  args = [hp, w, yp, bp]
  specs = [_whole(hp.shape), col_spec(d), _whole(yp.shape), _whole(bp.shape)]
  if with_ref:
    hq = _pad_rows(h_ref, n_pad)
    args += [hq, w_ref]
    specs += [_whole(hq.shape), col_spec(w_ref.shape[0])]
  dw = pl.pallas_call(
      functools.partial(_linear_dw_kernel, bn=bn, n_rows=n_pad, **common), grid=(n_tiles,),
      in_specs=specs, out_specs=col_spec(d),
      out_shape=jax.ShapeDtypeStruct((d, n_tiles * bv), jnp.float32),
      interpret=interpret)(*args)[:, :vocab]
  return dh, dw


def _logits_fwd_kernel(*refs, with_ref, vocab, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, q_ref, out_ref = refs
  else:
    l_ref, y_ref, out_ref = refs
  y = y_ref[...][:, 0]
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(i, stats):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    z = tz(l_ref[:, pl.ds(start, bv)])
    zq = tz(q_ref[:, pl.ds(start, bv)]) if with_ref else None
    return tiles.update(stats, z, zq, fresh, cols, y)

  stats = jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body, tiles.init_stats(y.shape[0]))
  out_ref[...] = tiles.pack(stats)


def _logits_bwd_kernel(*refs, with_ref, vocab, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, b_ref, q_ref, dl_ref = refs
  else:
    l_ref, y_ref, b_ref, dl_ref = refs
  y = y_ref[...][:, 0]
  fin, cot = tiles.unpack_backward(b_ref[...])
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  dl_ref[...] = jnp.zeros(dl_ref.shape, dl_ref.dtype)

  def body(i, carry):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    raw = l_ref[:, pl.ds(start, bv)]
    zq = tz(q_ref[:, pl.ds(start, bv)]) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    dl_ref[:, pl.ds(start, bv)] = dl_ref[:, pl.ds(start, bv)] + draw
    return carry

  jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body, 0)


def logits_forward(logits, targets, ref_logits, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Pallas row-wise fused log-softmax statistics from precomputed logits ``[N, V]``."""
  n, vocab = logits.shape
  bv, bn, n_pad = _geometry(n, vocab, block_n, block_v)
  with_ref = ref_logits is not None
  args = [_pad_rows(logits, n_pad), _pad_rows(targets.astype(jnp.int32)[:, None], n_pad, -1)]
  specs = [_row_spec(bn, vocab), _row_spec(bn, 1)]
  if with_ref:
    args.append(_pad_rows(ref_logits, n_pad))
    specs.append(_row_spec(bn, vocab))
  packed = pl.pallas_call(
      functools.partial(_logits_fwd_kernel, with_ref=with_ref, vocab=vocab, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn,), in_specs=specs, out_specs=_row_spec(bn, tiles.NUM_STATS),
      out_shape=jax.ShapeDtypeStruct((n_pad, tiles.NUM_STATS), jnp.float32),
      interpret=interpret)(*args)
  return tiles.unpack(packed[:n])


def logits_backward(logits, targets, ref_logits, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Pallas gradient of the logits-level outputs w.r.t. ``logits`` (float32 ``[N, V]``)."""
  n, vocab = logits.shape
  bv, bn, n_pad = _geometry(n, vocab, block_n, block_v)
  with_ref = ref_logits is not None
  args = [_pad_rows(logits, n_pad), _pad_rows(targets.astype(jnp.int32)[:, None], n_pad, -1),
          _pad_rows(tiles.pack_backward(fin, cot), n_pad)]
  specs = [_row_spec(bn, vocab), _row_spec(bn, 1), _row_spec(bn, _BWD_WIDTH)]
  if with_ref:
    args.append(_pad_rows(ref_logits, n_pad))
    specs.append(_row_spec(bn, vocab))
  return pl.pallas_call(
      functools.partial(_logits_bwd_kernel, with_ref=with_ref, vocab=vocab, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn,), in_specs=specs, out_specs=_row_spec(bn, vocab),
      out_shape=jax.ShapeDtypeStruct((n_pad, vocab), jnp.float32),
      interpret=interpret)(*args)[:n]
