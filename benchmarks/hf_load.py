"""Load time and peak host memory of `load_hf` on a checkpoint with Qwen2.5-0.5B's shapes.

Writes a random float32 checkpoint (hidden 896, intermediate 4864, 24 layers, 14 heads, 2 KV heads,
head_dim 64, vocabulary 151,936, tied embeddings; 494 M parameters, ~1.98 GB) to a local directory
once, then loads it in a fresh subprocess and reports the wall time and the peak RSS above the
process's RSS before loading. On CPU the loaded parameters themselves live in host memory, so the
floor is one model size; the loader's own overhead is the rest.

  python benchmarks/hf_load.py [--dir /tmp/qwen25_05b_random]
"""

import argparse
import json
import os
import subprocess
import sys
import time

QWEN25_05B = dict(family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                  n_kv_heads=2, head_dim=64, d_ff=4864, max_seq_len=32768, rope_theta=1e6,
                  tie_embeddings=True, attention_bias=True)


def _status_mb(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def write_checkpoint(directory, dtype):
  import numpy as np
  from safetensors.numpy import save_file

  from jaxrl_llm.config import ModelConfig
  from jaxrl_llm.models.hf import _tensor_table, config_to_hf
  from jaxrl_llm.models.init import abstract_params

  config = ModelConfig(**QWEN25_05B, param_dtype=dtype)
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(0)
  abstract = abstract_params(config)
  tensors = {}
  for entry in _tensor_table(config):
    leaf = abstract
    for key in entry.path:
      leaf = leaf[key]
    ours = (rng.standard_normal(leaf.shape, dtype=np.float32) * 0.02)
    tensors[entry.hf_name] = np.ascontiguousarray(entry.to_hf(ours))
  save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_to_hf(config), f)


def measure(directory):
  import jax

  from jaxrl_llm.models.hf import load_hf

  rss0 = _status_mb("VmRSS")
  t0 = time.perf_counter()
  params, config = load_hf(directory)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  n = sum(x.size for x in jax.tree.leaves(params))
  size_mb = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params)) / 2**20
  return {"benchmark": "hf_load", "params": int(n), "params_mb": round(size_mb, 1),
          "load_s": round(seconds, 2), "peak_rss_above_start_mb": round(_status_mb("VmHWM") - rss0, 1),
          "overhead_over_params_mb": round(_status_mb("VmHWM") - rss0 - size_mb, 1),
          "device": str(jax.devices()[0].device_kind)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--dir", default="/tmp/qwen25_05b_random")
  ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.measure:
    print(json.dumps(measure(args.dir)))
    return
  if not os.path.exists(os.path.join(args.dir, "model.safetensors")):
    t0 = time.perf_counter()
    write_checkpoint(args.dir, "float32")
    print(json.dumps({"wrote": args.dir, "seconds": round(time.perf_counter() - t0, 1)}))
  out = subprocess.run([sys.executable, os.path.abspath(__file__), "--dir", args.dir, "--measure"],
                       capture_output=True, text=True)
  print(out.stdout.strip() or out.stderr.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
