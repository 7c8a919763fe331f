"""Pallas kernels of the fused log-prob core, "loop" family (GPU / Triton layout; CPU interpret).

Layout: the forward and ``dh`` kernels run one program per block of ``block_n`` rows and loop over
vocabulary tiles *inside* the kernel (``fori_loop``), so the grid stays small -- that is also what
keeps ``interpret=True`` affordable on CPU. When there are too few row blocks to fill a GPU, both
also split the vocabulary into ranges over a second grid axis (:func:`vocab_splits`) and merge the
partial results exactly afterwards. The ``dW`` kernel runs one program per vocabulary tile
and loops over row blocks inside, so no two programs write the same output block (GPU programs run
concurrently, so a kernel may not rely on revisiting an output block in grid order). All
arithmetic is the shared tile maths of :mod:`jaxrl_llm.kernels.tiles`, so the kernels and the
chunked path agree by construction and a test checks they agree numerically.

Triton constraints, met by construction (``tests/test_kernels.py`` lowers these kernels for CUDA
through ``jax.export`` on a CPU-only machine, which runs the whole Pallas→Triton lowering):

  * every array a kernel touches has power-of-two dimensions: vocabulary tiles are the largest
    power of two ≤ ``block_v``; the contraction over ``D`` runs in chunks of ``dk`` (the largest
    power of two ≤ 128 dividing ``D``; ``D`` is zero-padded to a multiple of 16 first when it is
    not one, which is exact); ``dh``/``dW`` are read-modified-written chunk by chunk;
  * per-row statistics are written row by row into a transposed ``[K, N]`` layout (Triton's
    lowering has no general ``stack``).

Nothing is read or written out of bounds (Triton does not mask a block that reaches past its
array, so a partial last block would read, or write, the next row): every vocabulary tile is the
shifted tile of :func:`jaxrl_llm.kernels.tiles.tile_geometry` and rows are padded to ``block_n``;
the weight is not copied (except to pad a ``D`` that is not a multiple of 16).

Status: numerically verified in interpret mode and lowerable for CUDA (Triton) from CPU; not yet
run or timed on a GPU, so the dispatcher does not pick it by default (see ``core.DEFAULT_IMPL``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from jaxrl_llm.kernels import tiles

_BWD_ROWS = 16  # tiles.pack_backward(width=16), transposed: 8 rows used, padded to a power of 2.


def _triton_params():
  return pl_triton.CompilerParams(num_warps=4, num_stages=2)


def pow2_floor(x: int) -> int:
  """The largest power of two ``<= x`` (``x >= 1``)."""
  return 1 << (int(x).bit_length() - 1)


def d_chunk(d: int) -> int:
  """Contraction chunk over ``D``: the largest power of two ``<= 128`` that divides ``d``."""
  c = 128
  while d % c:
    c //= 2
  return c


def pad_rows(x, n_pad, value=0):
  """Pads axis 0 of ``x`` to ``n_pad`` with ``value`` (no copy when already that long)."""
  n = x.shape[0]
  if n == n_pad:
    return x
  pad = [(0, n_pad - n)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad, constant_values=value)


def _pad_d(h, w, hq, wq):
  """Zero-pads the contraction dimension to a multiple of 16 (Triton's minimum dot size)."""
  d = h.shape[1]
  d_pad = -(-d // 16) * 16
  if d_pad == d:
    return h, w, hq, wq
  pad_h = lambda x: None if x is None else jnp.pad(x, ((0, 0), (0, d_pad - x.shape[1])))
  pad_w = lambda x: None if x is None else pad_rows(x, d_pad)
  return pad_h(h), pad_w(w), pad_h(hq), pad_w(wq)


def _row_block(bn):
  return pl.BlockSpec((bn,), lambda i: (i,))


def _t_block(k, bn):
  """Block ``(k, bn)`` of a transposed ``[k, N]`` per-row array."""
  return pl.BlockSpec((k, bn), lambda i: (0, i))


def _whole(shape):
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _tile_raw(h_ref, rows, w_ref, w_cols, *, bn, bv):
  """``h[rows] @ w[:, w_cols]`` as float32 ``[bn, bv]``, contracting ``D`` in power-of-two chunks."""
  d = h_ref.shape[1]
  dk = d_chunk(d)

  def body(c, acc):
    k = pl.ds(pl.multiple_of(c * dk, dk), dk)
    return acc + jnp.dot(h_ref[rows, k], w_ref[k, w_cols], preferred_element_type=jnp.float32)

  return jax.lax.fori_loop(0, d // dk, body, jnp.zeros((bn, bv), jnp.float32))




def vocab_splits(row_blocks: int, n_tiles: int, target_programs: int = 256) -> tuple[int, int]:
  """(splits, tiles per split) for the forward and ``dh`` grids ``(row blocks, splits)``.

  With few row blocks (N = 4096 at ``block_n`` = 64 is 64 programs, half an H100's 132 SMs) the
  vocabulary is split into ranges of whole tiles, each program keeps partial statistics (or a
  partial ``dh``) of its range, and :func:`tiles.combine` merges them exactly afterwards (as for a
  ``tensor``-sharded head; partial ``dh`` are summed). Splits are made only while each keeps at least 8 tiles, and never leave a range empty.
  """
  want = max(1, -(-target_programs // row_blocks))
  splits = max(1, min(want, n_tiles // 8))
  per_split = -(-n_tiles // splits)
  return -(-n_tiles // per_split), per_split


def _split_specs(bn, h, w, h_ref, w_ref, *extra):
  """in_specs on the ``(row blocks, vocabulary ranges)`` grid: h, W, y, extra..., [h_ref, W_ref]."""
  rows = lambda width: pl.BlockSpec((bn, width), lambda i, s: (i, 0))
  whole = lambda shape: pl.BlockSpec(shape, lambda i, s: (0, 0))
  specs = [rows(h.shape[1]), whole(w.shape), pl.BlockSpec((bn,), lambda i, s: (i,)), *extra]
  if h_ref is not None:
    specs += [rows(h_ref.shape[1]), whole(w_ref.shape)]
  return specs


def _linear_fwd_kernel(*refs, with_ref, vocab, bn, bv, per_split, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, hq_ref, wq_ref, out_ref = refs
  else:
    h_ref, w_ref, y_ref, out_ref = refs
  y = y_ref[...]
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  all_rows = slice(None)
  first = pl.program_id(1) * per_split

  def body(t, stats):
    # Past the last tile (only in the last range): no fresh column, the statistics are unchanged.
    start, fresh, cols = tiles.tile_geometry(first + t, bv, vocab)
    tile = pl.ds(start, bv)
    z = tz(_tile_raw(h_ref, all_rows, w_ref, tile, bn=bn, bv=bv))
    zq = tz(_tile_raw(hq_ref, all_rows, wq_ref, tile, bn=bn, bv=bv)) if with_ref else None
    return tiles.update(stats, z, zq, fresh, cols, y)

  stats = jax.lax.fori_loop(0, per_split, body, tiles.init_stats(bn))
  tiles.write_rows(out_ref, tuple(stats) + (jnp.zeros_like(stats.m),))


def linear_forward(h, w, targets, h_ref, w_ref, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Pallas version of :func:`jaxrl_llm.kernels.chunked.linear_forward`."""
  n = h.shape[0]
  vocab = w.shape[1]
  bn, bv = block_n, pow2_floor(min(block_v, vocab))
  n_pad = -(-n // bn) * bn
  splits, per_split = vocab_splits(n_pad // bn, tiles.num_tiles(vocab, bv))
  with_ref = h_ref is not None
  h, w, h_ref, w_ref = _pad_d(h, w, h_ref, w_ref)
  args = [pad_rows(h, n_pad), w, pad_rows(targets.astype(jnp.int32), n_pad, -1)]
  if with_ref:
    args += [pad_rows(h_ref, n_pad), w_ref]
  specs = _split_specs(bn, h, w, h_ref, w_ref)
  kernel = functools.partial(_linear_fwd_kernel, with_ref=with_ref, vocab=vocab, bn=bn, bv=bv,
                             per_split=per_split, temperature=temperature, softcap=softcap)
  packed = pl.pallas_call(
      kernel, grid=(n_pad // bn, splits), in_specs=specs,
      out_specs=pl.BlockSpec((None, tiles.NUM_STATS, bn), lambda i, s: (s, 0, i)),
      out_shape=jax.ShapeDtypeStruct((splits, tiles.NUM_STATS, n_pad), jnp.float32),
      interpret=interpret, compiler_params=_triton_params())(*args)
  parts = tiles.Stats(*(packed[:, k, :n] for k in range(7)))
  return tiles.combine(parts, axis=0) if splits > 1 else tiles.Stats(*(x[0] for x in parts))


def _linear_dh_kernel(*refs, with_ref, vocab, bn, bv, per_split, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, b_ref, hq_ref, wq_ref, dh_ref = refs
  else:
    h_ref, w_ref, y_ref, b_ref, dh_ref = refs
  y = y_ref[...]
  fin, cot = tiles.read_backward_rows(b_ref)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  d = h_ref.shape[1]
  dk = d_chunk(d)
  all_rows = slice(None)

  def zero(c, carry):
    dh_ref[:, pl.ds(pl.multiple_of(c * dk, dk), dk)] = jnp.zeros((bn, dk), jnp.float32)
    return carry

  jax.lax.fori_loop(0, d // dk, zero, 0)
  first = pl.program_id(1) * per_split

  def body(t, carry):
    start, fresh, cols = tiles.tile_geometry(first + t, bv, vocab)  # draw = 0 past the end.
    tile = pl.ds(start, bv)
    raw = _tile_raw(h_ref, all_rows, w_ref, tile, bn=bn, bv=bv)
    zq = tz(_tile_raw(hq_ref, all_rows, wq_ref, tile, bn=bn, bv=bv)) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)

    def acc(c, carry):
      k = pl.ds(pl.multiple_of(c * dk, dk), dk)
      w_chunk = w_ref[k, tile].astype(jnp.float32)
      dh_ref[:, k] = dh_ref[:, k] + jnp.dot(draw, w_chunk.T)
      return carry

    return jax.lax.fori_loop(0, d // dk, acc, carry)

  jax.lax.fori_loop(0, per_split, body, 0)


def _linear_dw_kernel(*refs, with_ref, vocab, bv, bn, n_rows, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, b_ref, hq_ref, wq_ref, dw_ref = refs
  else:
    h_ref, w_ref, y_ref, b_ref, dw_ref = refs
  # The shifted tile of tiles.tile_geometry: never reads past V (Triton does not mask a block
  # that reaches past the array). Its overlapped columns get zero here; the caller keeps only
  # the fresh ones.
  start, fresh, cols = tiles.tile_geometry(pl.program_id(0), bv, vocab)
  tile = pl.ds(start, bv)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  d = h_ref.shape[1]
  dk = d_chunk(d)

  def zero(c, carry):
    dw_ref[pl.ds(pl.multiple_of(c * dk, dk), dk), :] = jnp.zeros((dk, bv), jnp.float32)
    return carry

  jax.lax.fori_loop(0, d // dk, zero, 0)

  def body(r, carry):
    rows = pl.ds(pl.multiple_of(r * bn, bn), bn)
    y = y_ref[rows]
    fin, cot = tiles.read_backward_rows(b_ref, rows)
    raw = _tile_raw(h_ref, rows, w_ref, tile, bn=bn, bv=bv)
    zq = tz(_tile_raw(hq_ref, rows, wq_ref, tile, bn=bn, bv=bv)) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)

    def acc(c, carry):
      k = pl.ds(pl.multiple_of(c * dk, dk), dk)
      h_chunk = h_ref[rows, k].astype(jnp.float32)
      dw_ref[k, :] = dw_ref[k, :] + jnp.dot(h_chunk.T, draw)
      return carry

    return jax.lax.fori_loop(0, d // dk, acc, carry)

  jax.lax.fori_loop(0, n_rows // bn, body, 0)


def linear_backward(h, w, targets, h_ref, w_ref, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Pallas version of :func:`jaxrl_llm.kernels.chunked.linear_backward` (float32 dh, dw)."""
  n, d = h.shape
  vocab = w.shape[1]
  bn, bv = block_n, pow2_floor(min(block_v, vocab))
  n_pad = -(-n // bn) * bn
  with_ref = h_ref is not None
  h, w, h_ref, w_ref = _pad_d(h, w, h_ref, w_ref)
  d_pad = h.shape[1]
  hp = pad_rows(h, n_pad)
  yp = pad_rows(targets.astype(jnp.int32), n_pad, -1)
  bp = pad_rows(tiles.pack_backward(fin, cot, width=_BWD_ROWS), n_pad).T  # [16, n_pad]
  common = dict(with_ref=with_ref, vocab=vocab, bv=bv, bn=bn, temperature=temperature,
                softcap=softcap)

  n_tiles = tiles.num_tiles(vocab, bv)
  splits, per_split = vocab_splits(n_pad // bn, n_tiles)
  args = [hp, w, yp, bp] + ([pad_rows(h_ref, n_pad), w_ref] if with_ref else [])
  specs = _split_specs(bn, h, w, h_ref, w_ref, pl.BlockSpec((_BWD_ROWS, bn), lambda i, s: (0, i)))
  dh_parts = pl.pallas_call(  # Partial dh of each vocabulary range, summed below.
      functools.partial(_linear_dh_kernel, per_split=per_split, **common),
      grid=(n_pad // bn, splits), in_specs=specs,
      out_specs=pl.BlockSpec((None, bn, d_pad), lambda i, s: (s, i, 0)),
      out_shape=jax.ShapeDtypeStruct((splits, n_pad, d_pad), jnp.float32),
      interpret=interpret, compiler_params=_triton_params())(*args)
  dh = jnp.sum(dh_parts, axis=0)[:n, :d]

  args = [hp, w, yp, bp] + ([pad_rows(h_ref, n_pad), w_ref] if with_ref else [])
  dw_tiles = pl.pallas_call(
      functools.partial(_linear_dw_kernel, n_rows=n_pad, **common), grid=(n_tiles,),
      in_specs=[_whole(a.shape) for a in args],
      out_specs=pl.BlockSpec((d_pad, bv), lambda j: (0, j)),
      out_shape=jax.ShapeDtypeStruct((d_pad, n_tiles * bv), jnp.float32),
      interpret=interpret, compiler_params=_triton_params())(*args)
  # Tile j holds columns [j·bv, (j+1)·bv) except the shifted last one, [V − bv, V), whose fresh
  # columns are its last V − (n_tiles − 1)·bv.
  head = (n_tiles - 1) * bv
  dw = jnp.concatenate([dw_tiles[:d, :head], dw_tiles[:d, n_tiles * bv - (vocab - head):]], axis=1)
  return dh, dw


def _logits_fwd_kernel(*refs, with_ref, vocab, bn, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, q_ref, out_ref = refs
  else:
    l_ref, y_ref, out_ref = refs
  y = y_ref[...]
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(i, stats):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    z = tz(l_ref[:, pl.ds(start, bv)])
    zq = tz(q_ref[:, pl.ds(start, bv)]) if with_ref else None
    return tiles.update(stats, z, zq, fresh, cols, y)

  stats = jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body, tiles.init_stats(bn))
  tiles.write_rows(out_ref, tuple(stats) + (jnp.zeros_like(stats.m),))


def _logits_bwd_kernel(*refs, with_ref, vocab, bn, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, b_ref, q_ref, dl_ref = refs
  else:
    l_ref, y_ref, b_ref, dl_ref = refs
  y = y_ref[...]
  fin, cot = tiles.read_backward_rows(b_ref)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)

  def body(i, carry):
    start, fresh, cols = tiles.tile_geometry(i, bv, vocab)
    tile = pl.ds(start, bv)
    raw = l_ref[:, tile]
    zq = tz(q_ref[:, tile]) if with_ref else None
    dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
    draw = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)
    # The shifted last tile overlaps the previous one; its non-fresh columns must keep what the
    # previous tile wrote (draw is 0 there, but the output is not zero-initialised).
    dl_ref[:, tile] = jnp.where(fresh[None, :], draw, dl_ref[:, tile])
    return carry

  jax.lax.fori_loop(0, tiles.num_tiles(vocab, bv), body, 0)


def _logits_specs(bn, vocab, with_ref, *extra):
  specs = [pl.BlockSpec((bn, vocab), lambda i: (i, 0)), _row_block(bn), *extra]
  if with_ref:
    specs.append(pl.BlockSpec((bn, vocab), lambda i: (i, 0)))
  return specs


def logits_forward(logits, targets, ref_logits, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Pallas row-wise fused log-softmax statistics from precomputed logits ``[N, V]``."""
  n, vocab = logits.shape
  bn, bv = block_n, pow2_floor(min(block_v, vocab))
  n_pad = -(-n // bn) * bn
  with_ref = ref_logits is not None
  args = [pad_rows(logits, n_pad), pad_rows(targets.astype(jnp.int32), n_pad, -1)]
  if with_ref:
    args.append(pad_rows(ref_logits, n_pad))
  packed = pl.pallas_call(
      functools.partial(_logits_fwd_kernel, with_ref=with_ref, vocab=vocab, bn=bn, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn,), in_specs=_logits_specs(bn, vocab, with_ref),
      out_specs=_t_block(tiles.NUM_STATS, bn),
      out_shape=jax.ShapeDtypeStruct((tiles.NUM_STATS, n_pad), jnp.float32),
      interpret=interpret, compiler_params=_triton_params())(*args)
  return tiles.unpack_t(packed[:, :n])


def logits_backward(logits, targets, ref_logits, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Pallas gradient of the logits-level outputs w.r.t. ``logits`` (float32 ``[N, V]``)."""
  n, vocab = logits.shape
  bn, bv = block_n, pow2_floor(min(block_v, vocab))
  n_pad = -(-n // bn) * bn
  with_ref = ref_logits is not None
  args = [pad_rows(logits, n_pad), pad_rows(targets.astype(jnp.int32), n_pad, -1),
          pad_rows(tiles.pack_backward(fin, cot, width=_BWD_ROWS), n_pad).T]
  if with_ref:
    args.append(pad_rows(ref_logits, n_pad))
  return pl.pallas_call(
      functools.partial(_logits_bwd_kernel, with_ref=with_ref, vocab=vocab, bn=bn, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn,), in_specs=_logits_specs(bn, vocab, with_ref, _t_block(_BWD_ROWS, bn)),
      out_specs=pl.BlockSpec((bn, vocab), lambda i: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n_pad, vocab), jnp.float32),
      interpret=interpret, compiler_params=_triton_params())(*args)[:n]
