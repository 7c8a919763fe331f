"""Compile-and-compare check of the Pallas log-prob kernels on the machine's own backend.

On a GPU or TPU this is the check the CPU test suite cannot make: the kernels are compiled for the
device (``interpret=False``) and compared, values and gradients, with the naive reference and the
chunked path, at small shapes and at Qwen2.5-0.5B's head shape (bfloat16). On CPU it runs the same
comparison in interpret mode at the small shapes only (a smoke test of this script).

  python benchmarks/kernels_on_device.py                  # every case, one JSON line each
  python benchmarks/kernels_on_device.py --impl pallas_gpu

Each line: case, impl, max abs error of logp/entropy/kl and of dh/dW relative to the largest
reference gradient, and ``ok`` (every error within 10x the CPU tests' tolerance: GPU float32
matmuls may use TF32). Exit status 1 if any case fails or raises; the error is on that case's line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _case(n, d, v, dtype, scale, seed=0):
  import jax
  import numpy as np

  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  h = jax.random.normal(ks[0], (n, d)).astype(dtype)
  w = (jax.random.normal(ks[1], (d, v)) * scale / np.sqrt(d)).astype(dtype)
  hq = jax.random.normal(ks[2], (n, d)).astype(dtype)
  wq = (jax.random.normal(ks[3], (d, v)) * scale / np.sqrt(d)).astype(dtype)
  y = jax.random.randint(ks[4], (n,), 0, v)
  return h, w, hq, wq, y


def _run(impl, h, w, hq, wq, y, blocks, interpret):
  import jax
  import jax.numpy as jnp

  from jaxrl_llm.kernels import fused_linear_logprobs

  def loss(h, w, hq, wq, y):  # Every array is an argument: nothing is constant-folded.
    o = fused_linear_logprobs(h, w, y, h_ref=hq, w_ref=wq, temperature=0.7, impl=impl,
                              block_sizes=blocks, interpret=interpret if impl != "reference" else None)
    return jnp.sum(o.logp) + 0.5 * jnp.sum(o.entropy) + 0.3 * jnp.sum(o.kl), o

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, out), grads = fn(h, w, hq, wq, y)
  return jax.block_until_ready((out, grads))


def main():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxrl_llm.kernels import BlockSizes

  ap = argparse.ArgumentParser()
  ap.add_argument("--impl", default=None, help="default: pallas_tpu on TPU, pallas_gpu otherwise")
  args = ap.parse_args()
  backend = jax.default_backend()
  impl = args.impl or ("pallas_tpu" if backend == "tpu" else "pallas_gpu")
  interpret = backend == "cpu"
  blocks = BlockSizes.default("tpu" if impl == "pallas_tpu" else "gpu")
  cases = [("small-f32", 512, 128, 5000, jnp.float32, 1.0, 2e-4),
           ("extreme-f32", 256, 64, 50257, jnp.float32, 30.0, 1e-3)]
  if not interpret:
    cases.append(("qwen-head-bf16", 2048, 896, 151936, jnp.bfloat16, 1.0, 3e-2))
  print(json.dumps({"backend": backend, "device": str(jax.devices()[0].device_kind),
                    "jax": jax.__version__, "impl": impl, "blocks": str(blocks),
                    "date": time.strftime("%Y-%m-%d")}), flush=True)
  failed = False
  for name, n, d, v, dtype, scale, tol in cases:
    row = {"case": name, "n": n, "d": d, "v": v}
    try:
      inputs = _case(n, d, v, dtype, scale)
      ref_out, ref_g = _run("reference", *inputs, None, None)
      for path in ("chunked", impl):
        t0 = time.perf_counter()
        out, g = _run(path, *inputs, blocks, interpret)
        errs = {k: float(jnp.max(jnp.abs(getattr(out, k) - getattr(ref_out, k))))
                for k in ("logp", "entropy", "kl")}
        for k, a, b in zip(("dh", "dw"), g, ref_g):
          a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
          errs[k] = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
        row[path] = {"max_err": errs, "first_call_s": round(time.perf_counter() - t0, 2),
                     "ok": all(e <= tol * 10 for e in errs.values())}
        failed |= not row[path]["ok"]
    except Exception as e:  # noqa: BLE001 -- a lowering/compile error is the result to report.
      row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
      failed = True
    print(json.dumps(row), flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
