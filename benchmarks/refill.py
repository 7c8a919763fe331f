"""In-flight refill vs the static batch: useful (generated) tokens per second.

The standard benchmark model (random Qwen2: hidden 256, intermediate 688, 4 layers, 4 heads, 2 KV
heads, vocabulary 32000, tied embeddings, float32), 32 prompts × 8 samples = 256 rows, prompts of
16 tokens, sampling at temperature 1.

Workloads:
  * ``tail``: ``--stops`` randomly chosen token ids end a row. The random model's next-token
    distribution is close to uniform, so a row stops at each step with probability about
    stops / 32000: geometric lengths with a long tail against the mean (reported: mean, p50, p90,
    max) -- the static batch decodes until its longest row ends.
  * ``fixed``: one stop id, which the model draws about once in 32000 tokens (checked: the mean
    length is within 1% of ``--fixed-new``), so refill has (almost) nothing to refill -- its
    overhead against the static batch.

Useful tokens/s = Σ response lengths / wall time (median over ``--repeats`` rounds, each round
running every variant once, in turn). ``rows_identical_to_static``: the fraction of rows whose
tokens equal the static batch's (worst round). The refill logic reproduces the static rows exactly
(``tests/test_rollout.py``); at this model size XLA:CPU's matmuls give each row the same bits only
when both batches have >= 64 rows (smaller ones use other kernels, ~1e-6 apart), and in the random
model's near-uniform distributions such a difference can flip a token.

  python benchmarks/refill.py [--slots 128 64 32] [--repeats 3] [--json benchmarks/refill.json]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=256)
  ap.add_argument("--group", type=int, default=8)
  ap.add_argument("--prompt", type=int, default=16)
  ap.add_argument("--new", type=int, default=256)
  ap.add_argument("--fixed-new", type=int, default=64)
  ap.add_argument("--stops", type=int, default=800)
  ap.add_argument("--slots", type=int, nargs="*", default=[128, 64, 32])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--json", default="")
  args = ap.parse_args()

  import jax
  import numpy as np

  from jaxrl_llm.rollout import Sampler, SamplingConfig

  from standard_model import load

  params, config = load()
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  header = {"machine": platform.machine(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d"), "commit": commit,
            "device": jax.devices()[0].device_kind, "rows": args.rows, "group": args.group,
            "prompt": args.prompt}
  print(json.dumps(header), flush=True)
  rng = np.random.default_rng(0)
  b = args.rows // args.group
  prompts = rng.integers(0, 32000, (b, args.prompt)).astype(np.int32)
  lengths = np.full((b,), args.prompt, np.int32)
  sampling = SamplingConfig(temperature=1.0)
  samplers = {0: Sampler(config)} | {k: Sampler(config, refill=True, slots=k) for k in args.slots}
  results = []
  workloads = {"tail": (args.new, rng.choice(32000, args.stops, replace=False).tolist()),
               "fixed": (args.fixed_new, [31999])}
  for name, (new, stops) in workloads.items():
    def run(slots, seed):
      t0 = time.perf_counter()
      r = samplers[slots].generate(params, prompts, lengths, sampling=sampling,
                                   max_new_tokens=new, stop_token_ids=stops,
                                   rng=jax.random.PRNGKey(seed), num_samples=args.group)
      tokens, lens = jax.device_get((r.tokens, r.lengths))
      return time.perf_counter() - t0, tokens, lens

    compile_s = {k: round(run(k, 0)[0], 2) for k in samplers}  # Compile + first run.
    times = {k: [] for k in samplers}
    same = {k: [] for k in samplers}  # Per round: fraction of rows token-identical to static.
    all_lens = []
    for i in range(args.repeats):
      ref = None
      for k in samplers:
        dt, tokens, lens = run(k, i + 1)
        times[k].append(dt)
        if ref is None:
          ref = tokens
          all_lens.append(lens)
        same[k].append(float(np.mean(np.all(tokens == ref, axis=1))))
    lens = np.concatenate(all_lens)
    if name == "fixed" and lens.mean() < 0.99 * new:
      raise SystemExit("the fixed workload's stop id ends rows early; pick another")
    useful = float(np.mean([l.sum() for l in all_lens]))
    stat = {"mean": round(float(lens.mean()), 1), "p50": float(np.percentile(lens, 50)),
            "p90": float(np.percentile(lens, 90)), "max": int(lens.max())}
    for k in samplers:
      ratios = [t0 / t for t0, t in zip(times[0], times[k])]
      row = {"workload": name, "max_new_tokens": new, "stop_ids": len(stops), "lengths": stat,
             "slots": k or "static", "useful_tokens_per_s": round(useful / statistics.median(
                 times[k]), 1), "median_s": round(statistics.median(times[k]), 3),
             "speedup_vs_static": round(statistics.median(ratios), 2),
             "speedup_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
             "compile_plus_first_s": compile_s[k],
             "rows_identical_to_static": round(min(same[k]), 4)}
      results.append(row)
      print(json.dumps(row), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"header": header, "results": results}, f, indent=1)


if __name__ == "__main__":
  main()
