"""Pallas kernels of the fused log-prob core, "grid" family (TPU / Mosaic layout).

On a TPU the Pallas pipeline emitter streams blocks HBM → VMEM with double buffering, and grid
steps run *in order* on a core, so an output block whose index does not change between steps
stays resident in VMEM and can accumulate. These kernels use that instead of looping inside the
kernel: the grid is ``(row blocks, vocabulary tiles)`` (``parallel``, ``arbitrary``) and each step
sees one ``(D, block_v)`` tile of ``W`` -- the weight is never one VMEM block, so any vocabulary
fits (the "loop" family of :mod:`jaxrl_llm.kernels.pallas_kernels` takes ``W`` whole, which is a
pointer on a GPU but would have to fit VMEM on a TPU). The kernels:

::

  forward   grid (i rows, j tiles): running statistics live in the resident ``[8, block_n]``
            output block (transposed, so per-row vectors lie along lanes).
  dh        grid (i rows, j tiles): ``dh[i]`` accumulates ``draw · W_jᵀ`` in its resident block.
  dW        grid (j tiles, i rows): ``dW[:, j]`` accumulates ``h_iᵀ · draw`` in its resident block.
  logits    grid (i rows, j tiles): forward as above; the backward writes each ``dlogits`` block
            once (both axes parallel).

The last vocabulary tile may reach past ``V`` (no padding copy of ``W``): its extra columns are
masked out of every statistic and the weight tile is zeroed there before it is contracted, so
whatever the pipeline put in the out-of-range part of the block cannot leak in.

Mosaic block rules the wrappers check when not interpreting: ``block_v`` a multiple of 128 (or
the whole vocabulary) and ``block_n`` a multiple of 128 (or all rows). ``block_v`` is halved when
one grid step would not fit 3/4 of the chip's VMEM (:func:`vmem_estimate`, :func:`vmem_capacity`),
and that budget is what the compiler is allowed.

Status: numerically verified in interpret mode on CPU (``tests/test_kernels.py``) and compiled,
forward and backward, by libtpu's TPU compiler for v5e, v5p and v6e at the Qwen2.5 and Llama-3 head
shapes (``benchmarks/tpu_compile.py``; the suite, ``tests/test_tpu.py``, compiles the widest one;
:func:`jaxrl_llm.parallel.aot.compile_logprob_kernel`), so every tile the VMEM fit chooses is known
to fit. The TPU default (``core.DEFAULT_IMPL``). Not yet run or
timed on a TPU: its speed there is unmeasured (``model.logprob_impl=chunked`` is the fallback).
The chip is the local TPU, or the target of :func:`jaxrl_llm.parallel.tpu.compiling_for` when
compiling ahead of time elsewhere.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxrl_llm.kernels import tiles
from jaxrl_llm.kernels.pallas_kernels import pad_rows

_BWD_ROWS = 16  # tiles.pack_backward(width=16), transposed: 8 rows used, padded to 16 sublanes.
_MIB = 1 << 20


def vmem_estimate(*, block_n: int, block_v: int, d: int, itemsize: int, with_ref: bool) -> int:
  """Rough VMEM bytes of one grid step: double-buffered input blocks, float32 temporaries of one
  tile, the double-buffered float32 output block, and the float32 copy of the larger input block
  that the gradient kernels contract in."""
  inputs = block_n * d * itemsize + d * block_v * itemsize
  inputs *= 2 if with_ref else 1
  temps = 8 * block_n * block_v * 4  # z, zq, exp, masks, dz, ... of one tile.
  out = max(block_n * d, d * block_v) * 4
  return 2 * inputs + temps + 3 * out


def vmem_capacity() -> int:
  """VMEM bytes per TensorCore of the chip the kernels are built for: the target of
  :func:`jaxrl_llm.parallel.tpu.compiling_for` (ahead-of-time compilation for a slice), else the
  local TPU, else 64 MiB (the smallest of v5e / v5p / v6e) when lowering from elsewhere."""
  from jaxrl_llm.parallel import tpu

  return tpu.target_vmem_bytes() or 64 * _MIB


def _params(semantics, interpret):
  if interpret:
    return None
  return pltpu.CompilerParams(dimension_semantics=semantics,
                              vmem_limit_bytes=int(0.75 * vmem_capacity()))


def _geometry(n, vocab, block_n, block_v, interpret, estimate):
  """(row block, tile width, padded rows, number of tiles), checking Mosaic's block rules.

  When compiling for a TPU, a lane-aligned ``block_v`` is halved until one grid step's blocks and
  temporaries (``estimate(block_n, block_v)`` bytes) fit 3/4 of the chip's VMEM (16 MiB on v4,
  64 MiB on v5p, 128 MiB on v5e/v6e) or it reaches 128.
  """
  bv = min(block_v, vocab)
  n_pad = -(-n // block_n) * block_n
  bn = min(block_n, n_pad)
  if not interpret:
    if bv % 128 and bv != vocab:
      raise ValueError(f"TPU Pallas kernels need block_v a multiple of 128, got {block_v}")
    if bn % 128 and bn != n_pad:
      raise ValueError(f"TPU Pallas kernels need block_n a multiple of 128, got {block_n}")
    budget = 0.75 * vmem_capacity()
    while estimate(bn, bv) > budget and bv % 256 == 0:
      bv //= 2
  return bn, bv, n_pad, tiles.num_tiles(vocab, bv)


def _tile_cols(j, bv, vocab):
  cols = j * bv + jax.lax.broadcasted_iota(jnp.int32, (1, bv), 1)[0]
  return cols, cols < vocab


def _masked_w(w_ref, j, bv, vocab):
  # The mask is built at the tile's own 2-D shape: Mosaic cannot relayout a broadcast boolean
  # vector of this size (found by compiling for v5e; interpret mode accepts either form).
  w = w_ref[...]
  cols = j * bv + jax.lax.broadcasted_iota(jnp.int32, w.shape, 1)
  return jnp.where(cols < vocab, w, jnp.zeros_like(w))


def _read_stats(ref) -> tiles.Stats:
  return tiles.Stats(*(ref[k, :] for k in range(7)))




def _init_stats(out_ref, bn):
  @pl.when(pl.program_id(1) == 0)
  def _():
    init = tiles.init_stats(bn)
    tiles.write_rows(out_ref, tuple(init) + (jnp.zeros_like(init.m),))


def _linear_fwd_kernel(*refs, with_ref, vocab, bn, bv, temperature, softcap):
  if with_ref:
    h_ref, w_ref, y_ref, hq_ref, wq_ref, out_ref = refs
  else:
    h_ref, w_ref, y_ref, out_ref = refs
  _init_stats(out_ref, bn)
  cols, fresh = _tile_cols(pl.program_id(1), bv, vocab)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  z = tz(jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32))
  zq = tz(jnp.dot(hq_ref[...], wq_ref[...], preferred_element_type=jnp.float32)
          ) if with_ref else None
  stats = tiles.update(_read_stats(out_ref), z, zq, fresh, cols, y_ref[0, :])
  tiles.write_rows(out_ref, stats)


def _specs_rows_tiles(bn, bv, d, d_ref, with_ref, *extra):
  """in_specs on a (rows i, tiles j) grid: h, W, y, [extra...], [h_ref, W_ref]."""
  specs = [pl.BlockSpec((bn, d), lambda i, j: (i, 0)), pl.BlockSpec((d, bv), lambda i, j: (0, j)),
           pl.BlockSpec((1, bn), lambda i, j: (0, i)), *extra]
  if with_ref:
    specs += [pl.BlockSpec((bn, d_ref), lambda i, j: (i, 0)),
              pl.BlockSpec((d_ref, bv), lambda i, j: (0, j))]
  return specs


def _prepare(h, w, targets, h_ref, w_ref, block_n, block_v, interpret):
  """Geometry and padded operands shared by the forward and backward.

  Returns ``((bn, bv, n_pad, n_tiles), [h, W, y as [1, n_pad]], [h_ref, W_ref] or [])``.
  """
  d, with_ref = h.shape[1], h_ref is not None
  est = lambda bn, bv: vmem_estimate(block_n=bn, block_v=bv, d=d, itemsize=w.dtype.itemsize,
                                     with_ref=with_ref)
  geometry = _geometry(h.shape[0], w.shape[1], block_n, block_v, interpret, est)
  n_pad = geometry[2]
  base = [pad_rows(h, n_pad), w, pad_rows(targets.astype(jnp.int32), n_pad, -1)[None, :]]
  return geometry, base, [pad_rows(h_ref, n_pad), w_ref] if with_ref else []


def linear_forward(h, w, targets, h_ref, w_ref, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Grid-pipelined version of :func:`jaxrl_llm.kernels.chunked.linear_forward`."""
  (n, d), vocab, with_ref = h.shape, w.shape[1], h_ref is not None
  (bn, bv, n_pad, n_tiles), base, ref = _prepare(h, w, targets, h_ref, w_ref, block_n, block_v,
                                                 interpret)
  args = base + ref
  packed = pl.pallas_call(
      functools.partial(_linear_fwd_kernel, with_ref=with_ref, vocab=vocab, bn=bn, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn, n_tiles),
      in_specs=_specs_rows_tiles(bn, bv, d, h_ref.shape[1] if with_ref else 0, with_ref),
      out_specs=pl.BlockSpec((tiles.NUM_STATS, bn), lambda i, j: (0, i)),
      out_shape=jax.ShapeDtypeStruct((tiles.NUM_STATS, n_pad), jnp.float32),
      compiler_params=_params(("parallel", "arbitrary"), interpret),
      interpret=interpret)(*args)
  return tiles.unpack_t(packed[:, :n])


