"""A reward function in killable worker processes: its time-out kills the work, its memory is capped.

:class:`~jaxrl_llm.rewards.base.RewardRunner` can only stop *waiting* for a function that runs on
a thread. :class:`ProcessRewardFn` runs a module-level function (importable by reference:
``fn.__module__`` / ``fn.__qualname__``) in persistent worker processes instead:

* a worker is ``sys.executable`` with the parent's ``sys.path``, started on first use; it imports
  the function's module once and then serves calls; its address space is capped (``RLIMIT_AS``,
  ``memory_mb``; 0 = no cap);
* a call that runs past its time-out SIGKILLs the worker's process group (everything the function
  started with it) and raises :class:`TimeoutError`; the next call starts a fresh worker;
* a worker that dies (memory cap, crash) raises :class:`RewardWorkerError`; so does an exception of
  the function (its type and message travel back, not the object);
* the request goes to the worker pickled (trusted to trusted); the reply is raw float32 bytes or
  an error text, never a pickle, so nothing the worker sends back can run code in the trainer.

Several workers (``workers``) serve concurrent calls (the runner's row-by-row retries).
"""

from __future__ import annotations

import importlib
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxrl_llm.subproc import kill_idle, kill_worker, read_some

_HEADER = struct.Struct("<cQ")  # kind (b"V" values, b"E" error, b"T" bad result, b"R" ready), size

_WORKER = r'''
import importlib, os, pickle, resource, struct, sys
H = struct.Struct("<cQ")
mem = int(sys.argv[1])
if mem:
  resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
inp = sys.stdin.buffer
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)  # prints of the function go to stderr, never into the reply channel.
sys.stdout = sys.stderr
def read():
  head = inp.read(8)
  if len(head) < 8:
    os._exit(0)
  (n,) = struct.unpack("<Q", head)
  return pickle.loads(inp.read(n))
def send(kind, data):
  out.write(H.pack(kind, len(data)) + data)
  out.flush()
spec = read()
sys.path[:] = spec["path"]
try:
  fn = importlib.import_module(spec["module"])
  for part in spec["qualname"].split("."):
    fn = getattr(fn, part)
  import numpy as np
except BaseException as e:
  send(b"E", f"import failed: {type(e).__name__}: {e}".encode("utf-8", "replace")[:2000])
  os._exit(1)
send(b"R", b"")
while True:
  prompts, completions, columns = read()
  try:
    raw = fn(prompts, completions, **columns)
  except MemoryError:
    send(b"E", b"MemoryError (the worker's memory cap)")
    continue
  except BaseException as e:
    send(b"E", f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:2000])
    continue
  try:
    values = np.asarray(raw, dtype=np.float32).reshape(-1)
  except BaseException as e:
    send(b"T", f"returned {type(raw).__name__} that is not a float array: {e}".encode(
        "utf-8", "replace")[:2000])
    continue
  send(b"V", values.tobytes())
'''


class RewardWorkerError(RuntimeError):
  """The function raised in its worker, or the worker died."""


class RewardResultError(TypeError):
  """The function returned something that is not a float array."""


def reference(fn: Callable[..., Any]) -> tuple[str, str] | None:
  """``(module, qualname)`` when ``fn`` can be imported by reference in another process, else None
  (lambdas, closures, bound methods, ``functools.partial``, functions of ``__main__``)."""
  module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
  if not module or not qualname or module == "__main__" or "<" in qualname:
    return None
  try:
    obj = importlib.import_module(module)
    for part in qualname.split("."):
      obj = getattr(obj, part)
  except (ImportError, AttributeError):
    return None
  return (module, qualname) if obj is fn else None


class _Worker:
  def __init__(self, ref: tuple[str, str], memory_mb: int, startup_timeout_s: float):
    self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(memory_mb << 20)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 start_new_session=True, close_fds=True)
    self.buf = b""
    self.send({"path": list(sys.path), "module": ref[0], "qualname": ref[1]})
    kind, data = self.receive(time.monotonic() + startup_timeout_s)
    if kind != b"R":
      self.kill()
      raise RewardWorkerError(f"reward worker for {ref[0]}:{ref[1]} did not start: "
                              f"{data.decode('utf-8', 'replace') if data else 'no reply'}")

  def send(self, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
    self.proc.stdin.flush()

  def _fill(self, n: int, deadline: float) -> bool:
    while len(self.buf) < n:
      chunk = read_some(self.proc.stdout.fileno(), deadline, max(1 << 16, n - len(self.buf)))
      if chunk is None:
        return False
      if not chunk:
        raise EOFError
      self.buf += chunk
    return True

  def receive(self, deadline: float) -> tuple[bytes | None, bytes]:
    """(kind, payload), or (None, b"") at the deadline. EOFError if the worker died."""
    if not self._fill(_HEADER.size, deadline):
      return None, b""
    kind, n = _HEADER.unpack(self.buf[:_HEADER.size])
    if not self._fill(_HEADER.size + n, deadline):
      return None, b""
    data = self.buf[_HEADER.size:_HEADER.size + n]
    self.buf = self.buf[_HEADER.size + n:]
    return kind, data

  def kill(self) -> None:
    kill_worker(self.proc)


class ProcessRewardFn:
  """Calls a reward function by reference in killable worker processes (module docstring).

  Args:
    fn: a module-level reward function (see :func:`reference`).
    memory_mb: address-space cap of each worker (0: none).
    workers: worker processes (concurrent calls).
    startup_timeout_s: limit for a worker to start and import the function's module.
  Raises:
    ValueError: ``fn`` cannot be imported by reference.
  """

  def __init__(self, fn: Callable[..., Any], *, memory_mb: int = 4096, workers: int = 2,
               startup_timeout_s: float = 60.0):
    ref = reference(fn)
    if ref is None:
      raise ValueError(f"reward function {fn!r} cannot run in a worker process: it must be a "
                       "module-level function importable by module and name (not a lambda, "
                       "closure, bound method or a function of __main__)")
    self.ref, self.memory_mb, self.startup_timeout_s = ref, int(memory_mb), startup_timeout_s
    self._idle: queue.Queue = queue.LifoQueue()  # warm workers first.
    for _ in range(max(1, workers)):
      self._idle.put(None)
    self._lock = threading.Lock()
    self.kills = 0

  def __call__(self, prompts: Sequence[str], completions: Sequence[str],
               columns: Mapping[str, Sequence[Any]], timeout_s: float) -> np.ndarray:
    """float32 ``[B]`` values (shape not checked here), or TimeoutError / RewardWorkerError /
    RewardResultError."""
    worker = self._idle.get()
    try:
      if worker is None:  # start-up (imports) does not count against the call's time-out.
        worker = _Worker(self.ref, self.memory_mb, self.startup_timeout_s)
      start = time.monotonic()
      try:
        worker.send((list(prompts), list(completions),
                     {k: list(v) for k, v in columns.items()}))
        kind, data = worker.receive(start + timeout_s)
      except (EOFError, OSError, ValueError):
        worker.kill()
        worker = None
        raise RewardWorkerError("the reward worker process died (memory cap or crash)") from None
      if kind is None:
        worker.kill()
        worker = None
        with self._lock:
          self.kills += 1
        raise TimeoutError(f"did not return within {timeout_s} s (worker killed)")
      if kind == b"V":
        return np.frombuffer(data, np.float32).copy()
      text = data.decode("utf-8", "replace")
      raise (RewardResultError if kind == b"T" else RewardWorkerError)(text)
    finally:
      self._idle.put(worker)

  def close(self) -> None:
    """Stops the idle workers."""
    kill_idle(self._idle)
