"""The update-sparsity study (issue: "RL finetunes small subnetworks"): which parameters GRPO, PPO,
DPO and continued SFT change from one warm start, in bf16 storage, and whether training only
GRPO's changed set recovers the full run.

  python benchmarks/sparsity_study.py [--out DIR] [--steps 150] [--reuse]

1. Trains the default experiment's SFT warm start (``arithmetic-grpo``'s 450 SFT steps) with
   ``model.param_dtype=bfloat16`` (bf16 params, float32 master in the optimizer).
2. From copies of it (``init.policy_run``), ``--steps`` steps each, all with the same optimizer
   (AdamW 2e-4, 10 warm-up steps, constant, **no weight decay** -- decay alone would move every
   weight -- gradient clip 1.0) and bf16 storage:
   GRPO (seeds 0, 1), PPO (seed 0), DPO on verifier-labelled pairs of the warm start's own samples
   (seed 0), continued SFT on the task's demonstrations (seeds 0, 1), GRPO with float32 storage
   (seed 0: the same updates without bf16's rounding), and GRPO trained only on the changed set
   of the seed-0 GRPO run (``train.update_mask``).
3. Scores every final policy on the 1000 held-out test problems (greedy exact match, one
   evaluator), and runs :func:`jaxrl_llm.analysis.sparsity.analyze` against the warm start: the
   fraction of parameters left unchanged (``|Δ| <= 1e-5`` in the stored dtype), the exact-zero
   fraction, the mean update rank of the weight matrices, and the overlap of changed sets between
   runs vs chance.

Writes ``DIR/sparsity_study.json``, ``benchmarks/sparsity_study.png`` and prints Markdown tables
for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

# name -> (kind, seed, extra overrides)
RUNS = {
    "grpo": ("grpo", 0, ()),
    "grpo_seed1": ("grpo", 1, ()),
    "ppo": ("ppo", 0, ()),
    "dpo": ("dpo", 0, ()),
    "sft": ("sft", 0, ()),
    "sft_seed1": ("sft", 1, ()),
    "grpo_fp32": ("grpo", 0, ("model.param_dtype=float32",)),
    "grpo_subnetwork": ("grpo", 0, ("train.update_mask={out}/grpo",)),
    # The paper's step size (1e-6 on 7B models): how much of the density is our learning rate.
    "grpo_lr1e-6": ("grpo", 0, ("optimizer.learning_rate=1e-6",)),
    "grpo_lr1e-6_seed1": ("grpo", 1, ("optimizer.learning_rate=1e-6",)),
    "sft_lr1e-6": ("sft", 0, ("optimizer.learning_rate=1e-6",)),
}
OVERLAPS = [("grpo", "grpo_seed1"), ("grpo", "grpo_lr1e-6"), ("sft", "sft_seed1"), ("grpo", "ppo"), ("grpo", "dpo"),
            ("grpo", "sft"), ("ppo", "sft"), ("dpo", "sft"),
            ("grpo_lr1e-6", "grpo_lr1e-6_seed1"), ("grpo_lr1e-6", "sft_lr1e-6"),
            ("sft_lr1e-6", "grpo_lr1e-6"), ("grpo_lr1e-6", "grpo")]
COMMON = ("model.param_dtype=bfloat16", "optimizer.learning_rate=2e-4",
          "optimizer.warmup_steps=10", "optimizer.weight_decay=0.0",
          "optimizer.end_learning_rate_ratio=1.0", "optimizer.max_grad_norm=1.0",
          "train.eval_every=0", "train.test_examples=0", "logging.progress=off")


def _warm_config():
  from experiments import arithmetic_grpo
  from jaxrl_llm.config.io import apply_overrides

  return apply_overrides(arithmetic_grpo.config("grpo"), ["model.param_dtype=bfloat16"])


class Evaluator:
  """Greedy exact match on the arithmetic test split, for any policy params of the task."""

  def __init__(self, work_dir: str, warm_run: str):
    from jaxrl_llm.rundir.artifacts import load_run
    from jaxrl_llm.train.label_steps import policy_sampler

    self.setup, _ = policy_sampler(load_run(warm_run), work_dir)

  def accuracy(self, params) -> float:
    from jaxrl_llm.train import rl_loop

    return rl_loop.evaluate(self.setup, params, "test")["accuracy"]

  def params(self, run_dir: str):
    import jax

    from jaxrl_llm.rundir.artifacts import load_run

    return jax.device_put(load_run(run_dir).policy_params(), self.setup.state_shardings.params)

  def master_params(self, run_dir: str):
    """The float32 master copy of a bf16-stored run's policy (None when it has none)."""
    import jax

    from jaxrl_llm.rundir.artifacts import load_run

    state = load_run(run_dir).state
    state = state.get("actor", state)
    master = state.get("opt_state", {}).get("master") if isinstance(
        state.get("opt_state"), dict) else None
    if master is None or jax.tree.structure(master) != jax.tree.structure(
        self.setup.state_shardings.params):
      return None
    return jax.device_put(master, self.setup.state_shardings.params)


