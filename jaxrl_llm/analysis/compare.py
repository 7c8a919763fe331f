"""``jaxrl-llm compare RUN_A RUN_B ...``: the same metrics of several runs, overlaid, one PNG.

Each run is read from its own ``metrics.jsonl`` (and ``eval_before.json`` for held-out metrics at
step 0); a curve's legend is the run's experiment name and what sets it apart -- its config
fields that differ from its experiment's defaults (when the experiment is known), else those that
differ between the compared runs.

Default panels (the first key a run has is used, so PPO's ``actor/entropy`` stands in for
``train/entropy``): reward, accuracy, entropy, KL to the reference, response length.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable, Sequence

# Panel name -> the metric keys that mean it, in preference order.
DEFAULT_PANELS: dict[str, tuple[str, ...]] = {
    "reward": ("reward/mean",),
    "accuracy": ("reward/accuracy", "eval/accuracy", "eval/exact_match"),
    "entropy": ("train/entropy", "actor/entropy"),
    "KL": ("kl/ref", "train/kl_ref", "actor/kl_ref"),
    "response length": ("response/length_mean",),
}
# When a run has none of those (SFT, DPO, reward models): its loss and held-out metrics.
FALLBACK_PANELS: dict[str, tuple[str, ...]] = {
    "loss": ("train/loss",),
    "held-out": ("eval/exact_match", "eval/accuracy", "eval/rm_accuracy", "eval/dpo_accuracy"),
    "preference accuracy": ("train/accuracy", "dpo/accuracy", "rm/accuracy"),
}

# Fields that say where a run lives or how it logs, not what it is: never a legend.
_LOCATION_FIELDS = ("data.data_dir", "logging.runs_root", "logging.progress",
                    "logging.log_every", "logging.tensorboard", "train.checkpoint_every",
                    "train.keep_checkpoints", "train.async_checkpointing")
# Fields whose value is a path: shown by their last component.
_PATH_FIELDS = ("data.jsonl_dir", "init.policy_run", "init.hf_checkpoint", "reward.model_run",
                "reward.process_model_run", "train.update_mask")


class NoMetricsError(FileNotFoundError):
  """A directory given as a run has no ``metrics.jsonl`` rows."""


def load_series(run_dir: str) -> dict[str, list[tuple[int, float]]]:
  """:func:`jaxrl_llm.train.tracking.metric_series` of a run (numeric metrics by step, held-out
  metrics of ``eval_before.json`` at step 0).

  Raises:
    NoMetricsError: ``run_dir`` has no (or an empty) ``metrics.jsonl``.
  """
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    raise NoMetricsError(f"{run_dir!r} has no metrics.jsonl: is it a run directory? (a run "
                         "writes it from its first logged step on)")
  from jaxrl_llm.train.tracking import metric_series

  series = metric_series(run_dir)
  if not series:
    raise NoMetricsError(f"{path} is empty: the run has not logged a step yet")
  return series


def _flat(d: dict, prefix: str = "") -> dict[str, object]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key + "."))
    else:
      out[key] = v
  return out


def _run_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _short(v, key: str = "") -> str:
  if key in _PATH_FIELDS and isinstance(v, str) and v:
    return os.path.basename(os.path.normpath(v))
  if isinstance(v, float):
    return f"{v:g}"
  if isinstance(v, list):
    return "[" + ",".join(_short(x) for x in v) + "]"
  return str(v)


def config_differences(config: dict, baseline: dict) -> dict[str, object]:
  """The flattened ``key: value`` fields of ``config`` that differ from ``baseline`` (location
  fields such as data directories left out)."""
  a, b = _flat(config), _flat(baseline)
  return {k: v for k, v in a.items()
          if k not in _LOCATION_FIELDS and (k not in b or b[k] != v)}


def labels(run_dirs: Sequence[str], defaults: Callable[[str], dict | None] | None = None,
           max_fields: int = 3) -> list[str]:
  """Legend of each run: ``experiment  key=value ...`` -- the fields that set it apart.

  With several runs, those are the fields that differ between them; of those, a run whose
  experiment is known (``defaults(experiment_name)`` returns its default config as a dict, else
  None) shows the ones it changed from that default (so two presets of different experiments do
  not list every preset field). A single run shows its changes from its experiment's default.
  """
  configs = [_run_config(d) for d in run_dirs]
  flats = [_flat(c) for c in configs]
  shared_keys = set().union(*flats) if flats else set()
  varying = {k for k in shared_keys if k not in _LOCATION_FIELDS
             and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1}
  out = []
  for run_dir, config, flat in zip(run_dirs, configs, flats):
    name = config.get("experiment") or os.path.basename(os.path.normpath(run_dir))
    base = defaults(name) if (defaults and config) else None
    diff = config_differences(config, base) if base is not None else dict(flat)
    if len(run_dirs) > 1:
      diff = {k: v for k, v in diff.items() if k in varying and k != "experiment"}
    parts = [f"{k}={_short(v, k)}" for k, v in sorted(diff.items())]
    if len(parts) > max_fields:
      parts = parts[:max_fields] + [f"+{len(parts) - max_fields} more"]
    out.append(" ".join([name] + parts))
  # Two runs with the same label (e.g. same config, different directories): add the directory.
  for i, label in enumerate(out):
    if out.count(label) > 1:
      out[i] = f"{label} ({os.path.basename(os.path.normpath(run_dirs[i]))})"
  return out


def compare(run_dirs: Sequence[str], *, metrics: Sequence[str] | None = None,
            out: str = "compare.png", defaults: Callable[[str], dict | None] | None = None,
            smooth: int = 1) -> dict:
  """Overlays the runs' curves, one panel per metric; writes ``out`` (PNG).

  Args:
    run_dirs: run directories (at least one).
    metrics: metric keys to draw (default: :data:`DEFAULT_PANELS`, each the first key a run has;
      :data:`FALLBACK_PANELS` for runs with none of them, such as SFT).
    out: the PNG path.
    defaults: experiment name -> default config dict (for legends); see :func:`labels`.
    smooth: trailing moving-average window over steps (1: raw).
  Returns:
    ``{"plot", "panels": {panel: {label: metric key}}, "runs": [labels], "missing": [...]}``.
  Raises:
    NoMetricsError: a run has no metrics; ValueError: no requested metric is in any run.
  """
  if not run_dirs:
    raise ValueError("compare needs at least one run directory")
  all_series = [load_series(d) for d in run_dirs]
  names = labels(run_dirs, defaults)
  def select(panels):
    drawn: dict[str, dict[str, str]] = {}
    missing = []
    for panel, keys in panels.items():
      for label, series in zip(names, all_series):
        key = next((k for k in keys if k in series), None)
        if key is None:
          missing.append(f"{label}: {panel}")
        else:
          drawn.setdefault(panel, {})[label] = key
    return drawn, missing

  panels = {m: (m,) for m in metrics} if metrics else DEFAULT_PANELS
  drawn, missing = select(panels)
  if not drawn and not metrics:
    panels = FALLBACK_PANELS
    drawn, missing = select(panels)
  if not drawn:
    wanted = ", ".join(k for keys in panels.values() for k in keys)
    raise ValueError(f"none of the runs has any of the metrics {wanted}")

  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  cols = min(3, len(drawn))
  rows = math.ceil(len(drawn) / cols)
  legend_in = 0.2 * len(names) + 0.2  # inches below the panels for the legend
  fig, axes = plt.subplots(rows, cols, figsize=(max(5.0 * cols, 9.0), 3.4 * rows + legend_in),
                           squeeze=False)
  flat_axes = list(axes.flat)
  for ax, (panel, by_run) in zip(flat_axes, drawn.items()):
    for i, (label, series) in enumerate(zip(names, all_series)):
      if label not in by_run:
        continue
      xs, ys = map(np.asarray, zip(*series[by_run[label]]))
      if smooth > 1 and len(ys) >= smooth:
        ys = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
        xs = xs[smooth - 1:]
      ax.plot(xs, ys, color=f"C{i % 10}", linewidth=1.3, label=label,
              marker="o" if len(xs) < 20 else None, markersize=3)
    keys = sorted(set(by_run.values()))
    ax.set_title(panel if keys == [panel] else f"{panel} ({', '.join(keys)})", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in flat_axes[len(drawn):]:
    ax.axis("off")
  handles, legend_labels = flat_axes[0].get_legend_handles_labels()
  for ax in flat_axes[1:len(drawn)]:  # every run once, whichever panel has it
    for h, lab in zip(*ax.get_legend_handles_labels()):
      if lab not in legend_labels:
        handles.append(h)
        legend_labels.append(lab)
  fig.legend(handles, legend_labels, loc="lower center", ncol=1, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, legend_in / (3.4 * rows + legend_in), 1, 1))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return {"plot": out, "panels": drawn, "runs": names, "missing": missing}


__all__ = ["DEFAULT_PANELS", "FALLBACK_PANELS", "NoMetricsError", "compare", "config_differences", "labels",
           "load_series"]
