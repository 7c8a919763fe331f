"""``jaxrl-llm``: run, resume, evaluate, plot and list experiments::

  jaxrl-llm run EXPERIMENT [--set key.path=value ...] [--seed N] [--run-dir DIR]
  jaxrl-llm run --config RUN_DIR/config.json [--set ...] [--run-dir DIR]
  jaxrl-llm resume RUN_DIR
  jaxrl-llm eval RUN_DIR [--split test|validation] [--limit N] [--best-of N --scorer rm:RUN]
  jaxrl-llm plot RUN_DIR [--out FILE]
  jaxrl-llm label --judge rm:RUN_DIR|lm:RUN_DIR --input CANDIDATES.jsonl --output DIR
                  [--min-confidence X] [--template-file F] [--pairs all|adjacent] [--cache F]
                  [--holdout-by prompt|row] [--validation-fraction X] [--test-fraction X]
  jaxrl-llm label-steps --policy RUN_DIR --output DIR [--method mc|exact] [--samples K]
                  [--rollouts N] [--prompts N] [--delimiter ';'] [--seed S]
  jaxrl-llm analyze sparsity RUN_OR_HF_DIR [--before RUN_OR_HF_DIR|step:N] [--against RUN]
                  [--tol 1e-5] [--dtype bfloat16] [--out DIR]
  jaxrl-llm analyze entropy RUN [--reward METRIC] [--out DIR]
  jaxrl-llm compare RUN_A RUN_B ... [--metrics KEY,KEY] [--smooth N] [--out FILE]
  jaxrl-llm report RUN [--out FILE]
  jaxrl-llm list

Configuration errors (unknown key, wrong type, invalid value) are reported with the offending
field and exit with status 2 before anything is compiled.

Compiled programs are kept in a persistent XLA compilation cache, so re-running or resuming an
experiment does not compile again: ``$JAXRL_LLM_COMPILATION_CACHE`` (default
``~/.cache/jaxrl_llm/xla``; ``off`` disables it; a cache already configured through JAX's own
``JAX_COMPILATION_CACHE_DIR`` is left as it is). Cached executables are the same programs, so
results are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxrl-llm", description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="train an experiment (or a saved config) in a new run directory")
  run.add_argument("experiment", nargs="?", help="experiment name (see `jaxrl-llm list`), a .py "
                   "file defining config(), or an import path package.module:config")
  run.add_argument("--config", help="a config.json to reproduce (e.g. RUN_DIR/config.json)")
  run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
  run.add_argument("--seed", type=int, help="shorthand for --set seed=N")
  run.add_argument("--run-dir", help="run directory (default: logging.runs_root/<name>-<time>)")
  res = sub.add_parser("resume", help="continue a run from its newest complete checkpoint")
  res.add_argument("run_dir")
  ev = sub.add_parser("eval", help="greedy accuracy of a run's newest checkpoint (with --best-of N "
                      "--scorer rm:RUN: best-of-N reranking)")
  ev.add_argument("run_dir")
  ev.add_argument("--split", default="test", choices=["test", "validation"])
  ev.add_argument("--limit", type=int, default=0, help="rows to evaluate (0: all)")
  ev.add_argument("--best-of", type=int, default=0, metavar="N",
                  help="also sample N solutions per prompt and report greedy, one sample, "
                  "majority vote, the --scorer's best of N and pass@N")
  ev.add_argument("--scorer", metavar="rm:RUN_DIR",
                  help="the reranker for --best-of: an outcome / process (or Bradley–Terry) "
                  "reward-model run")
  ev.add_argument("--seed", type=int, default=0, help="sampling key for --best-of")
  pl = sub.add_parser("plot", help="write PNG training curves of a run")
  pl.add_argument("run_dir")
  pl.add_argument("--out", help="output PNG (default RUN_DIR/plots/curves.png)")
  lab = sub.add_parser("label", help="AI-feedback labeling (RLAIF): candidate responses -> "
                       "soft-label preference pairs in DIR/train.jsonl")
  lab.add_argument("--judge", required=True, metavar="rm:RUN_DIR|lm:RUN_DIR",
                   help="a reward-model run (P = sigmoid(r1 - r2)) or any policy run as an LM "
                   "labeler (option-token probabilities, both orders averaged)")
  lab.add_argument("--input", required=True,
                   help='JSONL of {"prompt": str, "responses": [str, str, ...]}')
  lab.add_argument("--output", required=True, help="directory for train.jsonl and labels.json")
  lab.add_argument("--min-confidence", type=float, default=0.0,
                   help="drop pairs with |p - 0.5| below this (default 0: keep all)")
  lab.add_argument("--template-file", help="lm: judges: a str.format labeler template with "
                   "{prompt}, {first}, {second}")
  lab.add_argument("--pairs", default="all", choices=["all", "adjacent"],
                   help="label every pair of a row's responses, or only neighbours")
  lab.add_argument("--cache", help="label cache JSONL (default DIR/label_cache.jsonl)")
  lab.add_argument("--holdout-by", default="prompt", choices=["prompt", "row"],
                   help="hold out whole prompts (default) or whole candidate rows (tasks with "
                   "few distinct prompts)")
  lab.add_argument("--validation-fraction", type=float, default=0.1,
                   help="fraction of prompts whose pairs go to DIR/validation.jsonl")
  lab.add_argument("--test-fraction", type=float, default=0.1,
                   help="fraction of prompts whose pairs go to DIR/test.jsonl")
  ls = sub.add_parser("label-steps", help="step labels for process reward models: a policy's "
                      "solutions, each step labelled by Monte-Carlo completions (Math-Shepherd) "
                      "or exactly (the reasoning task)")
  ls.add_argument("--policy", required=True, help="the policy run that writes and completes "
                  "solutions (its task, splits and reward.accuracy verifier are used)")
  ls.add_argument("--output", required=True, help="directory for {train,validation,test}.jsonl, "
                  "labels.json and the resumable step_cache.jsonl")
  ls.add_argument("--method", default="mc", choices=["mc", "exact"])
  ls.add_argument("--samples", type=int, default=4, help="solutions per prompt (default 4)")
  ls.add_argument("--rollouts", type=int, default=8,
                  help="completions per step prefix for mc labels (default 8, Math-Shepherd's N)")
  ls.add_argument("--prompts", type=int, default=0, help="prompts per split (0: all)")
  ls.add_argument("--delimiter", default=";", help="the step delimiter (default ';')")
  ls.add_argument("--seed", type=int, default=0)
  an = sub.add_parser("analyze", help="analyses of runs: 'sparsity' -- which parameters a run "
                      "changed (global, per tensor, per layer, update rank, overlap with a second "
                      "run), JSON + heat map; 'entropy' -- the fit R = -a*exp(H) + b over the "
                      "run's steps, JSON + plot")
  an.add_argument("analysis", choices=["sparsity", "entropy"])
  an.add_argument("run", help="the run directory (or Hugging Face checkpoint) after training")
  an.add_argument("--before", help="the starting point: a run / HF directory or step:N of RUN "
                  "(default: the run's own starting policy)")
  an.add_argument("--against", help="a second run from the same start: overlap of the changed "
                  "sets vs chance")
  an.add_argument("--tol", type=float, default=1e-5, help="|Δ| <= tol counts as unchanged")
  an.add_argument("--dtype", help="compare in this storage dtype (default: as stored)")
  an.add_argument("--reward", help="entropy: the reward metric (default reward/accuracy, else "
                  "reward/mean)")
  an.add_argument("--out", help="directory for the JSON and PNG (default RUN/analysis)")
  cmp = sub.add_parser("compare", help="overlaid curves of several runs in one PNG (default: "
                       "reward, accuracy, entropy, KL, response length); legends name each "
                       "run's experiment and what sets it apart")
  cmp.add_argument("runs", nargs="+", metavar="RUN")
  cmp.add_argument("--metrics", help="comma-separated metric keys instead of the defaults, e.g. "
                   "train/loss,train/cov")
  cmp.add_argument("--smooth", type=int, default=1, help="moving-average window (default 1: raw)")
  cmp.add_argument("--out", default="compare.png", help="output PNG (default ./compare.png)")
  rep = sub.add_parser("report", help="one self-contained HTML page of a run: config, held-out "
                       "numbers, curves, the analyses present")
  rep.add_argument("run")
  rep.add_argument("--out", help="output HTML (default RUN/report.html)")
  ex = sub.add_parser("export", help="a run's policy as a Hugging Face checkpoint (LoRA adapters "
                      "merged), or with --adapters its LoRA adapters in the PEFT layout")
  ex.add_argument("run")
  ex.add_argument("out", help="output directory")
  ex.add_argument("--adapters", action="store_true",
                  help="write adapter_config.json + adapter_model.safetensors (PEFT) and the "
                  "base model in OUT/base instead of a merged checkpoint")
  pln = sub.add_parser("plan", help="compile an RL experiment's step for a TPU slice here (no "
                       "TPU needed) and report per-device memory and FLOPs; exit 1 if it does "
                       "not fit")
  pln.add_argument("experiment", help="experiment name (see `jaxrl-llm list`)")
  pln.add_argument("--topology", required=True, metavar="SLICE",
                   help="TPU slice, e.g. v5e-8, v5p-16, v6e-8")
  pln.add_argument("--model", help="a released architecture instead of the experiment's model: "
                   "Qwen2.5-0.5B, Qwen2.5-1.5B, Qwen2.5-7B, Llama-3-8B, Gemma-2-2B")
  pln.add_argument("--prompt-len", type=int, help="prompt tokens per row (default: the largest "
                   "data.length_buckets)")
  pln.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
  ln = sub.add_parser("launch", help="run a command as N processes of one multi-process JAX run "
                      "on this machine: jaxrl-llm launch --processes 2 -- run EXPERIMENT ...")
  ln.add_argument("--processes", type=int, required=True)
  ln.add_argument("--devices-per-process", type=int, help="fake CPU devices per process "
                  "(e.g. 4: two processes make one 8-device mesh)")
  ln.add_argument("--port", type=int, help="coordinator port (default: a free one)")
  ln.add_argument("--grace-s", type=float, default=30.0, help="after a process fails, seconds "
                  "the others get before they are stopped")
  ln.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
  sub.add_parser("list", help="list the available experiments")
  return p


def experiment_defaults(name: str) -> dict | None:
  """The default config of experiment ``name`` as a dict, or None when it is not a known one."""
  from experiments import get_experiment
  from jaxrl_llm.config.io import to_dict

  try:
    return to_dict(get_experiment(name))
  except (KeyError, ImportError, OSError):
    return None


def resolve_config(args) -> "Config":  # noqa: F821
  """The config a ``run`` command asks for: experiment or file, then overrides, then seed."""
  from experiments import get_experiment
  from jaxrl_llm.config import ConfigError, apply_overrides, load_json

  if bool(args.experiment) == bool(args.config):
    raise ConfigError("give exactly one of EXPERIMENT or --config")
  if args.config:
    config = load_json(args.config)
  else:
    try:
      config = get_experiment(args.experiment)
    except KeyError as e:
      raise ConfigError(str(e.args[0])) from None
  overrides = list(args.overrides)
  if args.seed is not None:
    overrides.append(f"seed={args.seed}")
  config = apply_overrides(config, overrides) if overrides else config
  from jaxrl_llm.config.io import shrink_for_tests

  return shrink_for_tests(config)


def remove_if_untrained(run_dir: str) -> bool:
  """Deletes a run directory that a failed ``run`` left before any step of any stage finished
  (no ``metrics.jsonl``, no checkpoint anywhere in it), so that ``resume`` never accepts a run
  that never started. Returns whether it did."""
  import shutil

  for _, dirs, files in os.walk(run_dir):
    if "metrics.jsonl" in files:
      return False
  shutil.rmtree(run_dir, ignore_errors=True)
  print(f"jaxrl-llm: removed {run_dir}: the run failed before its first step", file=sys.stderr)
  return True


def enable_compilation_cache(env=None) -> str | None:
  """Turns on JAX's persistent compilation cache for CLI runs; returns its directory (or None).

  ``env`` (default ``os.environ``) is read for ``JAXRL_LLM_COMPILATION_CACHE``: a directory,
  or ``off`` / ``0`` / empty to disable. An already configured cache directory wins.
  """
  env = os.environ if env is None else env
  default = os.path.join(os.path.expanduser("~"), ".cache", "jaxrl_llm", "xla")
  path = env.get("JAXRL_LLM_COMPILATION_CACHE", default)
  if path.strip().lower() in ("", "0", "off", "none", "false"):
    return None
  import jax

  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # A read-only home must not stop a run: it just compiles every time.
    print(f"jaxrl-llm: compilation cache disabled ({path}: {e.strerror})", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # Only programs that took a while to compile are worth a file each.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


PREEMPTED_EXIT = 143  # 128 + SIGTERM: a scheduler sees a terminated job, a shell `&&` stops.


def _preempted(e, run_dir: str) -> int:
  print(f"jaxrl-llm: {e}; continue with: jaxrl-llm resume {run_dir}", file=sys.stderr)
  return PREEMPTED_EXIT


def _plan(args) -> int:
  from experiments import get_experiment
  from jaxrl_llm.config import ConfigError, apply_overrides
  from jaxrl_llm.parallel.plan import plan

  try:
    config = get_experiment(args.experiment)
  except KeyError as e:
    raise ConfigError(str(e.args[0])) from None
  config = apply_overrides(config, args.overrides) if args.overrides else config
  try:
    result = plan(config, args.topology, model=args.model, prompt_len=args.prompt_len)
  except (ValueError, RuntimeError) as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  print(result.table())
  return 0 if result.fits else 1


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from jaxrl_llm.config import ConfigError

  if args.command == "launch":
    from jaxrl_llm.parallel.launch import launch

    rest = args.command_args[1:] if args.command_args[:1] == ["--"] else args.command_args
    try:
      return launch(rest, processes=args.processes, devices_per_process=args.devices_per_process,
                    port=args.port, grace_s=args.grace_s)
    except ValueError as e:
      print(f"jaxrl-llm: {e}", file=sys.stderr)
      return 2
  if args.command in ("run", "resume", "eval"):
    from jaxrl_llm.parallel import distributed

    try:  # A multi-process run when JAXRL_LLM_* (or a multi-host TPU VM) says so.
      distributed.initialize()
    except (ValueError, RuntimeError) as e:
      print(f"jaxrl-llm: {e}", file=sys.stderr)
      return 2
  if args.command in ("run", "resume", "eval", "label", "label-steps"):
    enable_compilation_cache()
  if args.command == "plan":  # Compiles for TPU from here: never takes a local accelerator.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  try:
    if args.command == "plan":
      return _plan(args)
    if args.command == "list":
      import importlib

      from experiments import EXPERIMENTS

      for name in sorted(EXPERIMENTS):
        doc = (importlib.import_module(EXPERIMENTS[name]).__doc__
               or "").strip().splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}")
      return 0
    if args.command == "plot":
      from jaxrl_llm.train.plotting import plot_run

      print(plot_run(args.run_dir, args.out))
      return 0
    if args.command == "run":
      config = resolve_config(args)  # Every config error is raised here, before any compile.
      from jaxrl_llm.rundir.checkpoint import Preempted
      from jaxrl_llm.train import new_run_dir, run

      run_dir = new_run_dir(config, args.run_dir)
      try:
        run(config, run_dir)
      except Preempted as e:
        return _preempted(e, run_dir)
      except BaseException:
        from jaxrl_llm.parallel.distributed import is_primary

        if is_primary():
          remove_if_untrained(run_dir)
        raise
      return 0
    if args.command == "resume":
      from jaxrl_llm.rundir.checkpoint import Preempted
      from jaxrl_llm.train import resume_run

      try:
        resume_run(args.run_dir)
      except Preempted as e:
        return _preempted(e, args.run_dir)
      return 0
    if args.command == "eval":
      return _eval(args)
    if args.command == "label":
      return _label(args)
    if args.command == "analyze" and args.analysis == "entropy":
      from jaxrl_llm.analysis import entropy

      try:
        result = entropy.analyze(args.run, reward_key=args.reward, out_dir=args.out)
      except ValueError as e:
        print(f"jaxrl-llm: {e}", file=sys.stderr)
        return 2
      print(json.dumps(result))
      return 0
    if args.command == "analyze":
      from jaxrl_llm.analysis.sparsity import analyze

      try:
        report = analyze(args.run, before=args.before, against=args.against, tol=args.tol,
                         dtype=args.dtype, out_dir=args.out)
      except ValueError as e:
        print(f"jaxrl-llm: {e}", file=sys.stderr)
        return 2
      keys = ("dtype", "tolerance", "parameters", "sparsity", "exact_zero_fraction",
              "update_rank_mean", "overlap", "overlap_chance", "heatmap")
      print(json.dumps({k: report[k] for k in keys if k in report}))
      return 0
    if args.command in ("compare", "report"):
      from jaxrl_llm.analysis import compare, report

      try:
        if args.command == "compare":
          metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics \
              else None
          result = compare.compare(args.runs, metrics=metrics, out=args.out,
                                   defaults=experiment_defaults, smooth=args.smooth)
        else:
          result = {"report": report.report(args.run, out=args.out,
                                             defaults=experiment_defaults)}
      except ValueError as e:
        print(f"jaxrl-llm: {e}", file=sys.stderr)
        return 2
      print(json.dumps(result))
      return 0
    if args.command == "export":
      from jaxrl_llm.rundir.export import export_run

      try:
        print(json.dumps(export_run(args.run, args.out, adapters=args.adapters)))
      except (FileNotFoundError, ValueError) as e:
        print(f"jaxrl-llm: {e}", file=sys.stderr)
        return 2
      return 0
    if args.command == "label-steps":
      from jaxrl_llm.train.label_steps import label_steps

      try:
        stats = label_steps(args.policy, args.output, method=args.method, samples=args.samples,
                            rollouts=args.rollouts, prompts=args.prompts,
                            delimiter=args.delimiter, seed=args.seed)
      except ValueError as e:
        print(f"jaxrl-llm: {e}", file=sys.stderr)
        return 2
      print(json.dumps({"output": args.output, **stats["splits"],
                        "cache_hits": stats["cache_hits"]}))
      return 0
  except ConfigError as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  except (FileExistsError, FileNotFoundError) as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 -- bad data rows: a clear message, not a traceback.
    from jaxrl_llm.data.pipeline import BadRowError

    if not isinstance(e, BadRowError):
      raise
    print(f"jaxrl-llm: bad data: {e}", file=sys.stderr)
    return 2
  return 1


def _label(args) -> int:
  """``jaxrl-llm label``: writes DIR/train.jsonl (pair rows with ``probability``) and
  DIR/labels.json; bad arguments, a missing run or malformed input rows exit with status 2."""
  from jaxrl_llm.rewards import judge as judge_lib

  try:
    template = None
    if args.template_file:
      with open(args.template_file, encoding="utf-8") as f:
        template = f.read()
    if not os.path.exists(args.input):
      raise FileNotFoundError(f"--input {args.input!r} does not exist")
    rows = judge_lib.read_candidates(args.input)
    if not rows:
      raise ValueError(f"--input {args.input!r} has no candidate rows")
    judge = judge_lib.make_judge(args.judge, template=template)
    cache = args.cache or os.path.join(args.output, "label_cache.jsonl")
    pairs, stats = judge_lib.label_pairs(judge, rows, min_confidence=args.min_confidence,
                                         cache_path=cache, pairs=args.pairs)
  except ValueError as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  stats = dict(stats, judge=args.judge, input=os.path.abspath(args.input))
  try:
    path = judge_lib.write_labeled(args.output, pairs, stats,
                                   validation_fraction=args.validation_fraction,
                                   test_fraction=args.test_fraction, holdout_by=args.holdout_by)
  except ValueError as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(args.output, "labels.json"), encoding="utf-8") as f:
    split_pairs = json.load(f)["split_pairs"]
  for split, fraction in (("validation", args.validation_fraction), ("test", args.test_fraction)):
    if fraction > 0 and not split_pairs[split]:
      prompts = len({p["prompt"] for p in pairs})
      print(f"jaxrl-llm: label: the {split} split is empty (--{split}-fraction {fraction} of "
            f"{prompts} distinct prompts); --holdout-by row holds out candidate rows instead",
            file=sys.stderr)
  print(json.dumps({"output": path, **{k: stats[k] for k in ("rows", "pairs", "kept",
                                                              "identical", "low_confidence",
                                                              "cache_hits", "judged")}}))
  return 0


def _eval(args) -> int:
  import jax

  from jaxrl_llm.config import load_json
  from jaxrl_llm.train import Checkpointer, abstract_with_shardings, rl_loop, sft_loop

  config = load_json(os.path.join(args.run_dir, "config.json"))
  if args.best_of or args.scorer:
    return _best_of(args)
  if config.algorithm.name == "rft":  # the last round's policy, scored as the RFT loop scores
    from jaxrl_llm.rundir.artifacts import load_run
    from jaxrl_llm.train.label_steps import policy_sampler

    art = load_run(args.run_dir)
    setup, params = policy_sampler(art, args.run_dir)
    result = rl_loop.evaluate(setup, params, args.split, args.limit)
    print(json.dumps({"step": art.step, "split": args.split, **result}))
    return 0
  if config.algorithm.is_preference:
    print("jaxrl-llm: eval of DPO / reward-model runs: see RUN_DIR/eval.json (held-out metrics "
          "are written when the run finishes)", file=sys.stderr)
    return 2
  loop_build, evaluate = ((rl_loop.build_for_eval, rl_loop.evaluate) if config.algorithm.is_rl
                          else (sft_loop.build, sft_loop.evaluate))
  setup = loop_build(config, args.run_dir)
  ckpt = Checkpointer(os.path.join(args.run_dir, "checkpoints"), keep=config.train.keep_checkpoints,
                      async_save=False)
  step = ckpt.latest_step()
  if step is None:
    print(f"jaxrl-llm: {args.run_dir} has no complete checkpoint", file=sys.stderr)
    return 1
  shapes = getattr(setup, "fresh_state", None) or setup.init_state  # no I/O under eval_shape
  abstract = abstract_with_shardings(jax.eval_shape(shapes), setup.state_shardings)
  state, _ = ckpt.restore(step, abstract)
  ckpt.close()
  params = setup.policy_params(state) if config.algorithm.is_rl else state.params
  result = evaluate(setup, params, args.split, args.limit)
  print(json.dumps({"step": step, "split": args.split, **result}))
  return 0


def _best_of(args) -> int:
  """``jaxrl-llm eval RUN --best-of N --scorer rm:RUN`` (:mod:`jaxrl_llm.train.rerank`)."""
  from jaxrl_llm.rewards.learned import reward_function
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train.label_steps import policy_sampler
  from jaxrl_llm.train.rerank import best_of_n

  kind, _, scorer_run = (args.scorer or "").partition(":")
  if args.best_of < 1 or kind != "rm" or not scorer_run:
    print("jaxrl-llm: eval --best-of N needs N >= 1 and --scorer rm:RUN_DIR", file=sys.stderr)
    return 2
  try:
    scorer = reward_function(scorer_run, normalize=False)
    art = load_run(args.run_dir)
    setup, params = policy_sampler(art, args.run_dir)
    result = best_of_n(setup, params, scorer, args.split, n=args.best_of, limit=args.limit,
                       seed=args.seed)
  except ValueError as e:
    print(f"jaxrl-llm: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"step": art.step, "scorer": args.scorer, **result}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