def dpo_pairs(evaluator: Evaluator, warm_params, out_dir: str, *, prompts: int = 4000, k: int = 4,
              seed: int = 0) -> dict:
  """DPO data from the warm start's own samples: per training prompt, ``k`` samples verified by
  the task's exact-match reward; a pair is (a correct sample, or the reference answer when none
  is correct; a wrong sample). Validation / test pairs come from those splits' first prompts."""
  import jax
  import numpy as np

  from jaxrl_llm.rollout.sampler import pad_prompts
  from jaxrl_llm.train.rft_loop import decode_texts

  setup = evaluator.setup
  tok = setup.tokenizer
  rc = setup.config.rollout
  stats = {}
  os.makedirs(out_dir, exist_ok=True)
  for split, n in (("train", prompts), ("validation", 256), ("test", 256)):
    data = setup.splits[split]
    n = min(n, len(data))
    texts_prompt = tok.batch_decode([np.asarray(p).tolist() for p in data.prompts[:n]],
                                    skip_special_tokens=True)
    rows, batch = [], 64
    for start in range(0, n, batch):
      real = list(range(start, min(start + batch, n)))
      idx = real + [real[-1]] * (batch - len(real))
      padded, lengths = pad_prompts([data.prompts[i] for i in idx],
                                    setup.config.data.length_buckets, tok.pad_token_id)
      ro = jax.device_get(setup.sampler.generate(
          warm_params, padded, lengths, sampling=setup.sampling, max_new_tokens=rc.max_new_tokens,
          stop_token_ids=[tok.eos_token_id], rng=jax.random.fold_in(jax.random.key(seed), start),
          num_samples=k))
      texts = decode_texts(tok, ro.tokens[:, padded.shape[1]:], tok.eos_token_id)
      flat = np.repeat(np.asarray(idx), k)
      result = setup.rewards([texts_prompt[min(i, n - 1)] for i in flat], texts,
                             data.row_columns(flat))
      ok = np.nan_to_num(result.per_function["exact_match"], nan=0.0) >= 1.0
      for j, i in enumerate(real):
        group = texts[j * k:(j + 1) * k]
        good = [t for t, v in zip(group, ok[j * k:(j + 1) * k]) if v and t]
        bad = [t for t, v in zip(group, ok[j * k:(j + 1) * k]) if not v and t]
        if not bad:
          continue
        chosen = good[0] if good else data.answer_texts[i]
        if chosen == bad[0]:
          continue
        rows.append({"prompt": texts_prompt[i], "chosen": chosen, "rejected": bad[0]})
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    stats[split] = len(rows)
  return stats


