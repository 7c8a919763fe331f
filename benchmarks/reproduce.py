"""The headline numbers of the default experiments, rerun from the code: one script for README.md.

  python benchmarks/reproduce.py            # the full default experiments (about 10 minutes)
  python benchmarks/reproduce.py --short    # the shortened variant the test suite reruns

Full mode runs ``arithmetic-grpo`` and ``sft-arithmetic`` exactly as ``jaxrl-llm run`` does, writes
``benchmarks/headline.json`` (numbers, commit, date, machine) and rewrites the block of README.md
between the ``headline`` markers from it; ``tests/test_reproduce.py`` checks that the README block is
the rendering of that file, so the README cannot quote numbers the script did not produce.

Short mode runs a shortened ``arithmetic-grpo`` (300 SFT steps, 30 GRPO steps, 300 test rows) on 8
fake CPU devices, the test suite's layout, and writes ``benchmarks/short_run.json``. The slow test
reruns it and compares: exactly when the CPU (model and feature flags) and the jax version are the
ones recorded, within ``TOLERANCE`` otherwise. A change that moves the numbers must rerun this script (and say why in RESULTS.md).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HEADLINE = os.path.join(HERE, "headline.json")
SHORT = os.path.join(HERE, "short_run.json")
README = os.path.join(REPO, "README.md")
START, END = "<!-- headline:start (benchmarks/reproduce.py writes this block) -->", \
    "<!-- headline:end -->"
TOLERANCE = 0.05  # accuracy, when the CPU model differs from the recorded one.

SHORT_OVERRIDES = ["init.sft_steps=300", "init.sft_warmup_steps=30", "train.steps=30",
                   "train.eval_every=0", "train.test_examples=300", "train.checkpoint_every=30",
                   "logging.progress=off", "logging.tensorboard=false"]


def machine() -> dict:
  """The CPU model and a hash of its feature flags (``/proc/cpuinfo``: XLA's CPU code depends on
  the instruction set, and a cloud CPU's model name can be as vague as "AMD EPYC"), core count,
  Python and jax versions."""
  import hashlib

  fields: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's entries.
  except OSError:
    pass
  model = fields.get("model name") or platform.processor() or platform.machine()
  flags = " ".join(sorted(fields.get("flags", "").split()))
  import jax

  return {"cpu_model": model, "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
          "cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__}


def same_cpu(a: dict, b: dict) -> bool:
  """Whether two :func:`machine` records name the same CPU model with the same feature flags."""
  return all(a.get(k) == b.get(k) for k in ("cpu_model", "cpu_flags_sha256", "jax"))


def commit() -> str:
  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                         capture_output=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           text=True, capture_output=True, check=True).stdout.strip()
    return out + ("+changes" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def run_experiment(name: str, overrides: list[str], run_dir: str) -> dict:
  """Runs experiment ``name`` with ``overrides`` in ``run_dir``; its held-out numbers and time."""
  sys.path.insert(0, REPO)
  from experiments import get_experiment
  from jaxrl_llm.config import apply_overrides
  from jaxrl_llm.train import new_run_dir, run

  config = apply_overrides(get_experiment(name), overrides) if overrides else get_experiment(name)
  run_dir = new_run_dir(config, run_dir)
  start = time.monotonic()
  run(config, run_dir)
  out = {"experiment": name, "overrides": overrides, "wall_s": round(time.monotonic() - start, 1)}
  with open(os.path.join(run_dir, "eval.json")) as f:
    out.update(json.load(f))
  return out


def render(headline: dict) -> str:
  """The README block for ``headline.json``."""
  grpo, sft = headline["results"]["arithmetic-grpo"], headline["results"]["sft-arithmetic"]
  m = headline["machine"]
  return "\n".join([
      START,
      f"   On our {m['cores']}-core CPU ({m['cpu_model']}) the whole run took "
      f"{grpo['wall_s'] / 60:.0f} min and lifted held-out accuracy from "
      f"{grpo['test/accuracy_before']:.3f} to {grpo['test/accuracy']:.3f} "
      f"({100 * grpo['test/improvement']:+.1f} points); `sft-arithmetic` reached "
      f"{sft['test/exact_match']:.3f} test exact match in {sft['wall_s'] / 60:.0f} min "
      f"(`benchmarks/headline.json`: commit {headline['commit']}, {headline['date']}, written by "
      "`python benchmarks/reproduce.py`). Same seed, same numbers on every run.",
      END])


def update_readme(headline: dict) -> None:
  with open(README, encoding="utf-8") as f:
    text = f.read()
  i, j = text.index(START), text.index(END) + len(END)
  with open(README, "w", encoding="utf-8") as f:
    f.write(text[:i] + render(headline) + text[j:])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--short", action="store_true", help="the shortened variant the tests rerun")
  args = ap.parse_args()
  if args.short:
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  with tempfile.TemporaryDirectory() as tmp:
    os.environ.setdefault("JAXRL_LLM_DATA_DIR", os.path.join(tmp, "tfds"))
    if args.short:
      result = run_experiment("arithmetic-grpo", SHORT_OVERRIDES, os.path.join(tmp, "short"))
      record = {"commit": commit(), "date": datetime.date.today().isoformat(),
                "machine": machine(), "devices": 8, "result": result}
      with open(SHORT, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
      print(json.dumps(record, indent=1, sort_keys=True))
      return
    results = {name: run_experiment(name, [], os.path.join(tmp, name))
               for name in ("arithmetic-grpo", "sft-arithmetic")}
  headline = {"commit": commit(), "date": datetime.date.today().isoformat(),
              "machine": machine(), "results": results}
  with open(HEADLINE, "w") as f:
    json.dump(headline, f, indent=1, sort_keys=True)
  update_readme(headline)
  print(render(headline))


if __name__ == "__main__":
  main()
