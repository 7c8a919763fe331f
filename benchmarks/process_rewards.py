"""The process-rewards study: PRIME vs GRPO, an ORM and a PRM for best-of-8, and PPO with step
rewards vs outcome rewards only -- all from one warm start on the easy reasoning problems.

  python benchmarks/process_rewards.py [--out DIR] [--methods grpo prime] [--parts rl rm ppo]
                                       [--reuse]

1. Trains the reasoning experiments' shared warm start (SFT on the easy problems' traces,
   ``experiments/reasoning``) and measures it on the **easy** splits, where it answers about a
   third of the problems: the regime PRIME's accuracy-band filter is made for (on the hard
   problems almost no group has a correct sample; see the demonstrations study).
2. Runs ``jaxrl-llm run reasoning-<method> --set data.chain_level=easy`` for GRPO and PRIME, each
   from a copy of that warm start, checkpointing every 25 steps; scores every checkpoint with one
   evaluator (greedy, ``final_answer``) on the easy validation split and the last on easy test.
3. For every PRIME checkpoint, reads its implicit PRM against the warm start (its reference) on a
   fixed set of solutions -- 4 samples per validation problem from the warm start -- whose steps
   carry exact labels (``data.steps.chain_step_labels``: a step is right when it and every step
   before it are). A step's implicit value is ``q_k = Σ_{t ≤ end of step k} β·log(π_φ/π_ref)``
   (Yuan et al.: σ(q) estimates the chance that the prefix ends correct); we report the AUC of
   ``q_k`` against the labels and the accuracy of ``q_k > 0``.

4. (``rm``) Trains ``reasoning-prm`` and ``reasoning-orm`` from copies of the warm start (the PRM
   run labels the steps -- Math-Shepherd, 8 completions per prefix -- and the ORM run reuses its
   labels), then scores the PRM's steps against **exact** labels on the warm start's test
   solutions, and reranks 8 samples per easy test problem: greedy, one sample, majority vote, the
   ORM's pick, the PRM's pick (product / min / last), pass@8.
5. (``ppo``) ``reasoning-reft`` (PPO with a value head, partial-credit outcome reward) on the easy
   problems, with and without the PRM's step rewards (``reward.process_model_run``).

Writes ``DIR/process_rewards.json`` and ``benchmarks/process_rewards.png`` and prints Markdown
tables for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

LEVEL = "easy"
METHODS = ("grpo", "prime")


def auc(scores, labels) -> float:
  """Area under the ROC curve: P(a right step scores above a wrong one), ties counting ½; NaN
  when one class is absent."""
  import numpy as np

  s, y = np.asarray(scores, float), np.asarray(labels) > 0.5
  pos, neg = s[y], s[~y]
  if not len(pos) or not len(neg):
    return float("nan")
  diff = pos[:, None] - neg[None, :]
  return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


class Study:
  """The easy-level evaluator, and the fixed labelled solutions for judging an implicit PRM."""

  def __init__(self, work_dir: str):
    from experiments import reasoning
    from jaxrl_llm.config.io import apply_overrides
    from jaxrl_llm.train import rl_loop

    config = apply_overrides(reasoning.config("grpo"), [f"data.chain_level={LEVEL}"])
    self.setup = rl_loop.build(config, work_dir)
    self.solutions = None

  def accuracy(self, params, split: str) -> float:
    from jaxrl_llm.train import rl_loop

    return rl_loop.evaluate(self.setup, params, split)["accuracy"]

  def sample_solutions(self, params, k: int = 4, seed: int = 0) -> None:
    """``k`` samples per validation problem from ``params``, with exact step labels."""
    import jax
    import numpy as np

    from jaxrl_llm.data.steps import chain_step_labels
    from jaxrl_llm.rollout.sampler import pad_prompts

    setup = self.setup
    tok, data = setup.tokenizer, setup.splits["validation"]
    rc = setup.config.rollout
    rows = []
    for start in range(0, len(data), 16):
      idx = list(range(start, min(start + 16, len(data))))
      idx += [idx[-1]] * (16 - len(idx))
      prompts, lengths = pad_prompts([data.prompts[i] for i in idx],
                                     setup.config.data.length_buckets, tok.pad_token_id)
      ro = jax.device_get(setup.sampler.generate(
          params, prompts, lengths, sampling=setup.sampling, max_new_tokens=rc.max_new_tokens,
          stop_token_ids=[tok.eos_token_id], rng=jax.random.fold_in(jax.random.key(seed), start),
          num_samples=k))
      width = prompts.shape[1]
      n_real = min(16, len(data) - start)
      for r in range(n_real * k):
        resp = [int(t) for t in ro.tokens[r, width:]]
        stop = resp.index(tok.eos_token_id) if tok.eos_token_id in resp else len(resp)
        text = tok.decode(resp[:stop], skip_special_tokens=True)
        if len(tok(text, add_special_tokens=False)["input_ids"]) != len(text):
          raise RuntimeError("the study expects the character tokenizer (one token per char)")
        prompt = tok.decode(np.asarray(data.prompts[idx[r // k]]).tolist(),
                            skip_special_tokens=True)
        sol = chain_step_labels(prompt, text)
        ends, pos = [], 0
        for step in sol.steps:
          pos += len(step)
          ends.append(min(pos, max(len(text) - 1, 0)))  # the ';' after the step (or its end)
          pos += 1
        rows.append({"tokens": ro.tokens[r], "response_len": stop, "ends": ends,
                     "labels": list(sol.labels)})
    self.width = width
    self.solutions = rows

  def judge(self, prm_params, ref_params, beta: float) -> dict:
    """AUC and accuracy of the implicit PRM's step values ``q_k`` against the exact labels."""
    import jax
    import numpy as np

    from jaxrl_llm.algorithms import prime as prime_lib

    setup = self.setup
    fn = jax.jit(lambda p, t, a, m: prime_lib.prm_logprobs(setup.model.apply, p,
                                                           setup.model_config, t, a, m))
    q_all, y_all = [], []
    sols = self.solutions
    for start in range(0, len(sols), 64):
      part = sols[start:start + 64]
      part = part + [part[-1]] * (64 - len(part))
      tokens = np.stack([s["tokens"] for s in part]).astype(np.int32)
      t = tokens.shape[1] - self.width
      mask = np.arange(t)[None, :] < np.asarray([s["response_len"] for s in part])[:, None]
      attention = np.concatenate([tokens[:, :self.width] != setup.tokenizer.pad_token_id, mask],
                                 axis=1)
      args = [setup.put_rows(x) for x in (tokens, attention, mask)]
      lp = np.asarray(jax.device_get(fn(prm_params, *args)))
      ref = np.asarray(jax.device_get(fn(ref_params, *args)))
      q = np.cumsum(np.where(mask, beta * (lp - ref), 0.0), axis=1)
      for j, s in enumerate(part[:len(sols) - start]):
        for end, label in zip(s["ends"], s["labels"]):
          if label is not None and end < s["response_len"]:
            q_all.append(q[j, end])
            y_all.append(label)
    q_all, y_all = np.asarray(q_all), np.asarray(y_all)
    return {"step_auc": auc(q_all, y_all),
            "step_accuracy": float(np.mean((q_all > 0) == (y_all > 0.5))),
            "steps": int(len(y_all)), "positive_fraction": float(np.mean(y_all > 0.5))}