def _config_for(kind: str, warm_run: str, pairs_dir: str):
  """The config file a run starts from (experiment defaults for its algorithm)."""
  from experiments import arithmetic_grpo, sft_arithmetic
  from jaxrl_llm.config import AlgorithmConfig

  if kind in ("grpo", "ppo"):
    config = arithmetic_grpo.config("grpo")
    if kind == "ppo":
      config = dataclasses.replace(config, experiment="arithmetic-ppo",
                                   algorithm=AlgorithmConfig(name="ppo", kl_coef=0.0))
  elif kind == "sft":
    config = sft_arithmetic.config()
  else:  # dpo on the verifier-labelled pairs
    base = arithmetic_grpo.config("grpo")
    config = dataclasses.replace(
        base, experiment="arithmetic-dpo",
        algorithm=AlgorithmConfig(name="dpo", dpo_variant="dpo", beta=0.1),
        data=dataclasses.replace(base.data, source="jsonl", jsonl_dir=pairs_dir,
                                 preference_kind="pairs", task="arithmetic"))
  return dataclasses.replace(config, init=dataclasses.replace(
      config.init, sft_steps=0, policy_run=warm_run))


def _run(name: str, kind: str, seed: int, extra, args, warm_run: str, pairs_dir: str) -> float:
  run_dir = os.path.join(args.out, name)
  if args.reuse and os.path.exists(os.path.join(run_dir, "eval.json")):
    return 0.0
  if os.path.exists(run_dir):
    shutil.rmtree(run_dir)
  from jaxrl_llm.config.io import save_json

  cfg_path = os.path.join(args.out, "configs", f"{name}.json")
  os.makedirs(os.path.dirname(cfg_path), exist_ok=True)
  save_json(_config_for(kind, warm_run, pairs_dir), cfg_path)
  batch = ("train.batch_size=64",) if kind in ("sft", "dpo") else ()
  sets = list(COMMON) + list(batch) + [f"train.steps={args.steps}", f"seed={seed}",
                                       "train.checkpoint_every=1000"]
  sets += [e.format(out=args.out) for e in extra]
  cmd = [sys.executable, "-m", "jaxrl_llm.cli", "run", "--config", cfg_path, "--run-dir", run_dir]
  for item in sets:
    cmd += ["--set", item]
  t0 = time.time()
  out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if out.returncode:
    print(out.stdout[-4000:])
    raise RuntimeError(f"{name} failed")
  return time.time() - t0


def main(argv=None) -> int:
  from demonstrations import _commit, _cpu
  from jaxrl_llm.analysis import sparsity
  from jaxrl_llm.train import sft_loop

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(REPO, "runs", "sparsity-study"))
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--runs", nargs="*", default=list(RUNS))
  ap.add_argument("--reuse", action="store_true", help="keep finished runs (eval.json present)")
  args = ap.parse_args(argv)
  args.out = os.path.abspath(args.out)
  os.makedirs(args.out, exist_ok=True)
  warm_root = os.path.join(args.out, "warm")
  t0 = time.time()
  sft_loop.warm_start(_warm_config(), warm_root)
  warm_run = os.path.join(warm_root, "sft")
  result = {"commit": _commit(), "date": datetime.date.today().isoformat(), "cpu": _cpu(),
            "cores": os.cpu_count(), "steps": args.steps,
            "warm_start": {"seconds": round(time.time() - t0, 1)}, "runs": {}, "overlaps": {}}
  evaluator = Evaluator(os.path.join(args.out, "eval"), warm_run)
  warm = evaluator.params(warm_run)
  result["warm_start"]["test_accuracy"] = evaluator.accuracy(warm)
  # The same weights before rounding to bf16 storage (the optimizer's float32 master).
  result["warm_start"]["test_accuracy_fp32_master"] = evaluator.accuracy(
      evaluator.master_params(warm_run))
  # The same warm start trained with float32 storage: what bf16 storage costs before any RL.
  from experiments import arithmetic_grpo

  sft_loop.warm_start(arithmetic_grpo.config("grpo"), os.path.join(args.out, "warm_fp32"))
  result["warm_start"]["test_accuracy_fp32_storage_run"] = evaluator.accuracy(
      evaluator.params(os.path.join(args.out, "warm_fp32", "sft")))
  print(json.dumps(result["warm_start"]), flush=True)
  pairs_dir = os.path.join(args.out, "dpo_pairs")
  if "dpo" in args.runs and not (args.reuse and os.path.exists(
      os.path.join(pairs_dir, "test.jsonl"))):
    result["dpo_pairs"] = dpo_pairs(evaluator, warm, pairs_dir)
  for name in args.runs:
    kind, seed, extra = RUNS[name]
    seconds = _run(name, kind, seed, extra, args, warm_run, pairs_dir)
    run_dir = os.path.join(args.out, name)
    acc = evaluator.accuracy(evaluator.params(run_dir))
    rep = sparsity.analyze(run_dir, before=warm_run, out_dir=os.path.join(run_dir, "analysis"))
    master = evaluator.master_params(run_dir)
    entry = {"kind": kind, "seed": seed, "seconds": round(seconds, 1), "test_accuracy": acc,
             "test_accuracy_fp32_master": None if master is None else evaluator.accuracy(master),
             **{k: rep[k] for k in ("dtype", "sparsity", "exact_zero_fraction",
                                    "update_rank_mean", "parameters")},
             "per_layer_changed_fraction": rep["per_layer_changed_fraction"]}
    result["runs"][name] = entry
    print(name, json.dumps({k: v for k, v in entry.items()
                            if k != "per_layer_changed_fraction"}), flush=True)
  for a, b in OVERLAPS:
    if a in result["runs"] and b in result["runs"]:
      rep = sparsity.analyze(os.path.join(args.out, a), before=warm_run,
                             against=os.path.join(args.out, b),
                             out_dir=os.path.join(args.out, "overlap", f"{a}_vs_{b}"))
      result["overlaps"][f"{a} vs {b}"] = {"overlap": rep["overlap"],
                                           "chance": rep["overlap_chance"]}
  with open(os.path.join(args.out, "sparsity_study.json"), "w") as f:
    json.dump(result, f, indent=1)
  shutil.copy(os.path.join(args.out, "sparsity_study.json"), os.path.join(HERE,
                                                                          "sparsity_study.json"))
  _plot(result, os.path.join(HERE, "sparsity_study.png"))
  print(_table(result))
  return 0


