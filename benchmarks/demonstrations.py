"""The demonstrations study: GRPO, LUFFY, SRFT, ReFT and SFT from one warm start on the hard
reasoning problems, scored the same way.

  python benchmarks/demonstrations.py [--out DIR] [--methods grpo luffy ...]

1. Trains the shared warm start once (SFT on the easy problems' traces, ``experiments/reasoning``)
   and measures it on the hard test split: greedy accuracy and pass@8 (temperature 1).
2. Runs ``jaxrl-llm run reasoning-<method>`` for each method, each in its own run directory that
   starts with a copy of that warm start (so every method starts from the same weights, and the
   run's config.json is the experiment's own), checkpointing every 25 steps.
3. Scores every checkpoint of every run with one evaluator -- greedy decoding, the
   ``final_answer`` verifier -- on the hard validation split (the curve) and the final one on
   the hard test split (the table).

Writes ``DIR/demonstrations.json`` and ``benchmarks/demonstrations.png`` and prints a Markdown table
for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def _commit() -> str:
  try:
    return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                   text=True).strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _cpu() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


class Evaluator:
  """Greedy accuracy (``final_answer``) and pass@k of any policy params on the hard splits."""

  def __init__(self, work_dir: str):
    from experiments import reasoning
    from jaxrl_llm.train import rl_loop

    config = reasoning.config("grpo")
    self.setup = rl_loop.build(config, work_dir)

  def accuracy(self, params, split: str) -> float:
    from jaxrl_llm.train import rl_loop

    return rl_loop.evaluate(self.setup, params, split)["accuracy"]

  def pass_at(self, params, split: str, k: int = 8, seed: int = 0) -> float:
    import jax
    import numpy as np

    from jaxrl_llm.rollout.sampler import pad_prompts
    from jaxrl_llm.train.evaluate import decode_texts

    setup = self.setup
    tok, data = setup.tokenizer, setup.splits[split]
    rc = setup.config.rollout
    hits = []
    for start in range(0, len(data), 16):
      idx = list(range(start, min(start + 16, len(data))))
      idx += [idx[-1]] * (16 - len(idx))
      prompts, lengths = pad_prompts([data.prompts[i] for i in idx],
                                     setup.config.data.length_buckets, tok.pad_token_id)
      ro = jax.device_get(setup.sampler.generate(
          params, prompts, lengths, sampling=setup.sampling, max_new_tokens=rc.max_new_tokens,
          stop_token_ids=[tok.eos_token_id], rng=jax.random.fold_in(jax.random.key(seed), start),
          num_samples=k))
      texts = decode_texts(tok, ro.tokens[:, prompts.shape[1]:], tok.eos_token_id)
      rows = np.repeat(np.asarray(idx), k)
      prompt_text = tok.batch_decode([data.prompts[i].tolist() for i in rows],
                                     skip_special_tokens=True)
      scores = setup.rewards(prompt_text, texts, data.row_columns(rows)).per_function[
          "final_answer"].reshape(len(idx), k)
      n_real = min(16, len(data) - start)
      hits.extend((np.nan_to_num(scores[:n_real]) >= 1).any(axis=1).tolist())
    return float(np.mean(hits))


def main(argv=None) -> int:
  from experiments import reasoning

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(REPO, "runs", "demonstrations-study"))
  ap.add_argument("--methods", nargs="*", default=list(reasoning.METHODS))
  ap.add_argument("--reuse", action="store_true",
                  help="keep a method's finished run (eval.json present) and only score it")
  args = ap.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  from jaxrl_llm.train import sft_loop
  from jaxrl_llm.rundir.artifacts import RunArtifacts, load_run
  from jaxrl_llm.rundir.checkpoint import Checkpointer

  warm_root = os.path.join(args.out, "warm")
  t0 = time.time()
  sft_loop.warm_start(reasoning.config("grpo"), warm_root)
  warm_s = time.time() - t0
  evaluator = Evaluator(os.path.join(args.out, "eval"))
  warm = load_run(os.path.join(warm_root, "sft")).policy_params()
  result = {
      "commit": _commit(), "date": datetime.date.today().isoformat(), "cpu": _cpu(),
      "cores": os.cpu_count(),
      "warm_start": {"seconds": round(warm_s, 1),
                     "hard_test_accuracy": evaluator.accuracy(warm, "test"),
                     "hard_validation_accuracy": evaluator.accuracy(warm, "validation"),
                     "hard_test_pass@8": evaluator.pass_at(warm, "test", 8)},
      "methods": {}}
  previous = os.path.join(args.out, "demonstrations.json")
  if os.path.exists(previous):  # --methods X adds to (or redoes X in) an earlier study
    with open(previous) as f:
      result["methods"] = json.load(f).get("methods", {})
  print(json.dumps(result["warm_start"]), flush=True)
  for method in args.methods:
    run_dir = os.path.join(args.out, method)
    reuse = args.reuse and os.path.exists(os.path.join(run_dir, "eval.json"))
    if not reuse:
      if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
      shutil.copytree(os.path.join(warm_root, "sft"), os.path.join(run_dir, "sft"))
    t0 = time.time()
    cmd = [sys.executable, "-m", "jaxrl_llm.cli", "run", f"reasoning-{method}", "--run-dir",
           run_dir, "--set", "train.checkpoint_every=25", "--set", "train.keep_checkpoints=20",
           "--set", "logging.progress=off"]
    out = subprocess.run(["true"] if reuse else cmd, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seconds = (result["methods"].get(method, {}).get("seconds", 0.0) if reuse
               else time.time() - t0)
    if out.returncode:
      print(out.stdout[-3000:])
      result["methods"][method] = {"error": out.stdout[-500:]}
      continue
    # RFT trains one SFT run per round (rounds/<r>/sft); the others one run with checkpoints.
    rounds = sorted(int(r) for r in os.listdir(os.path.join(run_dir, "rounds"))) \
        if os.path.isdir(os.path.join(run_dir, "rounds")) else None
    scored = ([(os.path.join(run_dir, "rounds", str(r), "sft"), r) for r in rounds]
              if rounds is not None else [(run_dir, None)])
    curve = [[0, result["warm_start"]["hard_validation_accuracy"]]]
    final, offset = None, 0
    for sub_dir, _ in scored:
      art = load_run(sub_dir, restore=False)
      ckpt = Checkpointer(os.path.join(sub_dir, "checkpoints"), keep=100, async_save=False)
      steps = ckpt.all_steps()
      for step in steps:
        state, extra = ckpt.restore(step, None)
        params = RunArtifacts(sub_dir, art.config, art.model_config, art.tokenizer, state, extra,
                              step).policy_params()
        curve.append([offset + int(step), evaluator.accuracy(params, "validation")])
        final = params
      offset += max(steps) if steps else 0
      ckpt.close()
    test = evaluator.accuracy(final, "test")
    result["methods"][method] = {"seconds": round(seconds, 1), "hard_test_accuracy": test,
                                 "hard_validation_curve": curve}
    print(method, json.dumps(result["methods"][method]), flush=True)
    with open(os.path.join(args.out, "demonstrations.json"), "w") as f:
      json.dump(result, f, indent=1)
  _plot(result, os.path.join(HERE, "demonstrations.png"))
  print(_table(result))
  return 0


def _plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for method, r in result["methods"].items():
    if "hard_validation_curve" in r:
      xs, ys = zip(*r["hard_validation_curve"])
      ax.plot(xs, ys, marker="o", label=method)
  ax.set_xlabel("training step after the warm start")
  ax.set_ylabel("hard validation accuracy (greedy)")
  ax.set_title("Learning from demonstrations on hard problems")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _table(result: dict) -> str:
  w = result["warm_start"]
  lines = [f"Warm start: hard test accuracy {w['hard_test_accuracy']:.3f}, pass@8 "
           f"{w['hard_test_pass@8']:.3f}", "", "| method | hard test accuracy | minutes |",
           "|---|---|---|"]
  for method, r in result["methods"].items():
    if "error" in r:
      lines.append(f"| {method} | failed | |")
    else:
      lines.append(f"| {method} | {r['hard_test_accuracy']:.3f} | {r['seconds'] / 60:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
