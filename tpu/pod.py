"""Cloud TPU VMs for jaxrl_llm: create, set up, run on every worker, fetch logs, delete.

Every subcommand builds `gcloud` commands and runs them; `--dry-run` prints them instead (what the
tests check, and a way to read exactly what would happen before paying for a slice):

  python tpu/pod.py --dry-run create --name rl --zone us-west4-a --accelerator v5litepod-8
  python tpu/pod.py setup  --name rl --zone us-west4-a          # wheel -> every worker, pip install
  python tpu/pod.py run    --name rl --zone us-west4-a -- run gsm8k-hf --set train.steps=200
  python tpu/pod.py logs   --name rl --zone us-west4-a [--worker 0]
  python tpu/pod.py fetch  --name rl --zone us-west4-a --run-dir runs/gsm8k --out ./runs
  python tpu/pod.py delete --name rl --zone us-west4-a

`run` starts the same `jaxrl-llm` command on all workers in the background (log in
~/jaxrl-llm.log on each) with `JAXRL_LLM_DISTRIBUTED=auto`: on a multi-host slice the workers join
one JAX run through the TPU VM's metadata (`jax.distributed.initialize()`).
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys

# Accelerator types this script knows, with the TPU VM software version to create them with.
RUNTIMES = {"v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
LOG = "~/jaxrl-llm.log"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runtime_for(accelerator: str) -> str:
  family, _, size = accelerator.rpartition("-")
  if family not in RUNTIMES or not size.isdigit():
    raise SystemExit(f"pod.py: unknown --accelerator {accelerator!r}; expected one of "
                     f"{', '.join(f + '-N' for f in RUNTIMES)} (e.g. v5litepod-8, v5p-8, v6e-8)")
  return RUNTIMES[family]


def _where(args) -> list[str]:
  out = [args.name, f"--zone={args.zone}"]
  if args.project:
    out.append(f"--project={args.project}")
  return out


def _ssh(args, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", *_where(args), f"--worker={worker}",
          f"--command={command}"]


def commands(args) -> list[list[str]]:
  """The gcloud (and local) commands of one subcommand, in order."""
  if args.cmd == "create":
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", *_where(args),
           f"--accelerator-type={args.accelerator}",
           f"--version={args.version or runtime_for(args.accelerator)}"]
    if args.spot:
      cmd.append("--spot")
    return [cmd]
  if args.cmd == "setup":
    wheel = args.wheel or "dist/jaxrl_llm-*.whl"
    steps = []
    if not args.wheel:
      steps.append([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", "dist", REPO])
    steps.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", wheel,
                  f"{args.name}:~/", f"--zone={args.zone}", "--worker=all"] +
                 ([f"--project={args.project}"] if args.project else []))
    install = ("python3 -m pip install -U pip && python3 -m pip install "
               f"\"$(ls ~/{os.path.basename(wheel)} | tail -n 1)[tpu]\"")
    steps.append(_ssh(args, install))
    return steps
  if args.cmd == "run":
    rest = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not rest:
      raise SystemExit("pod.py run: give the jaxrl-llm command after --, e.g. -- run gsm8k-hf")
    line = (f"JAXRL_LLM_DISTRIBUTED=auto nohup jaxrl-llm {shlex.join(rest)} > {LOG} 2>&1 "
            "< /dev/null &")
    return [_ssh(args, line)]
  if args.cmd == "logs":
    return [_ssh(args, f"tail -n {args.lines} {LOG}", worker=str(args.worker))]
  if args.cmd == "fetch":
    return [["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse",
             f"{args.name}:{args.run_dir}", args.out, f"--zone={args.zone}", "--worker=0"] +
            ([f"--project={args.project}"] if args.project else [])]
  if args.cmd == "delete":
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", *_where(args), "--quiet"]]
  raise SystemExit(f"pod.py: unknown command {args.cmd!r}")


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="pod.py", description=__doc__.split("\n\n")[0])
  p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  sub = p.add_subparsers(dest="cmd", required=True)
  for name in ("create", "setup", "run", "logs", "fetch", "delete"):
    s = sub.add_parser(name)
    s.add_argument("--name", required=True, help="TPU VM name")
    s.add_argument("--zone", required=True)
    s.add_argument("--project")
    if name == "create":
      s.add_argument("--accelerator", required=True, help="e.g. v5litepod-8, v5p-8, v6e-8")
      s.add_argument("--version", help="TPU VM software version (default: per accelerator)")
      s.add_argument("--spot", action="store_true", help="a spot (preemptible) slice")
    if name == "setup":
      s.add_argument("--wheel", help="an existing jaxrl_llm wheel (default: build one)")
    if name == "run":
      s.add_argument("command", nargs=argparse.REMAINDER, metavar="-- JAXRL-LLM ARGS")
    if name == "logs":
      s.add_argument("--worker", default="0")
      s.add_argument("--lines", type=int, default=200)
    if name == "fetch":
      s.add_argument("--run-dir", required=True, help="run directory on worker 0")
      s.add_argument("--out", default=".", help="local destination")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  for cmd in commands(args):
    if args.dry_run:
      print(shlex.join(cmd))
      continue
    if any("*" in c for c in cmd):  # A wheel glob: expand it locally.
      cmd = [sorted(glob.glob(c))[-1] if "*" in c and glob.glob(c) else c for c in cmd]
    code = subprocess.call(cmd)
    if code:
      print(f"pod.py: {shlex.join(cmd[:6])} ... failed with status {code}", file=sys.stderr)
      return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