def main(argv=None) -> int:
  from demonstrations import _commit, _cpu
  from experiments import reasoning

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(REPO, "runs", "process-rewards-study"))
  ap.add_argument("--methods", nargs="*", default=list(METHODS))
  ap.add_argument("--parts", nargs="*", default=["rl", "rm", "ppo"])
  ap.add_argument("--reuse", action="store_true",
                  help="keep a method's finished run (eval.json present) and only score it")
  args = ap.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.rundir.checkpoint import Checkpointer
  from jaxrl_llm.train import sft_loop

  warm_root = os.path.join(args.out, "warm")
  t0 = time.time()
  sft_loop.warm_start(reasoning.config("grpo"), warm_root)
  warm_s = time.time() - t0
  study = Study(os.path.join(args.out, "eval"))
  warm = load_run(os.path.join(warm_root, "sft")).policy_params()
  study.sample_solutions(warm)
  result = {"commit": _commit(), "date": datetime.date.today().isoformat(), "cpu": _cpu(),
            "cores": os.cpu_count(), "level": LEVEL,
            "warm_start": {"seconds": round(warm_s, 1),
                           "test_accuracy": study.accuracy(warm, "test"),
                           "validation_accuracy": study.accuracy(warm, "validation")},
            "methods": {}}
  previous = os.path.join(args.out, "process_rewards.json")
  if os.path.exists(previous):  # a later --parts / --methods adds to (or redoes) its parts
    with open(previous) as f:
      old = json.load(f)
    result["methods"] = old.get("methods", {})
    result.update({k: old[k] for k in ("reward_models", "ppo") if k in old})
  print(json.dumps(result["warm_start"]), flush=True)
  for method in (args.methods if "rl" in args.parts else []):
    run_dir = os.path.join(args.out, method)
    reuse = args.reuse and os.path.exists(os.path.join(run_dir, "eval.json"))
    if not reuse:
      if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
      shutil.copytree(os.path.join(warm_root, "sft"), os.path.join(run_dir, "sft"))
    t0 = time.time()
    cmd = [sys.executable, "-m", "jaxrl_llm.cli", "run", f"reasoning-{method}", "--run-dir",
           run_dir, "--set", f"data.chain_level={LEVEL}", "--set", "train.checkpoint_every=25",
           "--set", "train.keep_checkpoints=20", "--set", "logging.progress=off"]
    out = subprocess.run(["true"] if reuse else cmd, cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seconds = (result["methods"].get(method, {}).get("seconds", 0.0) if reuse
               else time.time() - t0)
    if out.returncode:
      print(out.stdout[-3000:])
      result["methods"][method] = {"error": out.stdout[-500:]}
      continue
    art = load_run(run_dir, restore=False)
    beta = art.config.algorithm.prime_beta
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=100, async_save=False)
    curve = [[0, result["warm_start"]["validation_accuracy"]]]
    prm_curve = []
    final = None
    for step in ckpt.all_steps():
      state, _ = ckpt.restore(step, None)
      policy = state["actor"]["params"] if "actor" in state else state["params"]
      curve.append([int(step), study.accuracy(policy, "validation")])
      if "implicit_prm" in state:
        prm_curve.append([int(step), study.judge(state["implicit_prm"]["params"], warm, beta)])
      final = policy
    ckpt.close()
    entry = {"seconds": round(seconds, 1), "test_accuracy": study.accuracy(final, "test"),
             "validation_curve": curve}
    if prm_curve:
      entry["implicit_prm_steps"] = prm_curve
      entry["implicit_prm_at_start"] = study.judge(warm, warm, beta)
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    if method == "prime":
      entry["kept_groups_per_step"] = float(
          sum(16 - m["rollout/short_groups"] for m in metrics) / len(metrics))
    result["methods"][method] = entry
    print(method, json.dumps({k: v for k, v in entry.items() if k != "validation_curve"}),
          flush=True)
    with open(previous, "w") as f:
      json.dump(result, f, indent=1)
  if "rm" in args.parts:
    result["reward_models"] = _reward_models(args, warm_root, study, warm)
    with open(previous, "w") as f:
      json.dump(result, f, indent=1)
  if "ppo" in args.parts:
    result["ppo"] = _ppo(args, warm_root, study)
    with open(previous, "w") as f:
      json.dump(result, f, indent=1)
  _plot(result, os.path.join(HERE, "process_rewards.png"))
  print(_table(result))
  return 0


