"""TPU targets compiled here, without a TPU, by libtpu's own compiler (the ``jax[tpu]`` extra)."""

import concurrent.futures

import jax.numpy as jnp
import pytest

from jaxrl_llm.parallel import aot, tpu

HEADS = [(896, 151936), (1536, 151936), (3584, 151936), (4096, 128256)]  # Qwen2.5 x3, Llama-3.


def test_slice_names_and_chips():
  assert tpu.parse_slice("v5e-8") == ("v5e", 8, "v5e:2x4")
  assert tpu.parse_slice("v5p-8") == ("v5p", 4, "v5p:2x2x1")  # v5p counts TensorCores.
  assert len(tpu.topology("v6e-8")) == 8 and len(tpu.topology("v5p-8")) == 4
  for bad in ("v5e-6", "v9-8", "tpu"):
    with pytest.raises(ValueError, match="unknown TPU slice.*v5e-8"):
      tpu.parse_slice(bad)
  v5e, v5p = tpu.chip("v5e"), tpu.chip("TPU v5")
  assert v5e.hbm_bytes == 16 * 2 ** 30 + v5e.hbm_bytes % 2 ** 30 and v5e.vmem_bytes == 128 << 20
  assert v5p.vmem_bytes == 64 << 20 and v5p.hbm_bytes > 90 * 2 ** 30  # Two cores' HBM.
  assert tpu.compile_backend() == "cpu"
  with tpu.compiling_for("v5e"):
    assert tpu.compile_backend() == "tpu" and tpu.target_vmem_bytes() == 128 << 20


def test_pallas_tpu_compiles_for_three_generations():
  """Forward + both backward kernels through Mosaic for v5e, v5p and v6e at the Qwen2.5 and
  Llama-3 head shapes (bfloat16, with a reference policy): every tile the VMEM fit chooses
  compiles, i.e. fits the chip's VMEM. Two compiles at a time (they release the GIL)."""
  jobs = [(g, d, v) for g in ("v5e", "v5p", "v6e") for d, v in HEADS]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    done = list(pool.map(lambda job: aot.compile_logprob_kernel(*job), jobs))
  for r in done:
    assert r.vmem_estimate_bytes <= r.vmem_limit_bytes, r
    assert r.block_n == 256 and r.block_v % 128 == 0, r
  chosen = {(r.generation, r.d): r.block_v for r in done}
  # v5p has half the VMEM of v5e / v6e: its tiles are never wider, and narrower at D = 4096.
  assert all(chosen["v5p", d] <= chosen["v5e", d] == chosen["v6e", d] for d, _ in HEADS)
  assert chosen["v5p", 4096] < chosen["v5e", 4096]
  # The dW program's temporaries hold the float32 gradient of W (the HBM cost, not VMEM).
  assert all(r.temp_bytes >= r.d * r.vocab * 4 for r in done)

