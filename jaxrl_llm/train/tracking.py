"""Host-side metric sinks: ``metrics.jsonl`` (one line per step), TensorBoard, progress output.

Metrics leave the jitted step as arrays and are converted here. ``metrics.jsonl`` holds only values
that are pure functions of the config and seed (no wall-clock numbers), so two runs of the same
config produce byte-identical files; throughput goes to TensorBoard and the progress display.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

METRICS_FILE = "metrics.jsonl"


def _scalar(v: Any):
  if isinstance(v, (int, str, bool)):
    return v
  f = float(np.asarray(v))
  return f if math.isfinite(f) else repr(f)  # JSON has no NaN/inf; keep them visible as text.


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
  """All lines of ``RUN_DIR/metrics.jsonl`` as dicts (empty if the file does not exist)."""
  path = os.path.join(run_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def metric_series(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """``{metric: [(step, value), ...]}`` of the numeric metrics in ``metrics.jsonl`` (``data/``
  bookkeeping left out), with the held-out numbers of ``eval_before.json`` placed at step 0.
  Empty when the run has logged nothing."""
  series: dict[str, list[tuple[int, float]]] = {}
  for r in read_metrics(run_dir):
    for k, v in r.items():
      if (k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
          and not k.startswith("data/")):
        series.setdefault(k, []).append((int(r["step"]), float(v)))
  before_path = os.path.join(run_dir, "eval_before.json")
  if series and os.path.exists(before_path):
    with open(before_path) as f:
      for k, v in json.load(f).items():
        if k in series and isinstance(v, (int, float)):
          series[k].insert(0, (0, float(v)))
  return series


class MetricsWriter:
  """Appends step metrics to ``metrics.jsonl`` and (optionally) TensorBoard.

  On resume from checkpoint step ``s``, lines for steps after ``s`` are dropped first: those steps
  are about to be recomputed, and the file ends up identical to an uninterrupted run's.
  In a multi-process run only process 0 writes (every process holds the same numbers).
  """

  def __init__(self, run_dir: str, *, tensorboard: bool, resume_step: int | None = None):
    from jaxrl_llm.parallel.distributed import is_primary

    self.path = os.path.join(run_dir, METRICS_FILE)
    self._file = self._tb = None
    if not is_primary():
      return
    if resume_step is not None and os.path.exists(self.path):
      kept = [line for line in open(self.path) if line.strip()
              and _complete_line(line) and json.loads(line)["step"] <= resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                               purge_step=None if resume_step is None else resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, Any], extra_tb: Mapping[str, float] = ()):
    if self._file is None:
      return
    line = {"step": int(step)}
    line.update({k: _scalar(v) for k, v in sorted(metrics.items())})
    self._file.write(json.dumps(line, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in list(line.items()) + list(dict(extra_tb).items()):
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)

  def add_scalars(self, step: int, values: Mapping[str, float]):
    """TensorBoard only (timings and throughput: not deterministic, so not in metrics.jsonl)."""
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, float(v), step)

  def close(self):
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def _complete_line(line: str) -> bool:
  try:
    json.loads(line)
    return True
  except json.JSONDecodeError:  # A line cut by a kill mid-write.
    return False


class Progress:
  """A tqdm bar on a terminal; plain log lines every ``log_every`` steps otherwise."""

  def __init__(self, total: int, initial: int, *, mode: str, log_every: int, stream=None):
    from jaxrl_llm.parallel.distributed import is_primary

    self.total, self.log_every = total, log_every
    self.stream = stream or sys.stdout
    if not is_primary():  # Multi-process: process 0 shows the progress.
      mode = "off"
    if mode == "auto":
      mode = "bar" if self.stream.isatty() else "plain"
    self.mode = mode
    self._bar = None
    self._start = time.perf_counter()
    self._initial = initial
    if mode == "bar":
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, initial=initial, file=self.stream, dynamic_ncols=True,
                       unit="step")

  def update(self, step: int, loss: float, tokens_per_s: float, extra: Mapping[str, float] = ()):
    """Advances to ``step``; ``extra`` (name -> value) is shown beside the loss."""
    extra = dict(extra)
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}",
                            **{k: f"{v:.3f}" for k, v in extra.items()}, refresh=False)
    elif self.mode == "plain" and (step % self.log_every == 0 or step == self.total):
      elapsed = time.perf_counter() - self._start
      done = max(step - self._initial, 1)
      eta = elapsed / done * (self.total - step)
      shown = "".join(f"  {k} {v:.3f}" for k, v in extra.items())
      print(f"step {step}/{self.total}  loss {loss:.4f}{shown}  tok/s {tokens_per_s:,.0f}  "
            f"eta {_hms(eta)}", file=self.stream, flush=True)

  def message(self, text: str):
    if self._bar is not None:
      self._bar.write(text, file=self.stream)
    elif self.mode != "off":
      print(text, file=self.stream, flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