def _run(args, name: str, run_dir: str, warm_root: str, *sets: str) -> float:
  """``jaxrl-llm run NAME`` in ``run_dir`` from a copy of the warm start; returns seconds (0 when
  --reuse found it finished)."""
  if args.reuse and os.path.exists(os.path.join(run_dir, "eval.json")):
    return 0.0
  if os.path.exists(run_dir):
    shutil.rmtree(run_dir)
  shutil.copytree(os.path.join(warm_root, "sft"), os.path.join(run_dir, "sft"))
  t0 = time.time()
  cmd = [sys.executable, "-m", "jaxrl_llm.cli", "run", name, "--run-dir", run_dir,
         "--set", "logging.progress=off"]
  for item in sets:
    cmd += ["--set", item]
  out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if out.returncode:
    print(out.stdout[-3000:])
    raise RuntimeError(f"{name} failed")
  return time.time() - t0


def _reward_models(args, warm_root: str, study, warm) -> dict:
  """Part 4: ORM and PRM, step AUC against exact labels, best-of-8 on the easy test split."""
  from jaxrl_llm.rewards.learned import StepRewardModelFunction
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train.label_steps import label_steps, policy_sampler
  from jaxrl_llm.train.process_rm_loop import auc
  from jaxrl_llm.train.rerank import best_of_n

  out: dict = {}
  prm_dir, orm_dir = (os.path.join(args.out, k) for k in ("prm", "orm"))
  out["prm_seconds"] = round(_run(args, "reasoning-prm", prm_dir, warm_root), 1)
  if not (args.reuse and os.path.exists(os.path.join(orm_dir, "eval.json"))):
    if os.path.exists(orm_dir):
      shutil.rmtree(orm_dir)
    os.makedirs(orm_dir)
    shutil.copytree(os.path.join(prm_dir, "steps"), os.path.join(orm_dir, "steps"))
  out["orm_seconds"] = round(_run(args, "reasoning-orm", orm_dir, warm_root), 1)
  with open(os.path.join(prm_dir, "steps", "labels.json")) as f:
    out["labels"] = json.load(f)["splits"]
  for kind, d in (("prm", prm_dir), ("orm", orm_dir)):
    with open(os.path.join(d, "eval.json")) as f:
      out[f"{kind}_test"] = json.load(f)
  # The PRM against exact step labels: the warm start's test solutions, labelled by the task.
  exact_dir = os.path.join(args.out, "exact-test")
  if not os.path.exists(os.path.join(exact_dir, "labels.json")):
    label_steps(os.path.join(warm_root, "sft"), exact_dir, method="exact", samples=4,
                splits=("test",), progress=lambda *_: None)
  rows = [json.loads(line) for line in open(os.path.join(exact_dir, "test.jsonl"))]
  fn = StepRewardModelFunction(prm_dir)
  _, probs, _ = fn.steps([r["prompt"] for r in rows], [";".join(r["steps"]) for r in rows])
  p_all, y_all = [], []
  for r, p in zip(rows, probs):
    for prob, label in zip(p, r["labels"]):
      if np.isfinite(prob) and label is not None:
        p_all.append(prob)
        y_all.append(label)
  p_all, y_all = np.asarray(p_all), np.asarray(y_all)
  out["prm_exact_step_auc"] = auc(p_all, y_all)
  out["prm_exact_step_accuracy"] = float(np.mean((p_all > 0.5) == (y_all > 0.5)))
  out["exact_steps"] = int(len(y_all))
  # Pooled AUC can come from telling easy problems from hard ones; best-of-N needs the order of
  # solutions to the same problem: the fraction of (right, wrong) pairs of one prompt's test
  # solutions that each model orders right.
  test_rows = [json.loads(line) for line in open(os.path.join(prm_dir, "steps", "test.jsonl"))]
  prompts = [r["prompt"] for r in test_rows]
  texts = [";".join(r["steps"]) for r in test_rows]
  outcome = np.asarray([r["outcome"] for r in test_rows])
  for kind, d in (("prm", prm_dir), ("orm", orm_dir)):
    scores = StepRewardModelFunction(d)(prompts, texts)
    hits = total = 0
    groups: dict = {}
    for i, p in enumerate(prompts):
      groups.setdefault(p, []).append(i)
    for idx in groups.values():
      for i in idx:
        for j in idx:
          if outcome[i] > outcome[j]:
            total += 1
            hits += float(scores[i] > scores[j]) + 0.5 * float(scores[i] == scores[j])
    out[f"{kind}_within_prompt_pair_accuracy"] = hits / max(total, 1)
    out[f"{kind}_pooled_outcome_auc"] = auc(scores, outcome)
    out["within_prompt_pairs"] = total
  # Best-of-8 on the easy test split, the warm start sampling.
  art = load_run(os.path.join(warm_root, "sft"))
  setup, params = policy_sampler(art, os.path.join(warm_root, "sft"))
  scorers = {"orm": StepRewardModelFunction(orm_dir),
             "prm_product": StepRewardModelFunction(prm_dir, scoring="product"),
             "prm_min": StepRewardModelFunction(prm_dir, scoring="min"),
             "prm_last": StepRewardModelFunction(prm_dir, scoring="last")}
  out["best_of_8"] = best_of_n(setup, params, scorers, "test", n=8, seed=0)
  print("reward models", json.dumps({k: v for k, v in out.items() if k != "labels"}), flush=True)
  return out


