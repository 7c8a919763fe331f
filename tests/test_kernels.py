"""The fused log-prob core: every path against the naive reference (values and gradients), the
Pallas kernels (interpret mode) against the chunked path, sharded against unsharded, and a
structural check that no [N, V] array exists in the chunked forward+backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.config import MeshConfig
from jaxrl_llm.kernels import (BlockSizes, default_impl, fused_linear_logprobs,
                               fused_logits_logprobs)
from jaxrl_llm.parallel import make_mesh


def make_inputs(n, d, v, *, scale=1.0, dtype=jnp.float32, seed=0):
  k = jax.random.PRNGKey(seed)
  ks = jax.random.split(k, 5)
  h = jax.random.normal(ks[0], (n, d))
  w = jax.random.normal(ks[1], (d, v)) * scale / np.sqrt(d)
  hq = jax.random.normal(ks[2], (n, d))
  wq = jax.random.normal(ks[3], (d, v)) * scale / np.sqrt(d)
  y = jax.random.randint(ks[4], (n,), 0, v)
  return h.astype(dtype), w.astype(dtype), hq.astype(dtype), wq.astype(dtype), y


def run(impl, h, w, y, *, hq=None, wq=None, valid=None, temperature=1.0, softcap=None,
        blocks=None, mesh=None):
  """Outputs and the gradients (w.r.t. h and w) of a loss that uses every output."""

  def loss(h, w):
    o = fused_linear_logprobs(h, w, y, h_ref=hq, w_ref=wq, valid=valid, temperature=temperature,
                              softcap=softcap, impl=impl, block_sizes=blocks, mesh=mesh)
    total = jnp.sum(o.logp * 1.3) + 0.7 * jnp.sum(o.entropy) - 0.2 * jnp.sum(o.lse)
    if o.kl is not None:
      total = total + 0.9 * jnp.sum(o.kl)
    return total, o

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(h, w)
  return out, grads


def assert_close(a, b, rtol, atol):
  a_out, a_grads = a
  b_out, b_grads = b
  for name in ("logp", "entropy", "lse", "kl", "max_logp"):
    x, ref = getattr(a_out, name), getattr(b_out, name)
    if ref is None:
      assert x is None
      continue
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(ref, np.float32), rtol=rtol,
                               atol=atol, err_msg=name)
  for x, ref, name in zip(a_grads, b_grads, ("dh", "dw")):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(ref, np.float32), rtol=rtol,
                               atol=atol * max(1.0, float(jnp.max(jnp.abs(ref)))), err_msg=name)


CASES = [
    # (n, d, v, block_n, block_v, temperature, scale, with_ref, softcap)
    (24, 16, 1000, 8, 128, 1.0, 1.0, True, None),  # V not a multiple of the block.
    (24, 16, 1000, 8, 300, 0.6, 1.0, False, None),
    (16, 8, 1000, 16, 1000, 0.6, 40.0, True, None),  # Extreme logits (scale 30+), one tile.
    (10, 16, 777, 8, 64, 1.0, 30.0, True, 30.0),  # Soft-capping; N not a multiple of block_n.
    (16, 8, 50257, 8, 4096, 1.0, 1.0, True, None),  # GPT-2's vocabulary.
]


PATHS = ["chunked", "pallas_gpu", "pallas_tpu"]  # The Pallas families run in interpret mode.


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}-v{c[2]}-bv{c[4]}-t{c[5]}-s{c[6]}")
def test_paths_match_reference_f32(impl, case):
  n, d, v, bn, bv, temp, scale, with_ref, cap = case
  h, w, hq, wq, y = make_inputs(n, d, v, scale=scale)
  valid = jnp.arange(n) % 4 != 1  # Some masked rows.
  ref_kw = dict(hq=hq, wq=wq) if with_ref else {}
  kw = dict(valid=valid, temperature=temp, softcap=cap, **ref_kw)
  blocks = BlockSizes(block_n=bn, block_v=bv)
  expected = run("reference", h, w, y, **kw)
  got = run(impl, h, w, y, blocks=blocks, **kw)
  # With logits of size ~300 one float32 ulp is 3e-5, and XLA may round z = raw / T differently
  # in different fusions: near-zero entropies then differ by ~1e-5 (the reference's own error).
  assert_close(got, expected, rtol=2e-4, atol=2e-5 if scale < 30 else 1e-4)
  # Masked rows: exactly zero outputs and zero gradient.
  out, (dh, _) = got
  assert np.all(np.asarray(out.logp)[~np.asarray(valid)] == 0.0)
  assert np.all(np.asarray(dh)[~np.asarray(valid)] == 0.0)


@pytest.mark.parametrize("impl", PATHS)
def test_paths_match_reference_bf16(impl):
  h, w, hq, wq, y = make_inputs(16, 32, 600, dtype=jnp.bfloat16, scale=3.0)
  kw = dict(hq=hq, wq=wq, temperature=0.6)
  expected = run("reference", h, w, y, **kw)
  got = run(impl, h, w, y, blocks=BlockSizes(block_n=8, block_v=256), **kw)
  out, grads = got
  assert out.logp.dtype == jnp.float32 and grads[0].dtype == jnp.bfloat16
  assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_all_masked_rows():
  h, w, hq, wq, y = make_inputs(8, 8, 100)
  out, (dh, dw) = run("chunked", h, w, y, hq=hq, wq=wq, valid=jnp.zeros((8,), bool),
                      blocks=BlockSizes(block_n=8, block_v=32))
  for x in (out.logp, out.entropy, out.lse, out.kl, dh, dw):
    assert np.all(np.asarray(x) == 0.0)


@pytest.mark.parametrize("impl", ["pallas", "pallas_tpu"])
def test_pallas_interpret_equals_chunked(impl):
  h, w, hq, wq, y = make_inputs(40, 24, 513, scale=5.0, seed=3)  # D = 24: padded to 32 on GPU.
  blocks = BlockSizes(block_n=16, block_v=128)
  kw = dict(hq=hq, wq=wq, temperature=0.6, blocks=blocks)
  assert_close(run(impl, h, w, y, **kw), run("chunked", h, w, y, **kw), rtol=1e-4, atol=1e-5)


def test_kl_is_zero_against_itself_and_matches_logits_variant():
  h, w, _, _, y = make_inputs(12, 16, 300)
  out, _ = run("chunked", h, w, y, hq=h, wq=w, blocks=BlockSizes(block_n=8, block_v=64))
  assert np.all(np.abs(np.asarray(out.kl)) < 1e-5)
  logits = h @ w
  for impl in ("chunked", "pallas_gpu", "pallas_tpu", "reference"):
    lo = fused_logits_logprobs(logits, y, ref_logits=logits[::-1], temperature=0.6, impl=impl,
                               block_sizes=BlockSizes(block_n=8, block_v=64))
    li = fused_linear_logprobs(h, w, y, h_ref=h[::-1], w_ref=w, temperature=0.6,
                               impl="reference")
    for a, b in zip(lo, li):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # max_logp marks the argmax exactly.
  o = fused_linear_logprobs(h, w, jnp.argmax(h @ w, -1), impl="chunked",
                            block_sizes=BlockSizes(block_n=8, block_v=64))
  assert np.all(np.asarray(o.logp) == np.asarray(o.max_logp))
  o = fused_linear_logprobs(h, w, (jnp.argmax(h @ w, -1) + 1) % 300, impl="chunked",
                            block_sizes=BlockSizes(block_n=8, block_v=64))
  assert np.all(np.asarray(o.logp) < np.asarray(o.max_logp))


@pytest.mark.parametrize("impl", PATHS)
def test_logits_variant_gradients(impl):
  h, w, _, _, y = make_inputs(10, 8, 333, scale=20.0)
  logits = h @ w
  ref = jnp.flip(logits, axis=0)

  def loss(impl, lg):
    o = fused_logits_logprobs(lg, y, ref_logits=ref, temperature=0.6, softcap=15.0, impl=impl,
                              valid=jnp.arange(10) != 3,
                              block_sizes=BlockSizes(block_n=8, block_v=100))
    return jnp.sum(o.logp) + 0.5 * jnp.sum(o.entropy) + 0.3 * jnp.sum(o.kl) + 0.1 * jnp.sum(o.lse)

  g = jax.jit(jax.grad(lambda lg: loss(impl, lg)))(logits)
  g_ref = jax.grad(lambda lg: loss("reference", lg))(logits)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(g)[3] == 0.0)


@pytest.mark.parametrize("impl", PATHS)
def test_sharded_equals_unsharded(impl):
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  h, w, hq, wq, y = make_inputs(32, 16, 1000, scale=4.0, seed=5)
  valid = jnp.arange(32) % 7 != 2
  blocks = BlockSizes(block_n=8, block_v=128)
  kw = dict(hq=hq, wq=wq, valid=valid, temperature=0.6, blocks=blocks)
  unsharded = run(impl, h, w, y, **kw)
  sharded = run(impl, h, w, y, mesh=mesh, **kw)
  assert_close(sharded, unsharded, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    run(impl, h[:30], w, y[:30], mesh=mesh)


def test_chunked_never_materialises_n_by_v():
  n, d, v = 96, 16, 5000  # N·V-sized arrays are easy to spot: no other array has both dims.
  h, w, hq, wq, y = make_inputs(n, d, v)

  def loss(h, w):
    o = fused_linear_logprobs(h, w, y, h_ref=hq, w_ref=wq, impl="chunked",
                              block_sizes=BlockSizes(block_n=8, block_v=256))
    return jnp.sum(o.logp) + jnp.sum(o.entropy) + jnp.sum(o.kl)

  def shapes(jaxpr):
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        yield getattr(var.aval, "shape", ())
      for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
        yield from shapes(sub)
      for param in eqn.params.values():
        inner = getattr(param, "jaxpr", None)
        if inner is not None:
          yield from shapes(getattr(inner, "jaxpr", inner))

  seen = list(shapes(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(h, w).jaxpr))
  assert any(s == (n, 256) for s in seen)  # Tiles are there...
  big = [s for s in seen if int(np.prod(s)) >= n * v]
  assert big == [], big  # ...but nothing of N x V size.
  # The naive path does build them: the check above can fail.
  def naive(h, w):
    o = fused_linear_logprobs(h, w, y, impl="reference")
    return jnp.sum(o.logp)
  assert any(int(np.prod(s)) >= n * v for s in
             shapes(jax.make_jaxpr(jax.grad(naive, argnums=(0, 1)))(h, w).jaxpr))


def test_dispatcher_and_block_validation():
  assert default_impl("cpu") == "chunked" and default_impl("tpu") == "pallas_tpu"
  with pytest.raises(ValueError, match="block_n"):
    BlockSizes(block_n=12)
  with pytest.raises(ValueError, match="block_v"):
    BlockSizes(block_v=0)
  h, w, hq, wq, y = make_inputs(8, 8, 50)
  with pytest.raises(ValueError, match="impl"):
    fused_linear_logprobs(h, w, y, impl="cuda")
  with pytest.raises(ValueError, match="h_ref"):
    fused_linear_logprobs(h, w, y, h_ref=hq)
  with pytest.raises(ValueError, match="temperature"):
    fused_linear_logprobs(h, w, y, temperature=0.0)
  # Leading dimensions are kept: [B, T, D] in, [B, T] out.
  out = fused_linear_logprobs(h.reshape(2, 4, 8), w, y.reshape(2, 4))
  assert out.logp.shape == (2, 4) and out.kl is None


@pytest.mark.parametrize("impl,platform", [("pallas_gpu", "cuda"), ("pallas_tpu", "tpu")])
def test_pallas_lowers_for_its_hardware(impl, platform):
  """The whole Pallas lowering (to Triton for CUDA, to Mosaic for TPU) runs here on a CPU-only
  machine through ``jax.export``, at Qwen2.5-0.5B's head shape with bfloat16, a reference policy
  and soft-capping, forward and backward, for both entry points. This catches what interpret
  mode cannot: Triton's power-of-two shapes, Mosaic's block rules, ops with no lowering there."""
  n, d, v = 256, 896, 151936
  blocks = BlockSizes.default("gpu" if platform == "cuda" else "tpu")
  kw = dict(temperature=0.7, softcap=30.0, impl=impl, interpret=False, block_sizes=blocks)

  def linear(h, w, y):
    o = fused_linear_logprobs(h, w, y, h_ref=h, w_ref=w, **kw)
    return jnp.sum(o.logp) + jnp.sum(o.entropy) + jnp.sum(o.kl)

  def logits(lg, y):
    o = fused_logits_logprobs(lg, y, ref_logits=lg * 0.5, **kw)
    return jnp.sum(o.logp) + jnp.sum(o.entropy) + jnp.sum(o.kl)

  spec = jax.ShapeDtypeStruct
  y = spec((n,), jnp.int32)
  triton = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  target = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}[platform]
  for fn, args, kernels in [
      (jax.grad(linear, argnums=(0, 1)), (spec((n, d), jnp.bfloat16), spec((d, v), jnp.bfloat16), y),
       3),  # forward, dh, dW
      (jax.grad(logits), (spec((n, v), jnp.float32), y), 2)]:  # forward, dlogits
    exported = jax.export.export(jax.jit(fn), platforms=[platform], disabled_checks=triton)(*args)
    calls = [line for line in exported.mlir_module().splitlines() if "custom_call @" in line]
    assert len(calls) == kernels and all(target in c for c in calls), calls


def test_pallas_tpu_checks_mosaic_block_rules():
  h, w, _, _, y = make_inputs(256, 16, 1000)
  with pytest.raises(ValueError, match="block_v a multiple of 128"):
    fused_linear_logprobs(h, w, y, impl="pallas_tpu", interpret=False,
                          block_sizes=BlockSizes(block_n=256, block_v=300))
  with pytest.raises(ValueError, match="block_n a multiple of 128"):
    fused_linear_logprobs(h, w, y, impl="pallas_tpu", interpret=False,
                          block_sizes=BlockSizes(block_n=64, block_v=256))


def test_pallas_tpu_fits_block_v_to_vmem():
  from jaxrl_llm.kernels import pallas_tpu

  budget = 0.75 * pallas_tpu.vmem_capacity()
  chosen = {}
  for d in (896, 4096, 8192):
    est = lambda bn, bv, d=d: pallas_tpu.vmem_estimate(block_n=bn, block_v=bv, d=d, itemsize=2,
                                                       with_ref=True)
    bn, bv, n_pad, n_tiles = pallas_tpu._geometry(4096, 151936, 256, 2048, False, est)
    assert (bn, n_pad, n_tiles) == (256, 4096, -(-151936 // bv))
    assert est(bn, bv) <= budget or bv == 128
    assert bv == 2048 or est(bn, 2 * bv) > budget  # Halved only as far as needed.
    chosen[d] = bv
  assert chosen[896] >= chosen[4096] >= chosen[8192] and chosen[8192] < 2048
  # Interpret mode keeps the requested tile (no VMEM there).
  assert pallas_tpu._geometry(4096, 151936, 256, 2048, True, est)[1] == 2048


def test_pallas_gpu_vocab_splits_combine_exactly():
  from jaxrl_llm.kernels.pallas_kernels import vocab_splits

  assert vocab_splits(64, 297) == (4, 75)  # N = 4096, block_n 64, Qwen's V in 512-tiles.
  assert vocab_splits(256, 297) == (1, 297)  # Enough row blocks: no split.
  assert vocab_splits(1, 20) == (2, 10)  # At least 8 tiles per range.
  for rows, n_tiles in [(1, 79), (3, 17), (2, 64), (5, 1000)]:
    splits, per = vocab_splits(rows, n_tiles)
    assert (splits - 1) * per < n_tiles <= splits * per  # No empty range, every tile covered.
  # 79 tiles in 9 ranges of 9 (the last range runs 2 steps past the vocabulary).
  h, w, hq, wq, y = make_inputs(40, 16, 5000, scale=8.0, seed=4)
  kw = dict(hq=hq, wq=wq, temperature=0.6, softcap=20.0, valid=jnp.arange(40) % 5 != 0,
            blocks=BlockSizes(block_n=32, block_v=64))
  assert vocab_splits(2, 79) == (9, 9)
  assert_close(run("pallas_gpu", h, w, y, **kw), run("chunked", h, w, y, **kw), rtol=1e-4,
               atol=1e-5)


# --------------------------------------------------------------------------- one pass (token-local)

def _ppo_like(logp, ent, aux):
  """A token-local RL loss: clipped surrogate, k3 KL to a fixed reference, entropy bonus."""
  ratio = jnp.exp(logp - aux["old"])
  pg = jnp.maximum(-aux["adv"] * ratio, -aux["adv"] * jnp.clip(ratio, 0.8, 1.28))
  kl = jnp.exp(aux["ref"] - logp) - (aux["ref"] - logp) - 1.0
  return aux["w"] * (pg + 0.04 * kl - 0.01 * ent)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
def test_one_pass_token_loss_matches_autodiff(dtype, tol):
  from jaxrl_llm.kernels.onepass import linear_token_loss, linear_token_loss_reference

  n, d, v = 37, 16, 50  # 37 rows in chunks of 16: a padded last chunk
  h, w, _, _, y = make_inputs(n, d, v, scale=2.0, dtype=dtype)
  ks = jax.random.split(jax.random.PRNGKey(9), 4)
  aux = {"old": -4 * jax.random.uniform(ks[0], (n,)), "adv": jax.random.normal(ks[1], (n,)),
         "ref": -4 * jax.random.uniform(ks[2], (n,)), "w": jax.random.uniform(ks[3], (n,))}

  def grads(fn):
    def loss(h, w):
      value, logp, ent = fn(h, w, y, _ppo_like, aux, temperature=0.7)
      return value, (logp, ent)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(h, w)

  (got, (lp, ent)), (dh, dw) = grads(lambda *a, **k: linear_token_loss(*a, **k, block_rows=16))
  (want, (lp0, ent0)), (dh0, dw0) = grads(linear_token_loss_reference)
  scale = lambda x: float(jnp.max(jnp.abs(x.astype(jnp.float32))))
  for a, b in ((got, want), (lp, lp0), (ent, ent0), (dh, dh0), (dw, dw0)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.max(np.abs(a - b)) <= tol * max(scale(jnp.asarray(b)), 1.0)
  assert dh.dtype == dtype and dw.dtype == dtype


def test_one_pass_keeps_n_by_v_out_of_memory_and_does_three_matmuls():
  from jaxrl_llm.kernels.onepass import linear_token_loss

  n, d, v = 96, 16, 5000
  h, w, _, _, y = make_inputs(n, d, v)
  aux = {"w": jnp.full((n,), 1.0 / n)}

  def loss(h, w):
    return linear_token_loss(h, w, y, _mean_logp, aux, block_rows=8)[0]

  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(h, w)
  text = str(jaxpr)
  assert f"f32[{n},{v}]" not in text  # no N x V array anywhere...
  assert f"f32[8,{v}]" in text  # ...only row-chunk tiles with the whole vocabulary
  # One logits matmul and two gradient matmuls per chunk; the backward only scales.
  assert text.count("dot_general") == 3


def _mean_logp(logp, ent, aux):
  del ent
  return -aux["w"] * logp
