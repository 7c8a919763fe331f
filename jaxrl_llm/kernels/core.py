"""One entry point over three paths, with a ``custom_vjp`` and optional mesh sharding.

``fused_linear_logprobs(h, w, targets)`` returns per token the log-prob of the target, the entropy,
the log-sum-exp and (with a reference ``(h_ref, w_ref)``) the full ``KL(π‖π_ref)`` of
``softmax(transform(h·W))``, where ``transform(x) = softcap·tanh(x/softcap) / temperature`` -- the
exact transform the sampler applies. ``[N, V]`` logits are never materialised: the vocabulary is
tiled (:mod:`jaxrl_llm.kernels.tiles`) and the backward recomputes tile logits.

Paths (``impl=``)::

  ``"chunked"``    plain ``jnp``, ``lax.scan`` over vocabulary tiles. Default on CPU and GPU.
  ``"pallas"``     the Pallas family for the backend: ``"pallas_tpu"`` on TPU, ``"pallas_gpu"``
                   elsewhere (``interpret=True`` on CPU).
  ``"pallas_gpu"`` loop-in-kernel family, Triton layout (:mod:`jaxrl_llm.kernels.pallas_kernels`).
  ``"pallas_tpu"`` grid-pipelined family, Mosaic layout (:mod:`jaxrl_llm.kernels.pallas_tpu`).
  ``"reference"``  naive full logits, for tests and benchmarks.

Both Pallas families are numerically verified in interpret mode and lowered for their platform
(CUDA/Triton, TPU/Mosaic) by the tests on a CPU-only machine. ``"pallas_tpu"`` is the TPU default:
its forward and backward compile with libtpu's real compiler for v5e, v5p and v6e at the Qwen2.5
and Llama-3 head shapes (the tests compile the widest, ``benchmarks/tpu_compile.py`` all; every
tile fits VMEM); it has not been timed on a TPU. The GPU
family has not been compiled on a GPU here, so ``"chunked"`` stays the GPU default.

Sharding: pass ``mesh=`` (axes ``data``, ``fsdp``, ``tensor``) to run under ``shard_map`` with rows
split over ``data``×``fsdp`` and the vocabulary of ``W`` split over ``tensor``. Each device computes
partial statistics of its vocabulary shard and they are combined exactly with ``pmax``/``psum``; in
the backward ``dh`` is summed over ``tensor`` and ``dW`` over ``data``×``fsdp``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxrl_llm.kernels import chunked, pallas_kernels, pallas_tpu, reference, tiles
from jaxrl_llm.kernels.blocks import BlockSizes

IMPLS = ("pallas", "pallas_gpu", "pallas_tpu", "chunked", "reference")
_PALLAS = {"pallas_gpu": pallas_kernels, "pallas_tpu": pallas_tpu}
# Backend -> default path. The Pallas kernels become the GPU/TPU default once compiled and timed
# on that hardware (benchmarks/logprob_core.py); until then the chunked path is the safe default.
DEFAULT_IMPL = {"cpu": "chunked", "gpu": "chunked", "tpu": "pallas_tpu"}
ROW_AXES = ("data", "fsdp")
VOCAB_AXIS = "tensor"


class LogProbs(NamedTuple):
  """Per-token outputs, float32 ``[...]`` (the leading shape of ``targets``).

  ``kl`` is None when no reference was given. ``max_logp`` is the log-prob of the most likely
  token (``logp == max_logp`` exactly when the target is the argmax; no gradient flows through it).
  Rows with ``valid == False`` are 0 everywhere and receive no gradient.
  """

  logp: jax.Array
  entropy: jax.Array
  lse: jax.Array
  kl: jax.Array | None
  max_logp: jax.Array


def default_impl(backend: str | None = None) -> str:
  """The path the dispatcher picks for ``backend`` (default: the backend being compiled for,
  :func:`jaxrl_llm.parallel.tpu.compile_backend`)."""
  from jaxrl_llm.parallel.tpu import compile_backend

  return DEFAULT_IMPL.get(backend or compile_backend(), "chunked")


@dataclasses.dataclass(frozen=True)
class _Static:
  temperature: float
  softcap: float | None
  impl: str
  block_n: int
  block_v: int
  interpret: bool
  mesh: Any  # jax.sharding.Mesh or None (hashable).


def _local_forward(st: _Static, h, w, y, hq, wq) -> tiles.Stats:
  kw = dict(temperature=st.temperature, softcap=st.softcap, block_v=st.block_v)
  if st.impl in _PALLAS:
    return _PALLAS[st.impl].linear_forward(h, w, y, hq, wq, block_n=st.block_n,
                                           interpret=st.interpret, **kw)
  return chunked.linear_forward(h, w, y, hq, wq, **kw)


def _local_backward(st: _Static, h, w, y, hq, wq, fin, cot):
  kw = dict(temperature=st.temperature, softcap=st.softcap, block_v=st.block_v)
  if st.impl in _PALLAS:
    return _PALLAS[st.impl].linear_backward(h, w, y, hq, wq, fin, cot, block_n=st.block_n,
                                            interpret=st.interpret, **kw)
  return chunked.linear_backward(h, w, y, hq, wq, fin, cot, **kw)


def _specs(with_ref, *extra):
  specs = [P(ROW_AXES, None), P(None, VOCAB_AXIS), P(ROW_AXES)]
  if with_ref:
    specs += [P(ROW_AXES, None), P(None, VOCAB_AXIS)]
  return tuple(specs) + extra


def _vocab_offset(w_local):
  return jax.lax.axis_index(VOCAB_AXIS) * w_local.shape[1]


def _forward(st: _Static, h, w, y, hq, wq) -> tiles.Final:
  with_ref = hq is not None
  if st.mesh is None:
    return tiles.finalize(_local_forward(st, h, w, y, hq, wq), with_ref)

  def body(h, w, y, *ref):
    hq, wq = ref if ref else (None, None)
    stats = _local_forward(st, h, w, y - _vocab_offset(w), hq, wq)
    return tiles.finalize(tiles.combine(stats, VOCAB_AXIS), with_ref)

  args = (h, w, y) + ((hq, wq) if with_ref else ())
  return jax.shard_map(body, mesh=st.mesh, in_specs=_specs(with_ref),
                       out_specs=tiles.Final(*(P(ROW_AXES),) * 6), check_vma=False)(*args)


def _backward(st: _Static, h, w, y, hq, wq, fin, cot):
  with_ref = hq is not None
  if st.mesh is None:
    return _local_backward(st, h, w, y, hq, wq, fin, cot)

  def body(h, w, y, packed, *ref):
    hq, wq = ref if ref else (None, None)
    fin, cot = tiles.unpack_backward(packed)
    dh, dw = _local_backward(st, h, w, y - _vocab_offset(w), hq, wq, fin, cot)
    return jax.lax.psum(dh, VOCAB_AXIS), jax.lax.psum(dw, ROW_AXES)

  specs = (P(ROW_AXES, None), P(None, VOCAB_AXIS), P(ROW_AXES), P(ROW_AXES, None))
  if with_ref:
    specs += (P(ROW_AXES, None), P(None, VOCAB_AXIS))
  args = (h, w, y, tiles.pack_backward(fin, cot)) + ((hq, wq) if with_ref else ())
  return jax.shard_map(body, mesh=st.mesh, in_specs=specs,
                       out_specs=(P(ROW_AXES, None), P(None, VOCAB_AXIS)), check_vma=False)(*args)


def _mask_rows(valid, *xs):
  return tuple(jnp.where(valid, x, 0.0) for x in xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_linear(st: _Static, h, w, y, valid, hq, wq):
  out, _ = _fused_linear_fwd(st, h, w, y, valid, hq, wq)
  return out


def _fused_linear_fwd(st, h, w, y, valid, hq, wq):
  fin = _forward(st, h, w, y, hq, wq)
  out = _mask_rows(valid, fin.logp, fin.entropy, fin.lse, fin.kl, fin.max_logp)
  return out, (h, w, y, valid, hq, wq, fin)


def _fused_linear_bwd(st, res, g):
  h, w, y, valid, hq, wq, fin = res
  g_logp, g_ent, g_lse, g_kl = _mask_rows(valid, *(x.astype(jnp.float32) for x in g[:4]))
  if hq is None:
    g_kl = jnp.zeros_like(g_kl)
  dh, dw = _backward(st, h, w, y, hq, wq, fin, tiles.Cotangents(g_logp, g_ent, g_lse, g_kl))
  zeros = lambda x: None if x is None else jnp.zeros_like(x)
  return dh.astype(h.dtype), dw.astype(w.dtype), None, None, zeros(hq), zeros(wq)


_fused_linear.defvjp(_fused_linear_fwd, _fused_linear_bwd)


def context_mesh():
  """The mesh of an enclosing ``jax.set_mesh`` (abstract; axes ``data``, ``fsdp``, ``tensor``),
  or None. The Pallas paths run under ``shard_map`` over it when no ``mesh=`` is given: XLA
  cannot partition a Mosaic / Triton kernel across devices itself."""
  m = jax.sharding.get_abstract_mesh()
  if m is None or m.empty or not {*ROW_AXES, VOCAB_AXIS} <= set(m.axis_names):
    return None
  return m


def _resolve(impl, block_sizes, interpret, temperature, lead):
  """Validates the shared options; returns (rows, impl, blocks, interpret)."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  from jaxrl_llm.parallel.tpu import compile_backend

  backend = compile_backend()
  if impl is None:
    impl = default_impl(backend)
    if impl == "pallas_tpu" and context_mesh() is None and jax.device_count() > 1:
      # A Mosaic kernel cannot be partitioned by XLA: over several devices it runs under
      # shard_map, which needs the mesh (jax.set_mesh). Without one, the jnp path.
      impl = "chunked"
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl == "pallas":
    impl = "pallas_tpu" if backend == "tpu" else "pallas_gpu"
  blocks = block_sizes or BlockSizes.default(backend)
  if not isinstance(blocks, BlockSizes):
    raise TypeError(f"block_sizes must be a BlockSizes, got {type(blocks).__name__}")
  if interpret is None:
    interpret = backend == "cpu"
  return math.prod(lead), impl, blocks, bool(interpret)


