"""Throughput of one jitted SFT update on the standard benchmark model.

The standard model (shared by every benchmark): Qwen2-shaped, hidden 256, intermediate 688,
4 layers, 4 heads, 2 KV heads, vocabulary 32000, tied embeddings, float32. Our foundation decoder
has no q/k/v biases yet (the model-zoo issue adds them), so this is the same work up to those
biases.

  python benchmarks/sft_step.py [--batch 8] [--seq 256] [--steps 10] [--accum 1]

Prints compile time, median step time and tokens/s as one JSON line.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm.algorithms import TrainState, make_optimizer, sft
from jaxrl_llm.config import MeshConfig, ModelConfig, OptimizerConfig
from jaxrl_llm.models import Decoder, init_params
from jaxrl_llm.parallel import make_mesh

STANDARD = ModelConfig(vocab_size=32000, d_model=256, d_ff=688, n_layers=4, n_heads=4,
                       n_kv_heads=2, max_seq_len=2048, tie_embeddings=True, rope_theta=1e6)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--accum", type=int, default=1)
  args = ap.parse_args()
  mesh = make_mesh(MeshConfig(data=-1))
  params, param_sh = init_params(STANDARD, jax.random.PRNGKey(0), mesh)
  tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=0), 1000)
  state = TrainState.create(params, tx, jax.random.PRNGKey(1))
  update = jax.jit(sft.make_update(Decoder(STANDARD).apply, STANDARD, tx, schedule),
                   donate_argnums=(0,))
  rng = np.random.default_rng(0)
  shape = (args.accum, args.batch // args.accum, args.seq)
  batch = {"tokens": rng.integers(0, 32000, shape).astype(np.int32),
           "attention_mask": np.ones(shape, bool),
           "loss_mask": np.concatenate([np.zeros(shape[:2] + (args.seq // 2,), bool),
                                        np.ones(shape[:2] + (args.seq - args.seq // 2,), bool)],
                                       -1)}
  batch = jax.device_put(batch, NamedSharding(mesh, P(None, ("data", "fsdp"), None)))
  t0 = time.perf_counter()
  state, m = update(state, batch)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, m = update(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step = statistics.median(times)
  print(json.dumps({
      "benchmark": "sft_step", "device": str(jax.devices()[0].device_kind),
      "num_devices": jax.device_count(), "machine": platform.machine(),
      "batch": args.batch, "seq": args.seq, "accum": args.accum,
      "params": int(sum(x.size for x in jax.tree.leaves(params))),
      "compile_plus_first_step_s": round(compile_s, 2), "median_step_s": round(step, 4),
      "tokens_per_s": round(args.batch * args.seq / step, 1),
      "loss": float(m["train/loss"])}))


if __name__ == "__main__":
  main()
