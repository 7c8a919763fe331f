"""``jaxrl-llm plot RUN_DIR``: training curves from ``metrics.jsonl`` as PNG."""

from __future__ import annotations

import json
import math
import os

from jaxrl_llm.train.tracking import metric_series

# Curves a reader looks at first, in this order (a metric matches the first pattern it contains);
# everything else follows alphabetically.
PRIORITY = ("reward/accuracy", "reward/mean", "eval/", "test/", "train/loss", "kl/ref",
            "train/kl", "train/entropy", "entropy", "rollout/response_length", "length",
            "rm/accuracy", "dpo/accuracy", "dpo/margin", "train/learning_rate")


def _rank(key: str) -> tuple[int, str]:
  for i, pattern in enumerate(PRIORITY):
    if pattern in key:
      return i, key
  return len(PRIORITY), key


def plot_run(run_dir: str, out: str | None = None, *, dpi: int = 100) -> str:
  """Draws the numeric metrics against step, most important first; returns the PNG path.

  Order: accuracy and reward, held-out evaluation (with the before-training point of
  ``eval_before.json`` at step 0), loss, KL, entropy, response length, then the rest. A series
  that never changes gets no panel: constant series are listed in one small table panel at the
  end (and ``plots/constants.json``). Default output: ``RUN_DIR/plots/curves.png``.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  series = metric_series(run_dir)
  if not series:
    raise FileNotFoundError(f"{run_dir}/metrics.jsonl is missing or empty")
  constants = {k: pts[0][1] for k, pts in series.items()
               if len(pts) > 1 and all(y == pts[0][1] for _, y in pts)}
  keys = sorted((k for k in series if k not in constants), key=_rank)
  panels = len(keys) + (1 if constants else 0)
  cols = min(3, max(panels, 1))
  nrows = math.ceil(max(panels, 1) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.0 * nrows), squeeze=False)
  flat = list(axes.flat)
  for ax, key in zip(flat, keys):
    xs, ys = zip(*series[key])
    ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, linewidth=1.2)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  if constants:
    ax = flat[len(keys)]
    ax.axis("off")
    ax.set_title("constant over the run", fontsize=9)
    lines = [f"{k} = {v:.6g}" for k, v in sorted(constants.items())]
    ax.text(0.0, 1.0, "\n".join(lines[:24] + ([f"... {len(lines) - 24} more"]
                                                if len(lines) > 24 else [])),
            va="top", ha="left", fontsize=7, family="monospace", transform=ax.transAxes)
  for ax in flat[panels:]:
    ax.axis("off")
  fig.tight_layout()
  out = out or os.path.join(run_dir, "plots", "curves.png")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.savefig(out, dpi=dpi)
  plt.close(fig)
  with open(os.path.join(os.path.dirname(out), "constants.json"), "w") as f:
    json.dump(constants, f, indent=1, sort_keys=True)
  return out


def write_results(run_dir: str, result: dict, progress) -> None:
  """The end of every loop: ``RUN_DIR/eval.json`` (the held-out ``result``), then the training
  curves (:func:`plot_run`); a plotting failure is reported, never raised (it must not cost a
  finished run). Process 0 only in a multi-process run."""
  import json

  from jaxrl_llm.parallel.distributed import is_primary

  if not is_primary():
    return

  with open(os.path.join(run_dir, "eval.json"), "w") as f:
    json.dump(result, f, indent=2, sort_keys=True)
  try:
    progress.message(f"plot: {plot_run(run_dir)}")
  except Exception as e:  # noqa: BLE001 -- reported, and the run stays finished.
    progress.message(f"plotting failed: {e!r}")