def _ppo(args, warm_root: str, study) -> dict:
  """Part 5: PPO (reasoning-reft) on the easy problems, outcome reward vs + PRM step rewards."""
  from jaxrl_llm.rundir.artifacts import load_run

  prm_dir = os.path.join(args.out, "prm")
  out = {}
  for name, extra in (("ppo_outcome", ()),
                      ("ppo_steps", (f"reward.process_model_run={prm_dir}",))):
    run_dir = os.path.join(args.out, name)
    seconds = _run(args, "reasoning-reft", run_dir, warm_root, f"data.chain_level={LEVEL}",
                   *extra)
    policy = load_run(run_dir).policy_params()
    out[name] = {"seconds": round(seconds, 1), "test_accuracy": study.accuracy(policy, "test")}
    print(name, json.dumps(out[name]), flush=True)
  return out


def _plot(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
  for method, r in result["methods"].items():
    if "validation_curve" in r:
      xs, ys = zip(*r["validation_curve"])
      ax.plot(xs, ys, marker="o", label=method)
    if "implicit_prm_steps" in r:
      xs = [0] + [s for s, _ in r["implicit_prm_steps"]]
      ys = [r["implicit_prm_at_start"]["step_auc"]] + [d["step_auc"]
                                                       for _, d in r["implicit_prm_steps"]]
      bx.plot(xs, ys, marker="o", label="implicit PRM step AUC")
  ax.set_xlabel("RL step after the warm start")
  ax.set_ylabel(f"{LEVEL} validation accuracy (greedy)")
  ax.set_title("PRIME vs GRPO")
  ax.legend()
  bx.set_xlabel("RL step")
  bx.set_ylabel("AUC of q_k vs exact step labels")
  bx.axhline(0.5, color="gray", lw=0.8, ls="--")
  bx.set_title("PRIME's implicit PRM on fixed solutions")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _rm_table(rm: dict) -> list[str]:
  lines = ["", f"PRM vs exact step labels (warm start's test solutions, {rm['exact_steps']} steps): "
           f"AUC {rm['prm_exact_step_auc']:.3f}, accuracy {rm['prm_exact_step_accuracy']:.3f}; "
           f"on its Monte-Carlo test labels: AUC {rm['prm_test'].get('test/step_auc', float('nan')):.3f}",
           "", f"Solutions to the same test problem ({rm.get('within_prompt_pairs', 0)} right/wrong "
           "pairs), ordered right: PRM "
           f"{rm.get('prm_within_prompt_pair_accuracy', float('nan')):.3f}, ORM "
           f"{rm.get('orm_within_prompt_pair_accuracy', float('nan')):.3f} (pooled outcome AUC: "
           f"PRM {rm.get('prm_pooled_outcome_auc', float('nan')):.3f}, ORM "
           f"{rm.get('orm_pooled_outcome_auc', float('nan')):.3f})",
           "", "| best of 8 (easy test) | accuracy |", "|---|---|"]
  b = rm["best_of_8"]
  for k in ("greedy", "sample", "majority_vote"):
    lines.append(f"| {k.replace('_', ' ')} | {b[k]:.3f} |")
  for k, v in b.items():
    if k.startswith("best_of_n/"):
      lines.append(f"| {k.split('/')[1].replace('_', ' ')} pick | {v:.3f} |")
  lines.append(f"| pass@8 | {b['pass_at_n']:.3f} |")
  return lines


def _table(result: dict) -> str:
  w = result["warm_start"]
  lines = [f"Warm start: {LEVEL} test accuracy {w['test_accuracy']:.3f}", "",
           f"| method | {LEVEL} test accuracy | minutes |", "|---|---|---|"]
  for method, r in result["methods"].items():
    if "error" in r:
      lines.append(f"| {method} | failed | |")
    else:
      lines.append(f"| {method} | {r['test_accuracy']:.3f} | {r['seconds'] / 60:.1f} |")
  prime = result["methods"].get("prime", {})
  if "implicit_prm_steps" in prime:
    lines += ["", "| PRIME step | implicit PRM step AUC | step accuracy (q > 0) |", "|---|---|---|"]
    start = prime["implicit_prm_at_start"]
    lines.append(f"| 0 | {start['step_auc']:.3f} | {start['step_accuracy']:.3f} |")
    for step, d in prime["implicit_prm_steps"]:
      lines.append(f"| {step} | {d['step_auc']:.3f} | {d['step_accuracy']:.3f} |")
  if "reward_models" in result:
    lines += _rm_table(result["reward_models"])
  if "ppo" in result:
    lines += ["", f"| PPO on {LEVEL} | test accuracy | minutes |", "|---|---|---|"]
    for name, r in result["ppo"].items():
      lines.append(f"| {name} | {r['test_accuracy']:.3f} | {r['seconds'] / 60:.1f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
