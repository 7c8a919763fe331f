"""Small helpers for the framework's long-lived worker processes (reward functions, SQL queries):
reading a pipe against a deadline and killing a worker's whole process group."""

from __future__ import annotations

import os
import queue
import select
import signal
import subprocess
import time


def read_some(fd: int, deadline: float, size: int = 1 << 16) -> bytes | None:
  """Up to ``size`` bytes from ``fd`` once it is readable: ``b""`` at end of file, None when
  ``deadline`` (a ``time.monotonic()`` value) passes first."""
  left = deadline - time.monotonic()
  if left <= 0 or not select.select([fd], [], [], left)[0]:
    return None
  return os.read(fd, size)


def kill_worker(proc: subprocess.Popen) -> None:
  """SIGKILLs ``proc``'s process group (it was started with ``start_new_session=True``), reaps it
  and closes its pipes."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  proc.wait()
  for f in (proc.stdin, proc.stdout):
    if f is not None:
      try:
        f.close()
      except OSError:
        pass


def kill_idle(slots: queue.Queue) -> None:
  """Empties a pool's queue of idle workers (None marks a slot whose worker has not started),
  killing each worker (anything with a ``kill()``)."""
  while True:
    try:
      worker = slots.get_nowait()
    except queue.Empty:
      return
    if worker is not None:
      worker.kill()
