"""Tile maths shared by the chunked ``jnp`` path and the Pallas kernels.

The vocabulary is processed in tiles of ``block_v`` columns with an online (streaming) max and
sum, so only ``[rows, block_v]`` logits exist at a time. Tile ``i`` covers columns
``[i·block_v, (i+1)·block_v)``; the last tile of a vocabulary that ``block_v`` does not divide is
shifted left to end at ``V`` (so it never reads past the array) and its columns already covered by
tile ``i − 1`` are masked out ("fresh" columns only). No padding copy of the weight is ever made.

Per row the forward keeps (all float32)::

  m   running max of z            s   Σ exp(z − m)            pz  Σ exp(z − m)·(z − m)
  zy  z at the target column      mq, sq  the same max/sum for the reference logits zq
  pd  Σ exp(z − m)·(z − zq)

and :func:`finalize` turns them into ``lse = m + log s``, ``entropy = log s − pz/s`` (``pz`` is
kept relative to the running max, so large logits do not cancel catastrophically),
``logp = zy − lse`` and ``KL(π‖π_ref) = pd/s − lse + lse_q``. Partial statistics of disjoint
vocabulary shards combine exactly (:func:`combine`), which is how a ``tensor``-sharded LM head is
handled.

The backward recomputes each tile's logits and uses, with ``p = exp(z − lse)``:
  ∂logp/∂z = onehot(y) − p       ∂lse/∂z = p
  ∂H/∂z    = −p·(log p + H)      ∂KL/∂z  = p·(log p − log q − KL)     (policy side only)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrl_llm.kernels.reference import transform_logits

NUM_STATS = 8  # Packed width of per-row statistics (7 used, padded to 8).


class Stats(NamedTuple):
  m: jax.Array
  s: jax.Array
  pz: jax.Array
  zy: jax.Array
  mq: jax.Array
  sq: jax.Array
  pd: jax.Array


class Final(NamedTuple):
  """Per-row results of the forward (float32 ``[N]``); ``kl``/``lse_q`` are 0 without a reference."""

  logp: jax.Array
  entropy: jax.Array
  lse: jax.Array
  kl: jax.Array
  lse_q: jax.Array
  max_logp: jax.Array  # log-prob of the most likely token: ``logp == max_logp`` iff y is argmax.


def init_stats(n: int) -> Stats:
  neg = jnp.full((n,), -jnp.inf, jnp.float32)
  zero = jnp.zeros((n,), jnp.float32)
  return Stats(neg, zero, zero, zero, neg, zero, zero)


def num_tiles(vocab: int, block_v: int) -> int:
  return -(-vocab // block_v)


def tile_geometry(i, block_v: int, vocab: int):
  """(start column, fresh-column mask ``bool[block_v]``, column ids ``int32[block_v]``) of tile i."""
  start = jnp.minimum(i * block_v, vocab - block_v)
  cols = start + jnp.arange(block_v, dtype=jnp.int32)
  return start, cols >= i * block_v, cols


def tile_z(raw: jax.Array, *, temperature: float, softcap: float | None) -> jax.Array:
  return transform_logits(raw, temperature=temperature, softcap=softcap)


def update(stats: Stats, z, zq, fresh, cols, targets) -> Stats:
  """Folds one tile (``z``, optional ``zq``: ``[n, block_v]``) into the running statistics."""
  fresh = jnp.broadcast_to(fresh[None, :], z.shape)
  zm = jnp.where(fresh, z, -jnp.inf)
  m_new = jnp.maximum(stats.m, jnp.max(zm, axis=-1))
  scale = jnp.exp(stats.m - m_new)
  e = jnp.where(fresh, jnp.exp(zm - m_new[:, None]), 0.0)
  z0 = jnp.where(fresh, z, 0.0)
  s = stats.s * scale + jnp.sum(e, axis=-1)
  # Re-centre the old Σ e·(z − m_old) on m_new: add (m_old − m_new)·s_old (nothing if s_old = 0).
  shift = jnp.where(stats.s > 0, stats.m - m_new, 0.0)
  pz = (stats.pz + shift * stats.s) * scale + jnp.sum(e * (z0 - jnp.where(fresh, m_new[:, None],
                                                                          0.0)), axis=-1)
  hit = fresh & (cols[None, :] == targets[:, None])
  zy = stats.zy + jnp.sum(jnp.where(hit, z, 0.0), axis=-1)
  mq, sq, pd = stats.mq, stats.sq, stats.pd
  if zq is not None:
    zqm = jnp.where(fresh, zq, -jnp.inf)
    mq_new = jnp.maximum(mq, jnp.max(zqm, axis=-1))
    sq = sq * jnp.exp(mq - mq_new) + jnp.sum(
        jnp.where(fresh, jnp.exp(zqm - mq_new[:, None]), 0.0), axis=-1)
    mq = mq_new
    pd = pd * scale + jnp.sum(e * jnp.where(fresh, z - zq, 0.0), axis=-1)
  return Stats(m_new, s, pz, zy, mq, sq, pd)


def combine(stats: Stats, axis_name=None, *, axis: int | None = None) -> Stats:
  """Exact combination of partial statistics of disjoint vocabulary ranges.

  Over the devices of mesh axis ``axis_name`` (``pmax``/``psum``), or over array axis ``axis`` of
  stacked partial statistics (``[S, n]`` each). Every part must have seen at least one column.
  """
  if axis is None:
    vmax = lambda x: jax.lax.pmax(x, axis_name)
    vsum = lambda x: jax.lax.psum(x, axis_name)
    expand = lambda x: x
  else:
    vmax = lambda x: jnp.max(x, axis=axis)
    vsum = lambda x: jnp.sum(x, axis=axis)
    expand = lambda x: jnp.expand_dims(x, axis)
  m = vmax(stats.m)
  scale = jnp.exp(stats.m - expand(m))
  shift = jnp.where(stats.s > 0, stats.m - expand(m), 0.0)
  mq = vmax(stats.mq)
  return Stats(m=m, s=vsum(stats.s * scale), pz=vsum((stats.pz + shift * stats.s) * scale),
               zy=vsum(stats.zy), mq=mq, sq=vsum(stats.sq * jnp.exp(stats.mq - expand(mq))),
               pd=vsum(stats.pd * scale))


def finalize(stats: Stats, with_ref: bool) -> Final:
  log_s = jnp.log(stats.s)
  lse = stats.m + log_s
  if with_ref:
    lse_q = stats.mq + jnp.log(stats.sq)
    kl = stats.pd / stats.s - lse + lse_q
  else:
    lse_q = kl = jnp.zeros_like(lse)
  return Final(logp=stats.zy - lse, entropy=log_s - stats.pz / stats.s, lse=lse, kl=kl,
               lse_q=lse_q, max_logp=stats.m - lse)


def unpack_t(packed_t: jax.Array) -> Stats:
  """Stats from the kernels' transposed ``[NUM_STATS, n]`` output (rows in :class:`Stats` order)."""
  return Stats(*(packed_t[i] for i in range(7)))


