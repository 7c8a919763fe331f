"""`jaxrl-llm plan` for the zoo's real-size models on v5e-8 / v5p-8 / v6e-8: GRPO with 8 prompts ×
8 samples, 1k prompt + 2k response tokens, bfloat16 params and compute, per-block remat, FSDP over
every chip, 8 micro-batches; full fine-tuning and LoRA rank 16 (with --lora). Prints a Markdown
table (the one in tpu/README.md) and appends JSON lines to --out. No TPU needed (libtpu compiles).

Usage: python benchmarks/tpu_plan_table.py [--models Qwen2.5-0.5B ...] [--slices v5e-8 ...] [--lora]
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SETTINGS = ["mesh.data=1", "mesh.fsdp=-1", "mesh.tensor=1", "model.param_dtype=bfloat16",
            "model.dtype=bfloat16", "model.remat=true", "rollout.max_new_tokens=2048",
            "rollout.samples_per_prompt=8", "rollout.prompts_per_step=8",
            "model.max_seq_len=4096", "algorithm.micro_batches=8"]
LORA = ["model.lora.rank=16", "model.lora.alpha=32",
        "model.lora.targets=[\"q\",\"k\",\"v\",\"o\",\"up\",\"gate\",\"down\"]"]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", nargs="+", default=["Qwen2.5-0.5B", "Qwen2.5-1.5B", "Gemma-2-2B",
                                                   "Qwen2.5-7B", "Llama-3-8B"])
  ap.add_argument("--slices", nargs="+", default=["v5e-8", "v5p-8", "v6e-8"])
  ap.add_argument("--lora", action="store_true", help="also plan LoRA rank 16 (all projections)")
  ap.add_argument("--out", default="/tmp/tpu_plan_table.jsonl")
  args = ap.parse_args()
  from experiments import get_experiment
  from jaxrl_llm.config import apply_overrides
  from jaxrl_llm.parallel.plan import GIB, plan

  base = get_experiment("arithmetic-grpo")
  print("| model | slice | tuning | fits | peak GiB / HBM | update temporaries GiB | "
        "TFLOP per device per step | compile s |")
  print("|---|---|---|---|---|---|---|---|")
  for model in args.models:
    for name in args.slices:
      for lora in ([False, True] if args.lora else [False]):
        cfg = apply_overrides(base, SETTINGS + (LORA if lora else []))
        start = time.perf_counter()
        p = plan(cfg, name, model=model, prompt_len=1024)
        secs = time.perf_counter() - start
        update = next(x for x in p.programs if x.name == "update")
        row = {"model": model, "slice": name, "lora": lora, "fits": p.fits,
               "peak_gib": round(p.peak_bytes / GIB, 2), "hbm_gib": round(p.chip.hbm_bytes / GIB, 1),
               "update_temp_gib": round(update.temp_bytes / GIB, 2),
               "tflop_per_step": round(p.flops_per_step / 1e12, 1), "mesh": p.mesh,
               "refused": [x.name for x in p.programs if x.error], "compile_s": round(secs, 1)}
        with open(args.out, "a") as f:
          f.write(json.dumps(row) + "\n")
        print(f"| {model} | {name} | {'LoRA r16' if lora else 'full'} | "
              f"{'yes' if p.fits else 'no'} | {row['peak_gib']} / {row['hbm_gib']} | "
              f"{row['update_temp_gib']} | {row['tflop_per_step']} | {row['compile_s']} |",
              flush=True)


if __name__ == "__main__":
  main()