def _tile_draw(h, w, y, b_ref, hq_ref, wq_ref, fresh, cols, j, *, bv, vocab, with_ref,
               temperature, softcap):
  """(draw float32 ``[bn, bv]``) of one (row block, vocabulary tile) pair."""
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  raw = jnp.dot(h, w, preferred_element_type=jnp.float32)
  zq = None
  if with_ref:
    zq = tz(jnp.dot(hq_ref[...], _masked_w(wq_ref, j, bv, vocab), preferred_element_type=jnp.float32))
  fin, cot = tiles.read_backward_rows(b_ref)
  dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y, fin, cot)
  return tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)


def _linear_grad_kernel(*refs, wrt, with_ref, vocab, bv, temperature, softcap):
  """``dh`` (``wrt="h"``, grid (rows, tiles)) or ``dW`` (``wrt="w"``, grid (tiles, rows)).

  The output block is resident along the second grid axis and accumulates over it.
  """
  if with_ref:
    h_ref, w_ref, y_ref, b_ref, hq_ref, wq_ref, out_ref = refs
  else:
    (h_ref, w_ref, y_ref, b_ref, out_ref), hq_ref, wq_ref = refs, None, None

  @pl.when(pl.program_id(1) == 0)
  def _():
    out_ref[...] = jnp.zeros(out_ref.shape, out_ref.dtype)

  j = pl.program_id(1 if wrt == "h" else 0)
  cols, fresh = _tile_cols(j, bv, vocab)
  h = h_ref[...]
  w = _masked_w(w_ref, j, bv, vocab)
  draw = _tile_draw(h, w, y_ref[0, :], b_ref, hq_ref, wq_ref, fresh, cols, j, bv=bv,
                    vocab=vocab, with_ref=with_ref, temperature=temperature, softcap=softcap)
  if wrt == "h":
    out_ref[...] += jax.lax.dot_general(draw, w.astype(jnp.float32), (((1,), (1,)), ((), ())))
  else:
    out_ref[...] += jnp.dot(h.astype(jnp.float32).T, draw)


