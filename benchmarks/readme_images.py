"""The README's example images of the four run-analysis commands, drawn from the sparsity
study's runs (``benchmarks/sparsity_study.py``):

  python benchmarks/readme_images.py [--study runs/sparsity-study]

* ``benchmarks/readme_sparsity.png``: ``jaxrl-llm analyze sparsity`` of the GRPO run at the
  paper's step size (``grpo_lr1e-6``), where the update is sparse;
* ``benchmarks/readme_entropy.png``: ``jaxrl-llm analyze entropy`` of the GRPO run (seed 0);
* ``benchmarks/readme_compare.png``: ``jaxrl-llm compare`` of GRPO, PPO and the subnetwork-only
  GRPO rerun;
* ``benchmarks/readme_report.html``: ``jaxrl-llm report`` of the GRPO run.

Every file is what the command writes, copied here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def main(argv=None) -> int:
  from jaxrl_llm import cli

  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--study", default=os.path.join(REPO, "runs", "sparsity-study"))
  args = ap.parse_args(argv)
  grpo = os.path.join(args.study, "grpo")
  warm = os.path.join(args.study, "warm", "sft")
  tmp = os.path.join(args.study, "readme")
  # The sparsity and entropy analyses go to the run's own analysis/ (the report shows them).
  analysis = os.path.join(grpo, "analysis")
  small_step = os.path.join(args.study, "grpo_lr1e-6")
  steps = [
      (["analyze", "sparsity", small_step, "--before", warm],
       os.path.join(small_step, "analysis", "sparsity.png"), "readme_sparsity.png"),
      (["analyze", "sparsity", grpo, "--before", warm], os.path.join(analysis, "sparsity.png"),
       None),
      (["analyze", "entropy", grpo], os.path.join(analysis, "entropy.png"),
       "readme_entropy.png"),
      (["compare", grpo, os.path.join(args.study, "ppo"),
        os.path.join(args.study, "grpo_subnetwork"), "--smooth", "5", "--out",
        os.path.join(tmp, "compare.png")], os.path.join(tmp, "compare.png"),
       "readme_compare.png"),
      (["report", grpo, "--out", os.path.join(tmp, "report.html")],
       os.path.join(tmp, "report.html"), "readme_report.html"),
  ]
  for argv_, produced, target in steps:
    code = cli.main(argv_)
    if code:
      raise SystemExit(f"jaxrl-llm {' '.join(argv_)} exited {code}")
    if target:
      shutil.copy(produced, os.path.join(HERE, target))
      print(json.dumps({"command": "jaxrl-llm " + argv_[0], "file": f"benchmarks/{target}"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
