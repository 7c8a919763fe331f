"""The entropy–reward law of RL on language models (docs/algorithms.md §11; Cui et al., "The
Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", arXiv:2505.22617):
over a run, reward and policy entropy trade as ``R ≈ −a·exp(H) + b``, so the reward a run can
reach once its entropy is spent is ``−a + b`` (H = 0).

:func:`fit` is the least-squares fit of that curve to per-step ``(H, R)`` pairs (linear in
``x = exp(H)``: ``R = b − a·x``), with R² and the predicted ceiling; :func:`analyze` reads a run's
``metrics.jsonl`` (``train/entropy`` against ``reward/accuracy`` when the run has a verifier,
else ``reward/mean``), writes ``RUN/analysis/entropy.json`` and a scatter plot with the fit.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def fit(entropy, reward) -> dict[str, float]:
  """Least squares ``R = −a·exp(H) + b`` over the finite pairs.

  Returns:
    ``{"a", "b", "r2", "ceiling" (−a + b), "points"}``.
  Raises:
    ValueError: fewer than 3 finite pairs, or entropy that never changes (no slope to fit).
  """
  h, r = np.asarray(entropy, np.float64), np.asarray(reward, np.float64)
  ok = np.isfinite(h) & np.isfinite(r)
  h, r = h[ok], r[ok]
  if len(h) < 3:
    raise ValueError(f"the entropy law needs at least 3 steps with entropy and reward, got "
                     f"{len(h)}")
  x = np.exp(h)
  if np.ptp(x) == 0:
    raise ValueError("the entropy is the same at every step: no slope to fit")
  design = np.stack([-x, np.ones_like(x)], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, r, rcond=None)
  pred = design @ np.array([a, b])
  ss_tot = float(np.sum((r - r.mean()) ** 2))
  r2 = 1.0 - float(np.sum((r - pred) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
  return {"a": float(a), "b": float(b), "r2": r2, "ceiling": float(b - a), "points": int(len(h))}


def analyze(run_dir: str, *, reward_key: str | None = None, out_dir: str | None = None) -> dict:
  """``jaxrl-llm analyze entropy RUN``: the fit over the run's steps, ``entropy.json`` and
  ``entropy.png`` in ``OUT`` (default ``RUN/analysis``)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir!r} has no metrics.jsonl; is it a run directory?")
  rows = [json.loads(line) for line in open(path) if line.strip()]
  if not rows or not any("train/entropy" in r for r in rows):
    raise ValueError(f"{path} has no train/entropy: the entropy law needs an RL run")
  if reward_key is None:
    reward_key = "reward/accuracy" if any("reward/accuracy" in r for r in rows) else "reward/mean"
  h = [r.get("train/entropy", math.nan) for r in rows]
  rw = [r.get(reward_key, math.nan) for r in rows]
  result = dict(fit(h, rw), reward=reward_key, entropy="train/entropy",
                run=os.path.abspath(run_dir))
  out_dir = out_dir or os.path.join(run_dir, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "entropy.json"), "w") as f:
    json.dump(result, f, indent=1)
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 4))
  steps = np.arange(1, len(h) + 1)
  sc = ax.scatter(h, rw, c=steps, cmap="viridis", s=12)
  fig.colorbar(sc, ax=ax, label="step")
  finite = np.isfinite(h)
  grid = np.linspace(0.0, float(np.nanmax(np.asarray(h)[finite])) * 1.05, 100)
  ax.plot(grid, -result["a"] * np.exp(grid) + result["b"], color="C3",
          label=f"R = -{result['a']:.3g}·exp(H) + {result['b']:.3g}  (R² {result['r2']:.2f})")
  ax.set_xlabel("policy entropy H (train/entropy)")
  ax.set_ylabel(reward_key)
  ax.legend(fontsize=8)
  ax.set_title(f"ceiling at H = 0: {result['ceiling']:.3f}")
  fig.tight_layout()
  result["plot"] = os.path.join(out_dir, "entropy.png")
  fig.savefig(result["plot"], dpi=110)
  plt.close(fig)
  return result


__all__ = ["analyze", "fit"]
