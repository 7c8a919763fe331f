"""LoRA vs full fine-tuning on the default experiment, and what LoRA saves at real model sizes.

Part 1 (runs): `arithmetic-grpo` (SFT warm start, then GRPO with β = 0.04), full fine-tuning as
configured, then GRPO from the same warm start (``init.policy_run=OUT/full/sft``) with adapters on
every linear layer of the decoder (q, k, v, o, up, gate, down) at rank 8, 16 and 64, with the
experiment's learning rate, and rank 16 once more at 10x that rate (the usual advice for LoRA:
Schulman et al. 2025, "LoRA Without Regret"). Each run is its own process; recorded per run:
held-out accuracy before / after (``eval.json``), wall time, peak RSS of the process, and from
the final checkpoint the bytes of trainable params, frozen params, optimizer state and the
reference policy copy (0 with LoRA: the reference is the frozen base).

Part 2 (shapes only, no weights): for Qwen2.5-0.5B / 1.5B / 7B and Llama-3-8B, bytes of the
params (bf16 storage), the optimizer state (AdamW: two float32 moments, plus the float32 master
copy of bf16 params for full fine-tuning) and the reference copy, full vs LoRA rank 16 on every
linear layer (adapters float32).

  python benchmarks/lora_study.py [--out /tmp/lora_study] [--json benchmarks/lora_study.json]
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ALL_LINEAR = "[q,k,v,o,up,gate,down]"


def _bytes(tree) -> int:
  import jax

  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def child(name: str, overrides: list, run_dir: str, out_json: str) -> None:
  """One run in this process; writes its record to ``out_json``."""
  sys.path.insert(0, REPO)
  from experiments import get_experiment
  from jaxrl_llm.config import apply_overrides
  from jaxrl_llm.models import lora
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import run

  config = apply_overrides(get_experiment(name), overrides)
  start = time.monotonic()
  run(config, run_dir)
  wall = time.monotonic() - start
  with open(os.path.join(run_dir, "eval.json")) as f:
    ev = json.load(f)
  art = load_run(run_dir)
  params = art.policy_params()
  adapters = lora.adapters_of(params)
  kl = config.algorithm.kl_coef > 0
  rec = {"overrides": overrides, "wall_s": round(wall, 1),
         "test/accuracy_before": ev["test/accuracy_before"], "test/accuracy": ev["test/accuracy"],
         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
         "trainable_bytes": _bytes(adapters) if adapters else _bytes(params),
         "frozen_bytes": _bytes(lora.base_of(params)) if adapters else 0,
         "optimizer_bytes": _bytes(art.state["opt_state"]),
         "reference_bytes": 0 if (adapters or not kl) else _bytes(params)}
  with open(out_json, "w") as f:
    json.dump(rec, f)


SHAPES = {
    "Qwen2.5-0.5B": dict(family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                         n_kv_heads=2, d_ff=4864, attention_bias=True, tie_embeddings=True),
    "Qwen2.5-1.5B": dict(family="qwen2", vocab_size=151936, d_model=1536, n_layers=28,
                         n_heads=12, n_kv_heads=2, d_ff=8960, attention_bias=True,
                         tie_embeddings=True),
    "Qwen2.5-7B": dict(family="qwen2", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
                       n_kv_heads=4, d_ff=18944, attention_bias=True, tie_embeddings=False),
    "Llama-3-8B": dict(family="llama", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                       n_kv_heads=8, d_ff=14336, tie_embeddings=False),
}


def shapes_table(rank: int = 16) -> list:
  import jax

  from jaxrl_llm.config import LoraConfig, ModelConfig
  from jaxrl_llm.models import lora
  from jaxrl_llm.models.init import abstract_params

  rows = []
  gib = 2 ** 30
  for name, fields in SHAPES.items():
    base = ModelConfig(param_dtype="bfloat16", max_seq_len=4096, **fields)
    full = abstract_params(base)
    n_full = sum(x.size for x in jax.tree.leaves(full))
    with_lora = abstract_params(base.__class__(**{**fields, "param_dtype": "bfloat16",
                                                  "max_seq_len": 4096},
                                               lora=LoraConfig(rank=rank, targets=(
                                                   "q", "k", "v", "o", "up", "gate", "down"))))
    n_adapter = sum(x.size for x in jax.tree.leaves(lora.adapters_of(with_lora)))
    # Full: bf16 params + float32 master + two float32 moments + a bf16 reference copy.
    full_total = n_full * (2 + 4 + 8 + 2)
    # LoRA: bf16 base + float32 adapters + two float32 moments of the adapters; no reference.
    lora_total = n_full * 2 + n_adapter * (4 + 8)
    rows.append({"model": name, "params": n_full, "adapter_params_r16": n_adapter,
                 "full_gib": round(full_total / gib, 2), "lora_gib": round(lora_total / gib, 2),
                 "full_parts_gib": {"params": round(n_full * 2 / gib, 2),
                                    "master+moments": round(n_full * 12 / gib, 2),
                                    "reference": round(n_full * 2 / gib, 2)},
                 "lora_parts_gib": {"base": round(n_full * 2 / gib, 2),
                                    "adapters+moments": round(n_adapter * 12 / gib, 3),
                                    "reference": 0.0}})
  return rows


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="/tmp/lora_study")
  ap.add_argument("--json", default=os.path.join(HERE, "lora_study.json"))
  ap.add_argument("--child", nargs=4, metavar=("NAME", "OVERRIDES_JSON", "RUN_DIR", "OUT"),
                  help=argparse.SUPPRESS)
  ap.add_argument("--shapes-only", action="store_true")
  args = ap.parse_args()
  if args.child:
    name, overrides, run_dir, out = args.child
    child(name, json.loads(overrides), run_dir, out)
    return
  sys.path.insert(0, REPO)
  import jax

  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  result = {"header": {"machine": platform.machine(), "cpus": os.cpu_count(),
                       "jax": jax.__version__, "date": time.strftime("%Y-%m-%d"),
                       "commit": commit},
            "shapes": shapes_table()}
  print(json.dumps(result), flush=True)
  if not args.shapes_only:
    os.makedirs(args.out, exist_ok=True)
    quiet = ["logging.progress=off", "logging.tensorboard=false"]
    warm = os.path.join(args.out, "full", "sft")
    lora = ["init.sft_steps=0", f"init.policy_run={warm}", f"model.lora.targets={ALL_LINEAR}"]
    runs = {"full": quiet}
    for r in (8, 16, 64):
      runs[f"lora_r{r}"] = quiet + lora + [f"model.lora.rank={r}"]
    runs["lora_r16_lr2e-3"] = quiet + lora + ["model.lora.rank=16",
                                              "optimizer.learning_rate=2e-3"]
    result["runs"] = {}
    for key, overrides in runs.items():
      run_dir = os.path.join(args.out, key)
      rec_path = os.path.join(args.out, f"{key}.json")
      if not os.path.exists(rec_path):
        subprocess.run([sys.executable, __file__, "--child", "arithmetic-grpo",
                        json.dumps(overrides), run_dir, rec_path], check=True)
      with open(rec_path) as f:
        result["runs"][key] = json.load(f)
      print(json.dumps({key: result["runs"][key]}), flush=True)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
