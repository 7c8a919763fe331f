"""Fused log-prob core vs the naive full-logits path: wall time and peak memory.

Problem: Qwen2.5-0.5B's LM head, D = 896, V = 151,936, float32; N tokens in {1024, 4096, 16384}.
Modes: ``fwd`` (log-probs and entropy) and ``fwdbwd`` (gradient of mean log-prob w.r.t. h and W).

Time: median of ``--repeats`` runs after one compile-and-run. Memory: each (impl, N, mode) runs in a
fresh subprocess. On CPU the process builds its inputs and compiles, then resets its peak-RSS mark
(Linux ``/proc/self/clear_refs``), runs the computation once and reports ``extra_rss_mb`` = peak
RSS during that first run minus RSS just before it (so input creation and compilation do not hide the
computation's own peak); the same script stopped before the computation (``--baseline``) is also
reported. On GPU it is the device's peak bytes in use.

  python benchmarks/logprob_core.py                       # the full table (slow on CPU)
  python benchmarks/logprob_core.py --n 1024 --impls chunked naive
  python benchmarks/logprob_core.py --one chunked 4096 fwdbwd   # a single measurement (JSON)
  python benchmarks/logprob_core.py --impls matmul naive chunked pallas_gpu   # on a GPU

Impls: ``naive`` (full logits), ``chunked``, ``onepass[:ROWS]`` (``fwdbwd`` only: the token-local
one-pass path, ``kernels/onepass.py``, with ROWS rows per chunk, default 128), ``pallas`` / ``pallas_gpu`` / ``pallas_tpu`` (the
Pallas families; skipped on CPU, where they only run in interpret mode) and ``matmul`` (the bare
``h·W`` and its backward matmuls, for the "half the matmul throughput" target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

D, V = 896, 151_936


def _inputs(n):
  import jax
  import jax.numpy as jnp

  k = jax.random.split(jax.random.PRNGKey(0), 3)
  h = jax.random.normal(k[0], (n, D), jnp.float32)
  w = jax.random.normal(k[1], (D, V), jnp.float32) / (D ** 0.5)
  y = jax.random.randint(k[2], (n,), 0, V)
  return jax.block_until_ready((h, w, y))


def _fn(impl, mode, block_v=None):
  import jax
  import jax.numpy as jnp

  from jaxrl_llm.kernels import BlockSizes, fused_linear_logprobs

  if impl == "matmul":  # The bare h·W (and, for fwdbwd, its two backward matmuls): the roofline.
    def matmul_fwdbwd(h, w, y):
      logits, vjp = jax.vjp(lambda h, w: h @ w, h, w)
      return vjp(jnp.ones_like(logits))

    return jax.jit(lambda h, w, y: h @ w) if mode == "fwd" else jax.jit(matmul_fwdbwd)
  if impl.startswith("onepass"):  # onepass or onepass:BLOCK_ROWS; the token-local one-pass path
    from jaxrl_llm.kernels.onepass import linear_token_loss

    rows = int(impl.split(":")[1]) if ":" in impl else 128
    if mode == "fwd":
      raise SystemExit("onepass computes the gradient in its forward: use --modes fwdbwd")

    def onepass_grad(h, w, y):
      scale = {"scale": jnp.full(y.shape, 1.0 / y.shape[0], jnp.float32)}
      return jax.grad(lambda h, w: linear_token_loss(h, w, y, _mean_logp, scale,
                                                     block_rows=rows)[0], argnums=(0, 1))(h, w)

    return jax.jit(onepass_grad)
  kernel_impl = "reference" if impl == "naive" else impl
  blocks = None
  if block_v:
    blocks = BlockSizes(block_n=BlockSizes.default(jax.default_backend()).block_n, block_v=block_v)

  def forward(h, w, y):
    o = fused_linear_logprobs(h, w, y, impl=kernel_impl, block_sizes=blocks)
    return o.logp, o.entropy

  def loss(h, w, y):
    return jnp.mean(fused_linear_logprobs(h, w, y, impl=kernel_impl, block_sizes=blocks).logp)

  if mode == "fwd":
    return jax.jit(forward)
  return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _mean_logp(logp, entropy, aux):  # the fwdbwd loss, as the per-token loss of the one pass
  del entropy
  return logp * aux["scale"]


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _status_mb(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def _reset_peak() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # Resets VmHWM (peak RSS) to the current RSS.
    return True
  except OSError:
    return False


def measure_one(impl, n, mode, repeats, baseline=False, block_v=None):
  import jax

  h, w, y = _inputs(n)
  if baseline:
    return {"peak_rss_mb": _peak_rss_mb()}
  fn = _fn(impl, mode, block_v)
  t0 = time.perf_counter()
  compiled = fn.lower(h, w, y).compile()
  compile_s = time.perf_counter() - t0
  # Memory: the first execution after compiling, with the peak-RSS mark reset just before it.
  reset = _reset_peak()
  rss_before = _status_mb("VmRSS")
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(h, w, y))
  first = time.perf_counter() - t0
  extra = _status_mb("VmHWM") - rss_before
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(h, w, y))
    times.append(time.perf_counter() - t0)
  out = {"impl": impl, "n": n, "mode": mode, "compile_s": round(compile_s, 3),
         "first_run_s": round(first, 3), "median_s": round(statistics.median(times), 3),
         "peak_rss_mb": round(_peak_rss_mb(), 1)}
  if reset:
    out["extra_rss_mb"] = round(extra, 1)
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    out["device_peak_mb"] = round(stats.get("peak_bytes_in_use", 0) / 2**20, 1)
  return out


def _subprocess(args):
  env = dict(os.environ)
  cmd = [sys.executable, os.path.abspath(__file__)] + args
  res = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if res.returncode != 0:
    return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:] or ["killed"],
            "returncode": res.returncode}
  return json.loads(res.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, nargs="*", default=[1024, 4096, 16384])
  ap.add_argument("--impls", nargs="*", default=["naive", "chunked", "pallas"])
  ap.add_argument("--modes", nargs="*", default=["fwd", "fwdbwd"])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip", nargs="*", default=["naive:16384"],
                  help="impl:N pairs not to run (naive at 16384 needs ~30 GB)")
  ap.add_argument("--one", nargs=3, metavar=("IMPL", "N", "MODE"))
  ap.add_argument("--baseline", type=int, metavar="N")
  ap.add_argument("--block-v", type=int, help="override the backend's default vocabulary tile")
  args = ap.parse_args()
  if args.baseline:
    print(json.dumps(measure_one(None, args.baseline, None, 0, baseline=True)))
    return
  if args.one:
    impl, n, mode = args.one
    out = measure_one(impl, int(n), mode, args.repeats, block_v=args.block_v)
    if args.block_v:
      out["block_v"] = args.block_v
    print(json.dumps(out))
    return
  import jax

  backend = jax.default_backend()
  print(json.dumps({"machine": platform.machine(), "backend": backend,
                    "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
                    "date": time.strftime("%Y-%m-%d"), "D": D, "V": V}), flush=True)
  for n in args.n:
    base = _subprocess(["--baseline", str(n)])
    for mode in args.modes:
      for impl in args.impls:
        if f"{impl}:{n}" in args.skip or (impl.startswith("pallas") and backend == "cpu") or (
            impl.startswith("onepass") and mode == "fwd"):
          continue  # Pallas on CPU only runs in interpret mode: correctness, not speed.
        extra = ["--block-v", str(args.block_v)] if args.block_v else []
        r = _subprocess(["--one", impl, str(n), mode, "--repeats", str(args.repeats)] + extra)
        r["baseline_peak_rss_mb"] = base.get("peak_rss_mb")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
  main()
