"""Untrusted SQL in killable worker processes: a hard wall clock and a memory cap per query.

:func:`~jaxrl_llm.envs.text2sql.execution.execute_readonly` bounds a query from inside SQLite, but
a single call of a built-in function cannot be interrupted by the progress handler, and in the
trainer's process a query that holds the CPU or grows memory could only be abandoned on a thread.
Here every query runs in a worker process:

* a worker is a fresh interpreter (``python -I``, clean environment) that loads only
  ``execution.py`` (standard library) and answers one query at a time over pipes; its address
  space is capped (``RLIMIT_AS``, ``memory_mb``) and SQLite's heap has a hard limit below that;
* the parent waits at most ``timeout_s`` + ``grace_s`` for the answer, then SIGKILLs the worker's
  process group; that query is a ``"timeout"`` and a new worker starts for the next one;
* a worker that dies (memory, crash) costs its own query only (``"runtime"``), likewise replaced;
* results come back as JSON of SQLite's value types (int, float, text, blob, NULL), with the row
  and byte caps applied in the worker.

:class:`SQLWorkerPool` runs queries on up to ``max_workers`` workers at once. The pool never
raises for a query; a missing database raises ``FileNotFoundError`` (a configuration error).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from jaxrl_llm.envs.text2sql.execution import RUNTIME, TIMEOUT, ExecutionResult
from jaxrl_llm.subproc import kill_idle, kill_worker, read_some

_WORKER = r'''
import importlib.util, json, os, resource, sys
mem = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
spec = importlib.util.spec_from_file_location("_t2s_execution", sys.argv[1])
ex = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = ex
spec.loader.exec_module(ex)
def enc(v):
  if v is None:
    return ["n", 0]
  if type(v) is int:
    return ["i", str(v)]
  if type(v) is float:
    return ["f", repr(v)]
  if type(v) is bytes:
    return ["y", v.hex()]
  return ["s", str(v)]
out = os.fdopen(1, "w", encoding="utf-8")
sys.stdout = sys.stderr
out.write("ready\n"); out.flush()
for line in sys.stdin:
  q = json.loads(line)
  try:
    if not os.path.isfile(q["db"]):
      reply = {"missing": q["db"]}
    else:
      r = ex.execute_readonly(q["db"], q["sql"], **q["limits"])
      reply = {"kind": r.kind, "rows": [[enc(v) for v in row] for row in r.rows],
               "columns": list(r.columns), "error": r.error, "elapsed_s": r.elapsed_s}
  except MemoryError:
    os._exit(97)
  except Exception as e:
    reply = {"kind": "runtime", "rows": [], "columns": [], "error": f"{type(e).__name__}: {e}",
             "elapsed_s": 0.0}
  out.write(json.dumps(reply) + "\n"); out.flush()
'''


def _decode_value(v: Any) -> Any:
  tag, p = v
  if tag == "n":
    return None
  if tag == "i":
    return int(p)
  if tag == "f":
    return float(p)
  if tag == "y":
    return bytes.fromhex(p)
  if tag == "s":
    return str(p)
  raise ValueError(f"unknown value tag {tag!r}")


class _Worker:
  """One worker process (started on first use)."""

  def __init__(self, memory_mb: int, startup_timeout_s: float):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "execution.py")
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    self.proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _WORKER, path, str(memory_mb << 20)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        start_new_session=True, close_fds=True)
    self.buf = b""
    if self.readline(time.monotonic() + startup_timeout_s) != b"ready":
      self.kill()
      raise RuntimeError("the SQL worker process did not start")

  def readline(self, deadline: float) -> bytes | None:
    while b"\n" not in self.buf:
      chunk = read_some(self.proc.stdout.fileno(), deadline)
      if not chunk:  # time-out (None) or a dead worker (b"").
        return None
      self.buf += chunk
    line, _, self.buf = self.buf.partition(b"\n")
    return line

  def kill(self) -> None:
    kill_worker(self.proc)


@dataclasses.dataclass(frozen=True)
class QueryLimits:
  """Limits of one query (see :func:`~jaxrl_llm.envs.text2sql.execution.execute_readonly`)."""

  timeout_s: float = 2.0
  max_rows: int = 10_000
  max_sql_chars: int = 4_000
  immutable: bool = False
  max_result_bytes: int = 4 << 20


class SQLWorkerPool:
  """Runs untrusted queries in killable worker processes, up to ``max_workers`` at once.

  Args:
    max_workers: worker processes (default 2, at most the CPU count).
    memory_mb: address-space cap of each worker (SQLite's hard heap limit is half of it).
    grace_s: how long past a query's own ``timeout_s`` the parent waits before killing the worker.
    startup_timeout_s: limit for a worker to start.
  """

  def __init__(self, max_workers: int | None = None, *, memory_mb: int = 512,
               grace_s: float = 0.5, startup_timeout_s: float = 30.0):
    if max_workers is None:
      max_workers = max(1, min(2, os.cpu_count() or 1))
    if not isinstance(max_workers, int) or max_workers < 1:
      raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
    if not isinstance(memory_mb, int) or memory_mb < 64:
      raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
    self.max_workers = max_workers
    self.memory_mb = memory_mb
    self.grace_s = float(grace_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self._idle: queue.Queue = queue.LifoQueue()  # warm workers first.
    for _ in range(max_workers):
      self._idle.put(None)  # a slot; the worker starts on first use.
    self._executor = concurrent.futures.ThreadPoolExecutor(max_workers,
                                                           thread_name_prefix="jaxrl-sql")
    self._lock = threading.Lock()
    self.kills = 0
    self._closed = False

  def execute(self, db_path: str | os.PathLike, sql: str,
              limits: QueryLimits = QueryLimits()) -> ExecutionResult:
    """Runs one query in a worker. Never raises for the query; FileNotFoundError for a missing
    database."""
    worker = self._idle.get()
    start = time.monotonic()
    try:
      if worker is None:
        worker = _Worker(self.memory_mb, self.startup_timeout_s)
      request = {"db": os.path.abspath(os.fspath(db_path)), "sql": sql,
                 "limits": dict(dataclasses.asdict(limits),
                                heap_limit_bytes=(self.memory_mb << 20) // 2)}
      try:
        worker.proc.stdin.write((json.dumps(request) + "\n").encode("utf-8"))
        worker.proc.stdin.flush()
      except (OSError, ValueError):
        worker.kill()
        worker = None
        return ExecutionResult(kind=RUNTIME, error="the SQL worker process died",
                               elapsed_s=time.monotonic() - start)
      line = worker.readline(start + limits.timeout_s + self.grace_s)
      if line is None:
        died = worker.proc.poll() is not None
        worker.kill()
        worker = None
        with self._lock:
          self.kills += 1
        if died:
          return ExecutionResult(kind=RUNTIME, error="the SQL worker process died (memory cap?)",
                                 elapsed_s=time.monotonic() - start)
        return ExecutionResult(kind=TIMEOUT, error=f"killed after timeout_s={limits.timeout_s} "
                               f"+ grace {self.grace_s} s", elapsed_s=time.monotonic() - start)
      reply = json.loads(line)
      if "missing" in reply:
        raise FileNotFoundError(f"SQLite database not found: {reply['missing']}")
      rows = tuple(tuple(_decode_value(v) for v in row) for row in reply["rows"])
      return ExecutionResult(kind=str(reply["kind"]), rows=rows,
                             columns=tuple(str(c) for c in reply["columns"]),
                             error=str(reply["error"]), elapsed_s=time.monotonic() - start)
    finally:
      self._idle.put(worker)

  def worker_pids(self) -> list[int]:
    """Process ids of the idle workers that are running now (diagnostics and tests)."""
    with self._idle.mutex:
      return [w.proc.pid for w in self._idle.queue if w is not None and w.proc.poll() is None]

  def execute_many(self, jobs: Sequence[tuple[str, str]],
                   limits: QueryLimits = QueryLimits()) -> list[ExecutionResult]:
    """Runs ``(db_path, sql)`` jobs concurrently; results in job order."""
    return list(self._executor.map(lambda j: self.execute(j[0], j[1], limits), list(jobs)))

  def close(self) -> None:
    """Stops the workers (idle ones at once; running queries finish first)."""
    if self._closed:
      return
    self._closed = True
    self._executor.shutdown(wait=True)
    kill_idle(self._idle)

  def __enter__(self) -> SQLWorkerPool:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_shared: SQLWorkerPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> SQLWorkerPool:
  """The process-wide pool the registered Text2SQL reward uses (closed at exit)."""
  global _shared
  with _shared_lock:
    if _shared is None or _shared._closed:
      _shared = SQLWorkerPool()
      atexit.register(_shared.close)
    return _shared
