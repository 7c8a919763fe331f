"""Reward functions: batched host callables, and a runner that never lets one kill a run silently.

A reward function is any callable ``fn(prompts: list[str], completions: list[str], **columns)
-> float32[B]`` where ``columns`` are the dataset's other fields (``answer=[...]`` for the
arithmetic and math tasks), one entry per row. It runs on the host, after decoding, so it may
parse text, call a verifier, or execute code in a sandbox (issue-9 rewards).

:class:`RewardRunner` calls several functions with weights and guards every call:

* one hostile row costs only itself: when the batch call raises or times out, every row is scored
  again on its own (concurrently, each with ``row_timeout_s``), and only the rows that fail alone
  get the failure outcome; a wrong-shaped or non-numeric result (a bug of the function) gives
  every row the outcome; a NaN/inf in a result affects only that row;
* the outcome is ``exclude`` (NaN: the row is unscorable -- left out of group statistics and given
  advantage 0, docs/algorithms.md §1.6), ``fallback`` (a fixed reward) or ``raise``
  (:class:`RewardError`; the RL loop checkpoints before stopping);
* each case is counted per row and function (``reward/<name>/errors|nonfinite|timeouts``), and
  the wall time of every call is kept (:meth:`RewardRunner.timing`: p50 / p99 per function, which
  the RL loop writes to ``perf.jsonl``).

Time-outs: the built-in rewards that run untrusted work do it in processes they kill at their own
per-row limits (code: :mod:`jaxrl_llm.rewards.sandbox`; SQL:
:mod:`jaxrl_llm.envs.text2sql.worker`; symbolic math: its checker process), so they return within
their limits whatever a completion does. Any other function importable by reference runs, with
``isolation="process"`` or ``"auto"`` (the RL loop's default, ``reward.isolation``), in killable
worker processes with a memory cap (:mod:`jaxrl_llm.rewards.isolation`): its time-out kills the
work. Only functions that cannot run elsewhere (lambdas, closures, bound methods) stay on a
thread, where the limit just stops waiting (a Python thread cannot be killed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from jaxrl_llm.rewards.isolation import ProcessRewardFn, RewardResultError, reference

ISOLATION_MODES = ("thread", "process", "auto")


class RewardFn(Protocol):
  def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> Any:
    ...


class RewardError(RuntimeError):
  """A reward function failed and ``reward.on_error='raise'``. Names the function and the cause."""


class _BadResult(TypeError):
  """The function returned a wrong-shaped or non-numeric result: a bug of the function, not of a
  row, so every row gets the failure outcome (no row-by-row retry)."""


def call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> Any:
  """Runs ``fn()`` on a daemon thread; returns its result, re-raises its exception, or raises
  :class:`TimeoutError` after ``timeout_s`` seconds (the thread is abandoned, not killed)."""
  box: dict[str, Any] = {}

  def target():
    try:
      box["value"] = fn()
    except BaseException as e:  # noqa: BLE001 -- handed to the caller.
      box["error"] = e

  thread = threading.Thread(target=target, daemon=True, name="jaxrl-reward")
  thread.start()
  thread.join(timeout_s)
  if thread.is_alive():
    raise TimeoutError(f"did not return within {timeout_s} s")
  if "error" in box:
    raise box["error"]
  return box["value"]


@dataclasses.dataclass(frozen=True)
class RewardSpec:
  """One reward function with its name (for metrics) and weight in the total."""

  name: str
  fn: RewardFn
  weight: float = 1.0


@dataclasses.dataclass
class RewardResult:
  """Per-row rewards of one batch.

  Attributes:
    total: float32 ``[B]``, ``Σ_k w_k·r_k`` (NaN where a term is unscorable).
    per_function: name -> float32 ``[B]`` raw values (before weighting).
    counts: name -> {"errors", "nonfinite", "timeouts"} for this batch.
  """

  total: np.ndarray
  per_function: dict[str, np.ndarray]
  counts: dict[str, dict[str, int]]


class RewardRunner:
  """Calls reward functions on a batch with time-outs, per-row isolation and the failure policy.

  Args:
    specs: the functions, names and weights.
    timeout_s: limit of a batch call.
    on_error: "exclude", "fallback" or "raise".
    fallback_reward: the reward given under "fallback".
    row_timeout_s: limit of each single-row call when a batch call failed (default
      ``min(timeout_s, 10)``).
    max_row_workers: single-row calls run at once.
    isolation: "thread" (call in this process; a time-out stops waiting), "process" (every
      function runs in killable worker processes, :class:`~jaxrl_llm.rewards.isolation.
      ProcessRewardFn`: a time-out kills the work; each function must be importable by
      reference) or "auto" (process where a function is importable by reference, else thread).
    memory_mb: address-space cap of each worker process (0: none).
  """

  def __init__(self, specs: Sequence[RewardSpec], *, timeout_s: float = 30.0,
               on_error: str = "exclude", fallback_reward: float = 0.0,
               row_timeout_s: float | None = None, max_row_workers: int = 8,
               isolation: str = "thread", memory_mb: int = 4096):
    if on_error not in ("exclude", "fallback", "raise"):
      raise ValueError(f"on_error must be 'exclude', 'fallback' or 'raise', got {on_error!r}")
    if isolation not in ISOLATION_MODES:
      raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    if not specs:
      raise ValueError("RewardRunner needs at least one reward function")
    self.specs = list(specs)
    self.timeout_s = timeout_s
    self.row_timeout_s = float(row_timeout_s if row_timeout_s is not None else
                               min(timeout_s, 10.0))
    self.max_row_workers = max_row_workers
    self.on_error = on_error
    self.fallback = float(fallback_reward)
    self._times = {spec.name: collections.deque(maxlen=256) for spec in self.specs}
    self._row_offset = 0  # Rows of this process's share start here (messages name global rows).
    self.isolation = isolation
    self._workers: dict[str, ProcessRewardFn] = {}
    for spec in self.specs:
      if isolation == "process" or (isolation == "auto" and reference(spec.fn) is not None):
        self._workers[spec.name] = ProcessRewardFn(spec.fn, memory_mb=memory_mb,
                                                   workers=min(2, max_row_workers))

  def close(self) -> None:
    """Stops the worker processes of process-isolated functions (idempotent); later calls run
    those functions on threads."""
    for worker in self._workers.values():
      worker.close()
    self._workers = {}

  def _failed_value(self, spec: RewardSpec, what: str, cause: BaseException | str):
    if self.on_error == "raise":
      raise RewardError(f"reward function {spec.name!r} {what}: {cause!r}") from (
          cause if isinstance(cause, BaseException) else None)
    return self.fallback if self.on_error == "fallback" else np.nan

  def _call(self, spec: RewardSpec, prompts: list[str], completions: list[str],
            columns: Mapping[str, Sequence[Any]], timeout_s: float) -> np.ndarray:
    """One guarded call: float32 ``[b]`` or an exception (TimeoutError for a time-out)."""
    b = len(completions)
    worker = self._workers.get(spec.name)
    if worker is not None:
      try:
        raw = worker(prompts, completions, columns, timeout_s)
      except RewardResultError as e:
        raise _BadResult(str(e)) from None
    else:
      raw = call_with_timeout(lambda: spec.fn(list(prompts), list(completions), **columns),
                              timeout_s)
    try:
      values = np.asarray(raw, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as e:
      raise _BadResult(f"returned {type(raw).__name__} that is not a float array: {e}") from e
    if values.shape != (b,):
      raise _BadResult(f"returned {values.shape[0]} values for a batch of {b}")
    return values

  def score_one(self, spec: RewardSpec, prompts: list[str], completions: list[str],
                columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, dict[str, int]]:
    """Raw values of one function, float32 ``[B]``, with failures already replaced."""
    b = len(completions)
    counts = {"errors": 0, "nonfinite": 0, "timeouts": 0}
    start = time.perf_counter()
    try:
      values = self._call(spec, prompts, completions, columns, self.timeout_s)
    except Exception as e:  # noqa: BLE001 -- any failure of user code is handled by policy.
      batch_error = e
    else:
      batch_error = None
    if batch_error is not None:
      if b == 1 or isinstance(batch_error, _BadResult):
        rows = [batch_error] * b
      else:  # Find the rows that fail on their own; the others keep their rewards.
        rows = self._score_rows(spec, prompts, completions, columns)
      values = np.zeros((b,), np.float32)
      failed = np.zeros((b,), bool)
      for i, r in enumerate(rows):
        if isinstance(r, BaseException):
          failed[i] = True
          timed_out = isinstance(r, TimeoutError)
          counts["timeouts" if timed_out else "errors"] += 1
          values[i] = self._failed_value(spec, f"{'timed out' if timed_out else 'raised'} on "
                                         f"row {i + self._row_offset}", r)
        else:
          values[i] = r
    else:
      failed = np.zeros((b,), bool)
    self._times[spec.name].append(time.perf_counter() - start)
    bad_rows = ~np.isfinite(values) & ~failed
    if bad_rows.any():
      counts["nonfinite"] = int(bad_rows.sum())
      values = values.copy()
      values[bad_rows] = self._failed_value(
          spec, f"returned non-finite values at rows "
          f"{(np.nonzero(bad_rows)[0][:8] + self._row_offset).tolist()}", "nan")
    return values, counts

  def _score_rows(self, spec: RewardSpec, prompts: list[str], completions: list[str],
                  columns: Mapping[str, Sequence[Any]]) -> list[float | BaseException]:
    def one(i: int) -> float | BaseException:
      try:
        return float(self._call(spec, [prompts[i]], [completions[i]],
                                {k: [v[i]] for k, v in columns.items()}, self.row_timeout_s)[0])
      except Exception as e:  # noqa: BLE001
        return e
    workers = max(1, min(self.max_row_workers, len(completions)))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxrl-row") as ex:
      return list(ex.map(one, range(len(completions))))

  def timing(self) -> dict[str, float]:
    """Wall time per call of each function over its last 256 calls:
    ``{"reward/<name>/p50_s": ..., "reward/<name>/p99_s": ...}`` (functions not yet called are
    left out)."""
    out = {}
    for name, times in self._times.items():
      if times:
        t = np.asarray(times, np.float64)
        out[f"reward/{name}/p50_s"] = float(np.percentile(t, 50))
        out[f"reward/{name}/p99_s"] = float(np.percentile(t, 99))
    return out

  def __call__(self, prompts: list[str], completions: list[str],
               columns: Mapping[str, Sequence[Any]] | None = None) -> RewardResult:
    """Scores a batch. ``columns`` maps dataset field names to per-row values.

    In a multi-process run each process scores only its own contiguous share of the rows and the
    results are gathered, so every process returns the whole batch's rewards (and no process
    needs the others' completions scored twice); a failure on one process stops all of them."""
    columns = dict(columns or {})
    b = len(completions)
    if len(prompts) != b:
      raise ValueError(f"{len(prompts)} prompts for {b} completions")
    for key, values in columns.items():
      if len(values) != b:
        raise ValueError(f"column {key!r} has {len(values)} values for {b} completions")
    import jax

    if jax.process_count() > 1 and b >= jax.process_count():
      return self._score_shared(prompts, completions, columns)
    return self._score(prompts, completions, columns)

  def _score_shared(self, prompts, completions, columns) -> RewardResult:
    """This process's share of the rows, scored, then every process's shares gathered."""
    import jax

    from jaxrl_llm.parallel.distributed import allgather_rows, allgather_sum

    n, pid = jax.process_count(), jax.process_index()
    bounds = np.cumsum([0] + [len(x) for x in np.array_split(np.arange(len(completions)), n)])
    lo, hi = int(bounds[pid]), int(bounds[pid + 1])
    self._row_offset = lo
    error = None
    try:
      mine = self._score(prompts[lo:hi], completions[lo:hi],
                         {k: list(v)[lo:hi] for k, v in columns.items()})
    except BaseException as e:  # noqa: BLE001 -- every process must learn of it first.
      error, mine = e, None
    finally:
      self._row_offset = 0
    failed = allgather_sum(np.asarray([error is not None], np.int64))
    if failed[0]:
      if error is not None:
        raise error
      raise RewardError("a reward function failed on another process of this run (see its "
                        "log); every process stops")
    names = [s.name for s in self.specs]
    total = allgather_rows(mine.total, bounds)
    per_function = {k: allgather_rows(mine.per_function[k], bounds) for k in names}
    keys = ("errors", "nonfinite", "timeouts")
    summed = allgather_sum(np.asarray([[mine.counts[k][c] for c in keys] for k in names],
                                      np.int64))
    counts = {k: {c: int(summed[i, j]) for j, c in enumerate(keys)} for i, k in enumerate(names)}
    return RewardResult(total=total, per_function=per_function, counts=counts)

  def _score(self, prompts, completions, columns) -> RewardResult:
    b = len(completions)
    total = np.zeros((b,), np.float32)
    per_function, counts = {}, {}
    for spec in self.specs:
      values, c = self.score_one(spec, prompts, completions, columns)
      per_function[spec.name] = values
      counts[spec.name] = c
      total = total + np.float32(spec.weight) * values
    return RewardResult(total=total.astype(np.float32), per_function=per_function, counts=counts)


def overlong_penalty(lengths: np.ndarray, *, max_length: int, buffer: int,
                     factor: float = 1.0) -> np.ndarray:
  """DAPO soft overlong punishment (Yu et al., arXiv:2503.14476; docs/algorithms.md §5).

  ``R_len(y) = 0`` if ``|y| ≤ L_max − L_cache``; ``((L_max − L_cache) − |y|) / L_cache · factor`` if
  ``L_max − L_cache < |y| ≤ L_max``; ``−factor`` beyond ``L_max``. Added to the correctness reward.

  Args:
    lengths: int ``[B]`` response lengths in tokens (stop token included).
  Returns:
    float32 ``[B]`` (≤ 0).
  """
  if buffer <= 0 or buffer > max_length:
    raise ValueError(f"overlong buffer must be in (0, max_length={max_length}], got {buffer}")
  lengths = np.asarray(lengths, np.float64)
  start = max_length - buffer
  pen = np.where(lengths <= start, 0.0, (start - lengths) / buffer)
  return (np.maximum(pen, -1.0) * factor).astype(np.float32)
