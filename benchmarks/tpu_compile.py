"""Compiles the Pallas TPU log-prob kernels for v5e, v5p and v6e at the Qwen2.5 / Llama-3 head
shapes with libtpu (no TPU needed) and prints the tile each chip got as a Markdown table (the
one in tpu/README.md). Usage: python benchmarks/tpu_compile.py [--rows 2048]"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADS = [("Qwen2.5-0.5B", 896, 151936), ("Qwen2.5-1.5B", 1536, 151936),
         ("Qwen2.5-7B", 3584, 151936), ("Llama-3-8B", 4096, 128256)]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=2048)
  args = ap.parse_args()
  from jaxrl_llm.parallel import aot

  mib = 2 ** 20
  print("| chip | head | D × V | block (rows × cols) | VMEM estimate / limit (MiB) | "
        "compile (s) |")
  print("|---|---|---|---|---|---|")
  for gen in ("v5e", "v5p", "v6e"):
    for name, d, v in HEADS:
      r = aot.compile_logprob_kernel(gen, d, v, rows=args.rows)
      print(f"| {gen} | {name} | {d} × {v} | {r.block_n} × {r.block_v} | "
            f"{r.vmem_estimate_bytes / mib:.0f} / {r.vmem_limit_bytes / mib:.0f} | "
            f"{r.seconds:.1f} |", flush=True)


if __name__ == "__main__":
  main()