def fused_linear_logprobs(h: jax.Array, w: jax.Array, targets: jax.Array, *,
                          temperature: float = 1.0, softcap: float | None = None,
                          valid: jax.Array | None = None, h_ref: jax.Array | None = None,
                          w_ref: jax.Array | None = None, impl: str | None = None,
                          block_sizes: BlockSizes | None = None, interpret: bool | None = None,
                          mesh=None) -> LogProbs:
  """Fused LM-head log-probs, entropy, log-sum-exp and full KL, without ``[N, V]`` logits.

  Args:
    h: final hidden states ``[..., D]`` (float32 or bfloat16).
    w: LM-head weight ``[D, V]`` (logits = ``h @ w``).
    targets: int ``[...]`` token ids in ``[0, V)``.
    temperature: divides the (soft-capped) logits, exactly as the sampler does.
    softcap: Gemma-2 style logit soft-capping ``softcap·tanh(x/softcap)``, or None.
    valid: optional bool ``[...]``; invalid rows give 0 outputs and no gradient.
    h_ref, w_ref: optional reference policy ``[..., D_ref]``, ``[D_ref, V]``: adds
      ``KL(π‖π_ref) = Σ_v π(v)(log π(v) − log π_ref(v))``. The reference gets no gradient.
    impl: one of :data:`IMPLS` (default: :data:`DEFAULT_IMPL` for the backend).
    block_sizes: :class:`BlockSizes` (default: per backend).
    interpret: run Pallas in interpret mode (default: on CPU).
    mesh: shard rows over ``data``×``fsdp`` and the vocabulary over ``tensor`` with ``shard_map``.
  Returns:
    :class:`LogProbs` of float32 arrays shaped like ``targets``. Gradients flow to ``h`` and ``w``
    through ``logp``, ``entropy``, ``lse`` and ``kl``.
  """
  chex.assert_rank(w, 2)
  lead = targets.shape
  chex.assert_shape(h, lead + (w.shape[0],))
  with_ref = h_ref is not None
  if with_ref != (w_ref is not None):
    raise ValueError("give both h_ref and w_ref, or neither")
  if with_ref:
    chex.assert_rank(w_ref, 2)
    chex.assert_shape(h_ref, lead + (w_ref.shape[0],))
    if w_ref.shape[1] != w.shape[1]:
      raise ValueError(f"w_ref vocabulary {w_ref.shape[1]} != w vocabulary {w.shape[1]}")
  n, impl, blocks, interpret = _resolve(impl, block_sizes, interpret, temperature, lead)
  if mesh is None and impl in ("pallas_tpu", "pallas_gpu") and not interpret:
    mesh = context_mesh()
  hf = h.reshape(n, h.shape[-1])
  yf = targets.reshape(n).astype(jnp.int32)
  vf = jnp.ones((n,), bool) if valid is None else valid.reshape(n).astype(bool)
  hqf = h_ref.reshape(n, h_ref.shape[-1]) if with_ref else None
  if impl == "reference":
    logp, ent, lse, kl, top = reference.reference_linear(hf, w, yf, temperature=temperature,
                                                         softcap=softcap, h_ref=hqf, w_ref=w_ref,
                                                         valid=vf)
  else:
    if mesh is not None:
      rows = mesh.shape[ROW_AXES[0]] * mesh.shape[ROW_AXES[1]]
      if n % rows or w.shape[1] % mesh.shape[VOCAB_AXIS]:
        raise ValueError(f"sharded log-probs need N={n} divisible by data*fsdp={rows} and "
                         f"V={w.shape[1]} divisible by tensor={mesh.shape[VOCAB_AXIS]}")
    st = _Static(float(temperature), None if softcap is None else float(softcap), impl,
                 blocks.block_n, blocks.block_v, interpret, mesh)
    logp, ent, lse, kl, top = _fused_linear(st, hf, w, yf, vf, hqf, w_ref)
  shape = lambda x: x.reshape(lead)
  return LogProbs(shape(logp), shape(ent), shape(lse), shape(kl) if with_ref else None,
                  jax.lax.stop_gradient(shape(top)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_logits(st: _Static, logits, y, valid, ref_logits):
  out, _ = _fused_logits_fwd(st, logits, y, valid, ref_logits)
  return out


def _logits_local_forward(st, logits, y, ref_logits):
  kw = dict(temperature=st.temperature, softcap=st.softcap, block_v=st.block_v)
  if st.impl in _PALLAS:
    return _PALLAS[st.impl].logits_forward(logits, y, ref_logits, block_n=st.block_n,
                                           interpret=st.interpret, **kw)
  return chunked.logits_forward(logits, y, ref_logits, **kw)


def _fused_logits_fwd(st, logits, y, valid, ref_logits):
  fin = tiles.finalize(_logits_local_forward(st, logits, y, ref_logits), ref_logits is not None)
  out = _mask_rows(valid, fin.logp, fin.entropy, fin.lse, fin.kl, fin.max_logp)
  return out, (logits, y, valid, ref_logits, fin)


def _fused_logits_bwd(st, res, g):
  logits, y, valid, ref_logits, fin = res
  g_logp, g_ent, g_lse, g_kl = _mask_rows(valid, *(x.astype(jnp.float32) for x in g[:4]))
  if ref_logits is None:
    g_kl = jnp.zeros_like(g_kl)
  cot = tiles.Cotangents(g_logp, g_ent, g_lse, g_kl)
  kw = dict(temperature=st.temperature, softcap=st.softcap, block_v=st.block_v)
  if st.impl in _PALLAS:
    dl = _PALLAS[st.impl].logits_backward(logits, y, ref_logits, fin, cot, block_n=st.block_n,
                                          interpret=st.interpret, **kw)
  else:
    dl = chunked.logits_backward(logits, y, ref_logits, fin, cot, **kw)
  ref_grad = None if ref_logits is None else jnp.zeros_like(ref_logits)
  return dl.astype(logits.dtype), None, None, ref_grad


_fused_logits.defvjp(_fused_logits_fwd, _fused_logits_bwd)


def fused_logits_logprobs(logits: jax.Array, targets: jax.Array, *,
                          ref_logits: jax.Array | None = None, temperature: float = 1.0,
                          softcap: float | None = None, valid: jax.Array | None = None,
                          impl: str | None = None, block_sizes: BlockSizes | None = None,
                          interpret: bool | None = None) -> LogProbs:
  """The same outputs as :func:`fused_linear_logprobs` from precomputed logits ``[..., V]``.

  A row-wise fused log-softmax / gather / entropy / KL: no ``[N, V]`` temporaries beyond the
  inputs (and the ``[N, V]`` logits gradient in the backward).
  """
  lead = targets.shape
  chex.assert_shape(logits, lead + (logits.shape[-1],))
  if ref_logits is not None:
    chex.assert_equal_shape([logits, ref_logits])
  n, impl, blocks, interpret = _resolve(impl, block_sizes, interpret, temperature, lead)
  v = logits.shape[-1]
  lf = logits.reshape(n, v)
  yf = targets.reshape(n).astype(jnp.int32)
  vf = jnp.ones((n,), bool) if valid is None else valid.reshape(n).astype(bool)
  qf = None if ref_logits is None else ref_logits.reshape(n, v)
  if impl == "reference":
    logp, ent, lse, kl, top = reference.reference_from_logits(
        lf, yf, ref_logits=None if qf is None else jax.lax.stop_gradient(qf),
        temperature=temperature, softcap=softcap, valid=vf)
  else:
    st = _Static(float(temperature), None if softcap is None else float(softcap), impl,
                 blocks.block_n, blocks.block_v, interpret, None)
    logp, ent, lse, kl, top = _fused_logits(st, lf, yf, vf, qf)
  shape = lambda x: x.reshape(lead)
  return LogProbs(shape(logp), shape(ent), shape(lse), None if qf is None else shape(kl),
                  jax.lax.stop_gradient(shape(top)))