def linear_backward(h, w, targets, h_ref, w_ref, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Grid-pipelined version of :func:`jaxrl_llm.kernels.chunked.linear_backward`."""
  n, d = h.shape
  vocab, with_ref = w.shape[1], h_ref is not None
  (bn, bv, n_pad, n_tiles), base, ref = _prepare(h, w, targets, h_ref, w_ref, block_n, block_v,
                                                 interpret)
  d_ref = h_ref.shape[1] if with_ref else 0
  args = base + [pad_rows(tiles.pack_backward(fin, cot, width=_BWD_ROWS), n_pad).T] + ref
  common = dict(with_ref=with_ref, vocab=vocab, bv=bv, temperature=temperature, softcap=softcap)

  b_spec = pl.BlockSpec((_BWD_ROWS, bn), lambda i, j: (0, i))
  dh = pl.pallas_call(
      functools.partial(_linear_grad_kernel, wrt="h", **common), grid=(n_pad // bn, n_tiles),
      in_specs=_specs_rows_tiles(bn, bv, d, d_ref, with_ref, b_spec),
      out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
      out_shape=jax.ShapeDtypeStruct((n_pad, d), jnp.float32),
      compiler_params=_params(("parallel", "arbitrary"), interpret),
      interpret=interpret)(*args)[:n]

  # Same blocks on the transposed grid (j tiles, i rows): swap the index-map arguments.
  swap = lambda spec: pl.BlockSpec(spec.block_shape, lambda j, i, f=spec.index_map: f(i, j))
  dw = pl.pallas_call(
      functools.partial(_linear_grad_kernel, wrt="w", **common), grid=(n_tiles, n_pad // bn),
      in_specs=[swap(s) for s in _specs_rows_tiles(bn, bv, d, d_ref, with_ref, b_spec)],
      out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
      out_shape=jax.ShapeDtypeStruct((d, vocab), jnp.float32),
      compiler_params=_params(("parallel", "arbitrary"), interpret),
      interpret=interpret)(*args)
  return dh, dw


def _logits_fwd_kernel(*refs, with_ref, vocab, bn, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, q_ref, out_ref = refs
  else:
    l_ref, y_ref, out_ref = refs
  _init_stats(out_ref, bn)
  cols, fresh = _tile_cols(pl.program_id(1), bv, vocab)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  zq = tz(q_ref[...]) if with_ref else None
  stats = tiles.update(_read_stats(out_ref), tz(l_ref[...]), zq, fresh, cols, y_ref[0, :])
  tiles.write_rows(out_ref, stats)


def _logits_bwd_kernel(*refs, with_ref, vocab, bv, temperature, softcap):
  if with_ref:
    l_ref, y_ref, b_ref, q_ref, dl_ref = refs
  else:
    l_ref, y_ref, b_ref, dl_ref = refs
  cols, fresh = _tile_cols(pl.program_id(1), bv, vocab)
  tz = functools.partial(tiles.tile_z, temperature=temperature, softcap=softcap)
  raw = jnp.where(fresh[None, :], l_ref[...].astype(jnp.float32), 0.0)
  zq = tz(q_ref[...]) if with_ref else None
  fin, cot = tiles.read_backward_rows(b_ref)
  dz = tiles.tile_dz(tz(raw), zq, fresh, cols, y_ref[0, :], fin, cot)
  dl_ref[...] = tiles.dz_to_draw(dz, raw, temperature=temperature, softcap=softcap)


def _logits_estimate(bn, bv):
  """VMEM bytes of a logits-level step: up to three double-buffered tiles plus temporaries."""
  return 2 * 3 * bn * bv * 4 + 8 * bn * bv * 4


def _logits_specs(bn, bv, with_ref, *extra):
  tile = pl.BlockSpec((bn, bv), lambda i, j: (i, j))
  return [tile, pl.BlockSpec((1, bn), lambda i, j: (0, i)), *extra] + ([tile] if with_ref else [])


def logits_forward(logits, targets, ref_logits, *, temperature, softcap, block_n, block_v,
                   interpret) -> tiles.Stats:
  """Grid-pipelined row-wise fused log-softmax statistics from logits ``[N, V]``."""
  n, vocab = logits.shape
  with_ref = ref_logits is not None
  bn, bv, n_pad, n_tiles = _geometry(n, vocab, block_n, block_v, interpret, _logits_estimate)
  args = [pad_rows(logits, n_pad), pad_rows(targets.astype(jnp.int32), n_pad, -1)[None, :]]
  if with_ref:
    args.append(pad_rows(ref_logits, n_pad))
  packed = pl.pallas_call(
      functools.partial(_logits_fwd_kernel, with_ref=with_ref, vocab=vocab, bn=bn, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn, n_tiles), in_specs=_logits_specs(bn, bv, with_ref),
      out_specs=pl.BlockSpec((tiles.NUM_STATS, bn), lambda i, j: (0, i)),
      out_shape=jax.ShapeDtypeStruct((tiles.NUM_STATS, n_pad), jnp.float32),
      compiler_params=_params(("parallel", "arbitrary"), interpret),
      interpret=interpret)(*args)
  return tiles.unpack_t(packed[:, :n])


def logits_backward(logits, targets, ref_logits, fin, cot, *, temperature, softcap, block_n,
                    block_v, interpret):
  """Grid-pipelined gradient of the logits-level outputs (float32 ``[N, V]``)."""
  n, vocab = logits.shape
  with_ref = ref_logits is not None
  bn, bv, n_pad, n_tiles = _geometry(n, vocab, block_n, block_v, interpret, _logits_estimate)
  args = [pad_rows(logits, n_pad), pad_rows(targets.astype(jnp.int32), n_pad, -1)[None, :],
          pad_rows(tiles.pack_backward(fin, cot, width=_BWD_ROWS), n_pad).T]
  if with_ref:
    args.append(pad_rows(ref_logits, n_pad))
  return pl.pallas_call(
      functools.partial(_logits_bwd_kernel, with_ref=with_ref, vocab=vocab, bv=bv,
                        temperature=temperature, softcap=softcap),
      grid=(n_pad // bn, n_tiles),
      in_specs=_logits_specs(bn, bv, with_ref, pl.BlockSpec((_BWD_ROWS, bn), lambda i, j: (0, i))),
      out_specs=pl.BlockSpec((bn, bv), lambda i, j: (i, j)),
      out_shape=jax.ShapeDtypeStruct((n_pad, vocab), jnp.float32),
      compiler_params=_params(("parallel", "parallel"), interpret),
      interpret=interpret)(*args)[:n]