class Cotangents(NamedTuple):
  """Per-row cotangents of (logp, entropy, lse, kl), float32 ``[n]``."""

  logp: jax.Array
  entropy: jax.Array
  lse: jax.Array
  kl: jax.Array


def tile_dz(z, zq, fresh, cols, targets, fin: Final, cot: Cotangents) -> jax.Array:
  """Cotangent of the tile's transformed logits ``z``: ``float32[n, block_v]`` (0 off fresh cols)."""
  fresh = jnp.broadcast_to(fresh[None, :], z.shape)
  logp_all = jnp.where(fresh, z - fin.lse[:, None], 0.0)
  p = jnp.where(fresh, jnp.exp(logp_all), 0.0)
  onehot = (fresh & (cols[None, :] == targets[:, None])).astype(jnp.float32)
  dz = cot.logp[:, None] * (onehot - p) + cot.lse[:, None] * p
  dz = dz - cot.entropy[:, None] * p * (logp_all + fin.entropy[:, None])
  if zq is not None:
    logq_all = jnp.where(fresh, zq - fin.lse_q[:, None], 0.0)
    dz = dz + cot.kl[:, None] * p * (logp_all - logq_all - fin.kl[:, None])
  return jnp.where(fresh, dz, 0.0)


def dz_to_draw(dz, raw, *, temperature: float, softcap: float | None):
  """Chain rule through ``z = softcap·tanh(raw/softcap) / temperature``."""
  d = dz / temperature
  if softcap is not None:
    t = jnp.tanh(raw.astype(jnp.float32) / softcap)
    d = d * (1.0 - t * t)
  return d


def pack_backward(fin: Final, cot: Cotangents, width: int = 9) -> jax.Array:
  """``[n, width]`` float32: lse, entropy, kl, lse_q, the four cotangents, then zero columns."""
  cols = [fin.lse, fin.entropy, fin.kl, fin.lse_q, cot.logp, cot.entropy, cot.lse, cot.kl]
  return jnp.stack(cols + [jnp.zeros_like(fin.lse)] * (width - len(cols)), axis=-1)


def unpack_backward_rows(c) -> tuple[Final, Cotangents]:
  """(Final, Cotangents) from the eight per-row arrays in :func:`pack_backward`'s order."""
  fin = Final(logp=jnp.zeros_like(c[0]), entropy=c[1], lse=c[0], kl=c[2], lse_q=c[3],
              max_logp=jnp.zeros_like(c[0]))
  return fin, Cotangents(logp=c[4], entropy=c[5], lse=c[6], kl=c[7])


def unpack_backward(packed: jax.Array) -> tuple[Final, Cotangents]:
  return unpack_backward_rows([packed[:, i] for i in range(8)])


def write_rows(ref, values, cols=slice(None)) -> None:
  """Kernel helper: ``ref[k, cols] = values[k]`` for each per-row array (transposed layout)."""
  for k, v in enumerate(values):
    ref[k, cols] = v


def read_backward_rows(ref, cols=slice(None)) -> tuple[Final, Cotangents]:
  """Kernel helper: (Final, Cotangents) from a transposed :func:`pack_backward` ref."""
  return unpack_backward_rows([ref[k, cols] for k in range(8)])