def _plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = result["runs"]
  names = list(runs)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
  changed = [1 - runs[n]["sparsity"] for n in names]
  ax1.bar(names, changed, color=[f"C{i % 10}" for i in range(len(names))])
  for i, n in enumerate(names):
    ax1.text(i, changed[i], f"{runs[n]['test_accuracy']:.2f}", ha="center", va="bottom",
             fontsize=8)
  ax1.set_ylabel("fraction of parameters changed")
  ax1.set_title(f"changed vs the warm start after {result['steps']} steps\n"
                "(numbers: held-out test accuracy)", fontsize=9)
  ax1.tick_params(axis="x", rotation=35, labelsize=8)
  pairs = list(result["overlaps"])
  ov = [result["overlaps"][p]["overlap"] for p in pairs]
  ch = [result["overlaps"][p]["chance"] for p in pairs]
  xs = range(len(pairs))
  ax2.bar([x - 0.2 for x in xs], ov, width=0.4, label="overlap |A∩B|/|A|")
  ax2.bar([x + 0.2 for x in xs], ch, width=0.4, label="chance |B|/n")
  ax2.set_xticks(list(xs))
  ax2.set_xticklabels(pairs, rotation=35, fontsize=8, ha="right")
  ax2.set_ylim(0, 1.05)
  ax2.legend(fontsize=8)
  ax2.set_title("overlap of the changed sets", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _table(result: dict) -> str:
  lines = ["| run | storage | unchanged (sparsity) | exactly zero Δ | mean update rank | "
           "test accuracy (stored / fp32 master) | wall s |", "|---|---|---|---|---|---|---|"]
  for name, r in result["runs"].items():
    master = r.get("test_accuracy_fp32_master")
    acc = f"{r['test_accuracy']:.3f}" + (f" / {master:.3f}" if master is not None else "")
    lines.append(f"| {name} | {r['dtype']} | {r['sparsity']:.3f} | "
                 f"{r['exact_zero_fraction']:.3f} | {r['update_rank_mean']:.3f} | "
                 f"{acc} | {r['seconds']:.0f} |")
  lines += ["", "| runs | overlap | chance |", "|---|---|---|"]
  for pair, o in result["overlaps"].items():
    lines.append(f"| {pair} | {o['overlap']:.3f} | {o['chance']:.3f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
