"""``jaxrl-llm launch --processes N -- run EXPERIMENT ...``: a multi-process run on this machine.

Starts N copies of ``jaxrl-llm <command>`` that join one JAX runtime (process 0 coordinates on
a free local port; :mod:`jaxrl_llm.parallel.distributed` reads the variables set here). With
``--devices-per-process K`` each process gets K fake CPU devices, so 2 × 4 makes the same
8-device mesh as one process with 8 — what the tests use to check that a multi-process run
equals a single-process one.

When one process fails, the others are usually blocked in a collective waiting for it: the
launcher gives them ``grace_s`` seconds to exit, stops the rest, and reports which process died
first and with what status (never a silent hang). SIGTERM / SIGINT sent to the launcher are
forwarded to every process (preemption: each checkpoints the current step and exits).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from jaxrl_llm.parallel import distributed


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base: dict, *, process_id: int, processes: int, port: int,
                devices_per_process: int | None) -> dict:
  """The environment of process ``process_id``."""
  env = dict(base)
  env[distributed.ENV_COORDINATOR] = f"127.0.0.1:{port}"
  env[distributed.ENV_NUM_PROCESSES] = str(processes)
  env[distributed.ENV_PROCESS_ID] = str(process_id)
  if devices_per_process:
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [
        f"--xla_force_host_platform_device_count={devices_per_process}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _status(code: int) -> str:
  if code < 0:
    name = signal.Signals(-code).name
    why = " (the JAX runtime aborted: a peer never joined or died)" if name == "SIGABRT" else ""
    return f"signal {name}{why}"
  return f"status {code}"


def launch(command: list[str], *, processes: int, devices_per_process: int | None = None,
           port: int | None = None, grace_s: float = 30.0, log=sys.stderr,
           program: list[str] | None = None) -> int:
  """Runs ``jaxrl-llm *command`` (or ``program *command``) as ``processes`` processes; returns
  the exit status: 0 when all succeed, else the first failure's (143 when they were
  preempted)."""
  if processes < 1:
    raise ValueError(f"--processes must be >= 1, got {processes}")
  if not command and program is None:
    raise ValueError("nothing to launch: give the command after --, e.g. "
                     "jaxrl-llm launch --processes 2 -- run sft-arithmetic")
  port = port or free_port()
  procs = [subprocess.Popen(
      [*(program or [sys.executable, "-m", "jaxrl_llm.cli"]), *command],
      env=process_env(os.environ, process_id=i, processes=processes, port=port,
                      devices_per_process=devices_per_process),
      stdin=subprocess.DEVNULL) for i in range(processes)]

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    failed = None  # (process id, status) of the first process to fail.
    deadline = None
    while [p.poll() for p in procs].count(None):  # Polls every process (no short-circuit).
      if failed is None:
        for i, p in enumerate(procs):
          if p.returncode not in (None, 0):
            failed = (i, p.returncode)
            deadline = time.monotonic() + grace_s
            break
      if deadline is not None and time.monotonic() > deadline:
        stopped = [i for i, p in enumerate(procs) if p.poll() is None]
        for i in stopped:
          procs[i].kill()
        for p in procs:
          p.wait()
        print(f"jaxrl-llm launch: process {failed[0]} of {processes} exited with "
              f"{_status(failed[1])}; stopped processes {stopped} after {grace_s:g} s (they "
              f"were waiting for it)", file=log)
        return failed[1] if failed[1] > 0 else 1
      time.sleep(0.1)
    codes = [p.returncode for p in procs]
    if failed is None:
      failed = next(((i, c) for i, c in enumerate(codes) if c != 0), None)
    if failed is None:
      return 0
    print(f"jaxrl-llm launch: process {failed[0]} of {processes} exited with "
          f"{_status(failed[1])} (all exit statuses: {codes})", file=log)
    return failed[1] if failed[1] > 0 else 1
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
