"""Rollout throughput: our jitted KV-cache sampler vs `transformers.generate`, same weights.

The standard benchmark model: a random Qwen2 with hidden 256, intermediate 688, 4 layers, 4 heads,
2 KV heads, vocabulary 32000, tied embeddings, float32. Prompts of 64 tokens, 128 new tokens (no
early stop), batch 8 and 32, sampling at temperature 1.0 (no top-k/top-p on either side) and
greedy. Reports generated tokens/s (median of repeats after a warm-up), the speed-up as the
median of per-round ratios (each round runs ours, then theirs) and our compile time.

  python benchmarks/rollout.py [--batches 8 32] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
import time


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", type=int, nargs="*", default=[8, 32])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--prompt", type=int, default=64)
  ap.add_argument("--new", type=int, default=128)
  args = ap.parse_args()

  import jax
  import numpy as np
  import torch
  import transformers

  from jaxrl_llm.rollout import Sampler, SamplingConfig

  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  from standard_model import load, torch_model

  model = torch_model()
  params, config = load()
  rng = np.random.default_rng(0)
  print(json.dumps({"machine": platform.machine(), "cpus": threads, "jax": jax.__version__,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "date": time.strftime("%Y-%m-%d"), "device": jax.devices()[0].device_kind}))
  sampler = Sampler(config)
  for batch in args.batches:
    prompts = rng.integers(0, 32000, (batch, args.prompt)).astype(np.int32)
    lengths = np.full((batch,), args.prompt, np.int32)
    for mode in ("sample", "greedy"):
      sampling = SamplingConfig(greedy=True) if mode == "greedy" else SamplingConfig(temperature=1.0)

      def ours(seed):
        r = sampler.generate(params, prompts, lengths, sampling=sampling,
                             max_new_tokens=args.new, stop_token_ids=[],
                             rng=jax.random.PRNGKey(seed))
        return jax.block_until_ready(r.tokens)

      ids = torch.tensor(prompts, dtype=torch.long)
      kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, eos_token_id=None,
                pad_token_id=0, attention_mask=torch.ones_like(ids))
      kw.update(dict(do_sample=False) if mode == "greedy" else
                dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0))

      def theirs():
        with torch.no_grad():
          out = model.generate(ids, **kw)
        assert out.shape[1] == args.prompt + args.new

      t0 = time.perf_counter()
      ours(0)
      compile_s = time.perf_counter() - t0
      theirs()  # Warm-up.
      # Alternate the two within each round, so drifts in the (shared, noisy) machine's speed hit
      # both sides alike; the speed-up is the median of the per-round ratios.
      times, hf_times = [], []
      for i in range(args.repeats):
        t0 = time.perf_counter()
        ours(i + 1)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs()
        hf_times.append(time.perf_counter() - t0)
      ours_tps = batch * args.new / statistics.median(times)
      hf_tps = batch * args.new / statistics.median(hf_times)
      ratios = [h / o for o, h in zip(times, hf_times)]
      print(json.dumps({"batch": batch, "mode": mode, "ours_tokens_per_s": round(ours_tps, 1),
                        "transformers_tokens_per_s": round(hf_tps, 1),
                        "speedup": round(statistics.median(ratios), 2),
                        "speedup_min_max": [round(min(ratios), 2), round(max(ratios), 2)],
                        "ours_compile_plus_first_s": round(compile_s, 2)}), flush=True)


if __name__ == "__main__":
  main()
