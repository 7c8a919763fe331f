"""Ahead-of-time compilation for TPU slices from any machine (needs ``libtpu``, no TPU).

:func:`compile_logprob_kernel` builds the Pallas TPU log-prob kernels (forward and backward) for a
chip generation at a head shape with libtpu's compiler, which is how the suite checks that every
tile fits the chip's VMEM. :func:`jaxrl_llm.parallel.plan` (``jaxrl-llm plan``) compiles a whole
experiment's step programs the same way.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrl_llm.parallel import tpu

# One small slice per generation: a kernel check needs one device.
_SMALLEST = {"v5e": "v5e-4", "v5p": "v5p-8", "v6e": "v6e-4"}


@dataclasses.dataclass(frozen=True)
class KernelCompile:
  """What compiling the log-prob kernels for one (chip, head shape) gave."""

  generation: str
  d: int
  vocab: int
  rows: int
  block_n: int
  block_v: int  # After fitting the chip's VMEM.
  vmem_estimate_bytes: int  # Per grid step, :func:`pallas_tpu.vmem_estimate`.
  vmem_limit_bytes: int  # What the compiler was allowed.
  temp_bytes: int  # XLA temporaries of the whole gradient program (HBM).
  seconds: float


def compile_logprob_kernel(generation: str, d: int, vocab: int, *, rows: int = 256,
                           dtype=jnp.bfloat16, with_ref: bool = True,
                           temperature: float = 1.0) -> KernelCompile:
  """Compiles ``grad(logp + entropy + KL)`` of the ``pallas_tpu`` path for one chip generation
  (``"v5e"``, ``"v5p"``, ``"v6e"``) at head shape ``h: [rows, d]``, ``W: [d, vocab]``, with a
  reference policy — the three kernels (forward, ``dh``, ``dW``) through Mosaic. Raises the
  compiler's error (``RESOURCE_EXHAUSTED ... vmem`` when a tile does not fit)."""
  from jaxrl_llm.kernels import BlockSizes, fused_linear_logprobs, pallas_tpu

  device = tpu.topology(_SMALLEST[generation])[0]
  sharding = NamedSharding(Mesh(np.array([device]), ("x",)), P())
  blocks = BlockSizes.default("tpu")

  def loss(h, w, y):
    out = fused_linear_logprobs(h, w, y, h_ref=h if with_ref else None,
                                w_ref=w if with_ref else None, temperature=temperature,
                                impl="pallas_tpu", block_sizes=blocks)
    total = jnp.sum(out.logp) + jnp.sum(out.entropy)
    return total + jnp.sum(out.kl) if with_ref else total

  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  itemsize = jnp.dtype(dtype).itemsize
  start = time.perf_counter()
  with tpu.compiling_for(generation):
    est = lambda bn, bv: pallas_tpu.vmem_estimate(block_n=bn, block_v=bv, d=d,
                                                  itemsize=itemsize, with_ref=with_ref)
    bn, bv, _, _ = pallas_tpu._geometry(rows, vocab, blocks.block_n, blocks.block_v, False, est)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
        spec((rows, d), dtype), spec((d, vocab), dtype), spec((rows,), jnp.int32)).compile()
    limit = int(0.75 * pallas_tpu.vmem_capacity())
  return KernelCompile(generation=generation, d=d, vocab=vocab, rows=rows, block_n=bn,
                       block_v=bv, vmem_estimate_bytes=est(bn, bv), vmem_limit_bytes=limit,
                       temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
                       seconds=time.perf_counter() - start)
