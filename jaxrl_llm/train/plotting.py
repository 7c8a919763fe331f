"""``jaxrl-llm plot RUN_DIR``: training curves from ``metrics.jsonl`` as PNG."""

from __future__ import annotations

import math
import os

from jaxrl_llm.train.tracking import read_metrics


def plot_run(run_dir: str, out: str | None = None) -> str:
  """Draws every numeric metric against step, one panel each; returns the PNG path.

  Default output: ``RUN_DIR/plots/curves.png``.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(run_dir)
  if not rows:
    raise FileNotFoundError(f"{run_dir}/metrics.jsonl is missing or empty")
  keys = sorted({k for r in rows for k, v in r.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
                 and not k.startswith("data/")})
  cols = min(3, len(keys))
  nrows = math.ceil(len(keys) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.0 * nrows), squeeze=False)
  for ax, key in zip(axes.flat, keys):
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o" if len(pts) < 20 else None, linewidth=1.2)
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis("off")
  fig.tight_layout()
  out = out or os.path.join(run_dir, "plots", "curves.png")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
