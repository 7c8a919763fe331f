"""Reward functions: batched host callables, and a runner that never lets one kill a run silently.

A reward function is any callable ``fn(prompts: list[str], completions: list[str], **columns)
-> float32[B]`` where ``columns`` are the dataset's other fields (``answer=[...]`` for the
arithmetic and math tasks), one entry per row. It runs on the host, after decoding, so it may
parse text, call a verifier, or execute code in a sandbox (issue-9 rewards).

:class:`RewardRunner` calls several functions with weights and guards every call:

* an exception, a wrong-shaped or non-numeric result, or a time-out gives the whole call's rows the
  configured outcome; a NaN/inf in the result affects only that row;
* the outcome is ``exclude`` (NaN: the row is unscorable -- left out of group statistics and given
  advantage 0, ALGORITHMS.md 1.6), ``fallback`` (a fixed reward) or ``raise``
  (:class:`RewardError`; the RL loop checkpoints before stopping);
* each case is counted per function (``reward/<name>/errors|nonfinite|timeouts``).

Time-outs run the call on a daemon thread and stop waiting after ``timeout_s``. Python cannot
kill a thread, so a function that hangs forever keeps a thread busy in the background; untrusted
or heavy work belongs in a subprocess sandbox (``jaxrl_llm.rewards`` code execution does that).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np


class RewardFn(Protocol):
  def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> Any:
    ...


class RewardError(RuntimeError):
  """A reward function failed and ``reward.on_error='raise'``. Names the function and the cause."""


class _TimedOut(Exception):
  pass


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
  """Calls reward functions on a batch with time-outs and the configured failure policy.

  Args:
    specs: the functions, names and weights.
    timeout_s: per call.
    on_error: "exclude", "fallback" or "raise".
    fallback_reward: the reward given under "fallback".
  """

  def __init__(self, specs: Sequence[RewardSpec], *, timeout_s: float = 30.0,
               on_error: str = "exclude", fallback_reward: float = 0.0):
    if on_error not in ("exclude", "fallback", "raise"):
      raise ValueError(f"on_error must be 'exclude', 'fallback' or 'raise', got {on_error!r}")
    if not specs:
      raise ValueError("RewardRunner needs at least one reward function")
    self.specs = list(specs)
    self.timeout_s = timeout_s
    self.on_error = on_error
    self.fallback = float(fallback_reward)

  def _failed_value(self, spec: RewardSpec, what: str, cause: BaseException | str):
    if self.on_error == "raise":
      raise RewardError(f"reward function {spec.name!r} {what}: {cause!r}") from (
          cause if isinstance(cause, BaseException) else None)
    return self.fallback if self.on_error == "fallback" else np.nan

  def score_one(self, spec: RewardSpec, prompts: list[str], completions: list[str],
                columns: Mapping[str, Sequence[Any]]) -> tuple[np.ndarray, dict[str, int]]:
    """Raw values of one function, float32 ``[B]``, with failures already replaced."""
    b = len(completions)
    counts = {"errors": 0, "nonfinite": 0, "timeouts": 0}
    try:
      raw = call_with_timeout(lambda: spec.fn(list(prompts), list(completions), **columns),
                              self.timeout_s)
      try:
        values = np.asarray(raw, dtype=np.float32).reshape(-1)
      except (TypeError, ValueError) as e:
        raise TypeError(f"returned {type(raw).__name__} that is not a float array: {e}") from e
      if values.shape != (b,):
        raise ValueError(f"returned {values.shape[0]} values for a batch of {b}")
    except TimeoutError as e:
      counts["timeouts"] = b
      return np.full((b,), self._failed_value(spec, "timed out", e), np.float32), counts
    except RewardError:
      raise
    except Exception as e:  # noqa: BLE001 -- any failure of user code is handled by policy.
      counts["errors"] = b
      return np.full((b,), self._failed_value(spec, "raised", e), np.float32), counts
    bad = ~np.isfinite(values)
    if bad.any():
      counts["nonfinite"] = int(bad.sum())
      values = values.copy()
      values[bad] = self._failed_value(spec, f"returned non-finite values at rows "
                                       f"{np.nonzero(bad)[0][:8].tolist()}", "nan")
    return values, counts

  def __call__(self, prompts: list[str], completions: list[str],
               columns: Mapping[str, Sequence[Any]] | None = None) -> RewardResult:
    """Scores a batch. ``columns`` maps dataset field names to per-row values."""
    columns = dict(columns or {})
    b = len(completions)
    if len(prompts) != b:
      raise ValueError(f"{len(prompts)} prompts for {b} completions")
    for key, values in columns.items():
      if len(values) != b:
        raise ValueError(f"column {key!r} has {len(values)} values for {b} completions")
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
  """DAPO soft overlong punishment (Yu et al., arXiv:2503.14476; ALGORITHMS.md 5).

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
