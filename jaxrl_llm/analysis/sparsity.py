"""Update sparsity: which parameters a training run actually changed (docs/algorithms.md §20;
Mukherjee et al., "Reinforcement Learning Finetunes Small Subnetworks in Large Language Models",
arXiv:2505.11711).

For two checkpoints θ⁰ (before) and θ¹ (after), compared **in one storage dtype** (the dtype the
run stores, or the one asked for; a change smaller than that dtype's resolution is no change):

* ``Δ = θ¹ − θ⁰`` per element; *unchanged* when ``|Δ| ≤ τ`` (τ = 1e-5, the paper's tolerance),
  and separately *exactly zero*; global, per tensor and per layer (the mean of the per-tensor
  changed fractions within ``layer_<i>``) -- "sparsity" is the unchanged fraction;
* the update rank of each weight matrix, ``rank(Δ_W) / min(d_out, d_in)`` (attention projections
  flattened to their 2-D matrix), where ``rank`` counts singular values above
  ``σ_max · max(d_out, d_in) · ε_float32`` (NumPy's ``matrix_rank`` default: robust to the
  rounding noise of the subtraction);
* the overlap of two runs' changed sets A, B from the same start, ``|A ∩ B| / |A|``, next to the
  chance level ``|B| / n`` (two independent random subsets of those sizes).

Everything is computed one tensor at a time from ``(name, array)`` iterators, so a comparison holds
at most one tensor of each model and its difference at once beyond what the sources themselves
keep (a Hugging Face directory streams tensor by tensor; a run directory restores its checkpoint's
params).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Iterator

import numpy as np

TOLERANCE = 1e-5
_LAYER = re.compile(r"(?:^|[./\[\]'])(?:layer_|layers\.)(\d+)")


@dataclasses.dataclass
class TensorStats:
  """One tensor's comparison. ``rank_fraction`` is None for vectors."""

  name: str
  shape: tuple
  size: int
  changed: int
  exact_zero: int
  rank_fraction: float | None = None

  @property
  def changed_fraction(self) -> float:
    return self.changed / max(self.size, 1)


def as_dtype(array, dtype: str | None) -> np.ndarray:
  """``array`` in the storage dtype ``dtype`` (``"bfloat16"``, ``"float32"``, ...; None: as is),
  returned as float32 values for arithmetic."""
  import jax.numpy as jnp

  a = np.asarray(array)
  if dtype is not None:
    a = np.asarray(jnp.asarray(a).astype(dtype))
  return a.astype(np.float32)


def matrix_view(name: str, array: np.ndarray) -> np.ndarray | None:
  """The 2-D weight matrix of a parameter, or None for vectors / scalars. An attention output
  projection ``o [heads, head_dim, d]`` becomes ``[heads·head_dim, d]``; every other tensor of
  rank ≥ 2 ``[d_in, ...]`` becomes ``[d_in, prod(rest)]``."""
  if array.ndim < 2:
    return None
  if re.search(r"(?:^|[./\['])o'?\]?$", name) and array.ndim > 2:
    return array.reshape(-1, array.shape[-1])
  return array.reshape(array.shape[0], -1)


def update_rank(delta: np.ndarray, scale: float = 0.0) -> float:
  """``rank(Δ) / min(rows, cols)`` of a 2-D update (0 for Δ = 0), singular values above
  ``σ_max · max(rows, cols) · ε_float32`` and above the round-off floor
  ``ε_float32 · scale · sqrt(rows · cols)``, ``scale`` the largest magnitude of the weight
  before the update: ``(W + δ) − W`` in float32 carries an error matrix of entries up to
  ``ε·|W|``, which is full rank, and a low-rank update (LoRA's ``s·A·B`` merged into ``W``)
  would otherwise read as full rank."""
  d = np.asarray(delta, np.float64)
  if not np.any(d):
    return 0.0
  s = np.linalg.svd(d, compute_uv=False)
  eps = np.finfo(np.float32).eps
  tol = max(s.max() * max(d.shape) * eps, eps * scale * np.sqrt(d.size))
  return float(np.sum(s > tol)) / min(d.shape)


def compare_tensor(name: str, before, after, *, tol: float = TOLERANCE, dtype: str | None = None,
                   rank: bool = True) -> tuple[TensorStats, np.ndarray]:
  """Stats of one tensor and its changed mask (bool, shape of the tensor)."""
  b, a = as_dtype(before, dtype), as_dtype(after, dtype)
  if b.shape != a.shape:
    raise ValueError(f"{name}: shapes differ, {b.shape} before and {a.shape} after")
  delta = a - b
  changed = np.abs(delta) > tol
  frac = None
  if rank:
    m = matrix_view(name, delta)
    frac = update_rank(m, float(np.max(np.abs(b))) if b.size else 0.0) if m is not None else None
  return TensorStats(name, tuple(b.shape), int(b.size), int(changed.sum()),
                     int(np.sum(delta == 0)), frac), changed


def layer_of(name: str) -> int | None:
  """The transformer layer a parameter belongs to (``layer_3`` / ``layers.3``), or None."""
  m = _LAYER.search(name)
  return int(m.group(1)) if m else None


def summarize(stats: list[TensorStats], *, tol: float, dtype: str) -> dict:
  """The report: global changed / exact-zero fractions and sparsity, per tensor, per layer (mean
  of the per-tensor changed fractions), and the mean update rank of the weight matrices."""
  n = sum(s.size for s in stats)
  changed = sum(s.changed for s in stats)
  zero = sum(s.exact_zero for s in stats)
  layers: dict[int, list[float]] = {}
  for s in stats:
    layer = layer_of(s.name)
    if layer is not None:
      layers.setdefault(layer, []).append(s.changed_fraction)
  ranks = [s.rank_fraction for s in stats if s.rank_fraction is not None]
  return {
      "dtype": dtype, "tolerance": tol, "parameters": n,
      "changed_fraction": changed / max(n, 1), "sparsity": 1.0 - changed / max(n, 1),
      "exact_zero_fraction": zero / max(n, 1),
      "update_rank_mean": float(np.mean(ranks)) if ranks else None,
      "per_layer_changed_fraction": {str(k): float(np.mean(v)) for k, v in sorted(layers.items())},
      "tensors": {s.name: {"shape": list(s.shape), "changed_fraction": s.changed_fraction,
                           "exact_zero_fraction": s.exact_zero / max(s.size, 1),
                           "update_rank": s.rank_fraction} for s in stats}}


def compare(before: Iterable[tuple[str, np.ndarray]], after: Iterable[tuple[str, np.ndarray]],
            *, tol: float = TOLERANCE, dtype: str | None = None,
            against: Iterable[tuple[str, np.ndarray]] | None = None, rank: bool = True) -> dict:
  """Update sparsity of ``after`` relative to ``before`` (and the overlap with a second run
  ``against`` from the same start), tensor by tensor.

  Args:
    before, after, against: ``(name, array)`` iterators in the same order with the same names
      (:func:`flatten` of two params pytrees, or :func:`iter_source`).
    dtype: compare in this storage dtype (None: as given; the report names the dtype).
  Returns:
    the :func:`summarize` report, plus ``overlap`` (``|A∩B|/|A|``), ``overlap_chance``
    (``|B|/n``) and ``overlap_sparsity_b`` when ``against`` is given.
  """
  stats, inter, size_a, size_b, n = [], 0, 0, 0, 0
  seen_dtype = dtype
  others = iter(against) if against is not None else None
  for (name_b, x0), (name_a, x1) in zip(before, after):
    if name_b != name_a:
      raise ValueError(f"parameter order differs: {name_b!r} before, {name_a!r} after")
    seen_dtype = seen_dtype or str(np.asarray(x1).dtype)
    s, mask_a = compare_tensor(name_a, x0, x1, tol=tol, dtype=dtype, rank=rank)
    stats.append(s)
    if others is not None:
      name_c, x2 = next(others)
      if name_c != name_a:
        raise ValueError(f"parameter order differs: {name_a!r} vs {name_c!r} in --against")
      _, mask_b = compare_tensor(name_c, x0, x2, tol=tol, dtype=dtype, rank=False)
      inter += int(np.sum(mask_a & mask_b))
      size_a += int(mask_a.sum())
      size_b += int(mask_b.sum())
      n += mask_a.size
  report = summarize(stats, tol=tol, dtype=seen_dtype or "float32")
  if others is not None:
    report["overlap"] = inter / max(size_a, 1)
    report["overlap_chance"] = size_b / max(n, 1)
    report["overlap_changed_fraction_b"] = size_b / max(n, 1)
  return report


def flatten(tree) -> Iterator[tuple[str, np.ndarray]]:
  """``(name, array)`` of a params pytree's leaves in a fixed order (``jax.tree_util`` key
  paths)."""
  import jax

  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    yield jax.tree_util.keystr(path), leaf


def _plain(art):
  """A run's policy as a plain model: LoRA adapters folded into their weights (so a LoRA run's
  update is the low-rank ``s·A·B`` of each weight, comparable with any other run's)."""
  from jaxrl_llm.models import lora

  return lora.merge(art.policy_params(), art.model_config)


def iter_source(source: str, *, step: int | None = None) -> Iterator[tuple[str, np.ndarray]]:
  """Tensors of a run directory (its policy params, newest checkpoint or ``step``; an RL or SFT
  run's ``sft/`` warm start is a run too) or of a Hugging Face checkpoint directory
  (``*.safetensors``, streamed one tensor at a time, sorted by name)."""
  if os.path.exists(os.path.join(source, "config.json")) and os.path.isdir(
      os.path.join(source, "tokenizer")):
    from jaxrl_llm.rundir.artifacts import load_run

    if step is None:
      yield from flatten(_plain(load_run(source)))
      return
    from jaxrl_llm.rundir.artifacts import RunArtifacts
    from jaxrl_llm.rundir.checkpoint import Checkpointer

    art = load_run(source, restore=False)
    ckpt = Checkpointer(os.path.join(source, "checkpoints"), keep=100, async_save=False)
    try:
      state, extra = ckpt.restore(step, None)
    finally:
      ckpt.close()
    art = RunArtifacts(source, art.config, art.model_config, art.tokenizer, state, extra, step)
    yield from flatten(_plain(art))
    return
  files = sorted(f for f in os.listdir(source) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{source!r} is neither a run directory nor a Hugging Face checkpoint "
                            "(no *.safetensors)")
  from safetensors import safe_open

  where = {}
  for f in files:
    with safe_open(os.path.join(source, f), framework="numpy") as h:
      for k in h.keys():
        where[k] = f
  for name in sorted(where):
    with safe_open(os.path.join(source, where[name]), framework="numpy") as h:
      yield name, h.get_tensor(name)


def heatmap(report: dict, path: str, title: str = "") -> str:
  """A per-layer × tensor-kind PNG of the changed fraction (``report`` from :func:`compare`)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cells: dict[tuple[int, str], float] = {}
  for name, t in report["tensors"].items():
    layer = layer_of(name)
    if layer is None:
      continue
    kind = re.sub(r"^.*?(?:layer_|layers\.)\d+\W*", "", name).strip("[]'\".")
    kind = re.sub(r"'\]\['", ".", kind)
    cells[(layer, kind)] = t["changed_fraction"]
  if not cells:
    raise ValueError("no per-layer tensors to plot")
  layers = sorted({k[0] for k in cells})
  kinds = sorted({k[1] for k in cells})
  grid = np.full((len(layers), len(kinds)), np.nan)
  for (layer, kind), v in cells.items():
    grid[layers.index(layer), kinds.index(kind)] = v
  fig, ax = plt.subplots(figsize=(2.5 + 0.8 * len(kinds), max(3.0, 1.5 + 0.45 * len(layers))))
  im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
  ax.set_xticks(range(len(kinds)), kinds, rotation=45, ha="right")
  ax.set_yticks(range(len(layers)), [f"layer {i}" for i in layers])
  fig.colorbar(im, ax=ax, label=f"changed fraction (|Δ| > {report['tolerance']:g}, "
               f"{report['dtype']})")
  ax.set_title(title or f"update sparsity {report['sparsity']:.3f}")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def analyze(after: str, *, before: str | None = None, against: str | None = None,
            tol: float = TOLERANCE, dtype: str | None = None, out_dir: str | None = None) -> dict:
  """``jaxrl-llm analyze sparsity``: ``after`` (a run directory or HF checkpoint) against
  ``before`` -- another source, a step of ``after`` (``"step:N"``), or (default) the run's own
  starting policy (its ``sft/`` warm start, or ``init.policy_run``). Writes
  ``OUT/sparsity.json`` and ``OUT/sparsity.png`` (``OUT`` defaults to ``AFTER/analysis`` for a
  run, else the current directory)."""
  if before is None:
    before = _start_of(after)
  if before.startswith("step:"):
    first = iter_source(after, step=int(before.split(":", 1)[1]))
  else:
    first = iter_source(before)
  second = iter_source(after)
  third = None
  if against is not None:
    third = iter_source(against)
  report = compare(first, second, tol=tol, dtype=dtype, against=third)
  report.update({"after": os.path.abspath(after), "before": before,
                 "against": None if against is None else os.path.abspath(against)})
  out_dir = out_dir or (os.path.join(after, "analysis") if os.path.isdir(
      os.path.join(after, "tokenizer")) else ".")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "sparsity.json"), "w") as f:
    json.dump(report, f, indent=1)
  report["heatmap"] = heatmap(report, os.path.join(out_dir, "sparsity.png"),
                              title=f"{os.path.basename(os.path.abspath(after))}: sparsity "
                              f"{report['sparsity']:.3f}")
  return report


def _start_of(run_dir: str) -> str:
  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"{run_dir!r} is not a run directory: pass --before")
  config = load_json(path)
  if config.init.sft_steps and os.path.isdir(os.path.join(run_dir, "sft")):
    return os.path.join(run_dir, "sft")
  if config.init.policy_run:
    return config.init.policy_run
  raise ValueError(f"{run_dir!r} records no starting policy (no sft/ warm start, no "
                   "init.policy_run): pass --before RUN_OR_HF_DIR or --before step:N")




# --------------------------------------------------------------------------------------------
# Subnetwork-only training (the paper's "train only the subnetwork RL updated").


def update_mask(run_dir: str, *, before: str | None = None, tol: float = TOLERANCE,
                dtype: str | None = None):
  """The changed set of a finished run as a params-shaped pytree of bool numpy arrays:
  ``|θ¹ − θ⁰| > tol`` in the stored (or ``dtype``) precision, ``θ⁰`` the run's starting policy
  (or ``before``), ``θ¹`` its final policy."""
  import jax

  from jaxrl_llm.rundir.artifacts import load_run

  start = before or _start_of(run_dir)
  p0 = _plain(load_run(start))
  p1 = _plain(load_run(run_dir))
  if jax.tree.structure(p0) != jax.tree.structure(p1):
    raise ValueError(f"{run_dir!r} and its start {start!r} hold different parameter trees")
  return jax.tree.map(lambda a, b: compare_tensor("", a, b, tol=tol, dtype=dtype,
                                                  rank=False)[1], p0, p1)


def masked_updates(mask):
  """An optax transform that zeroes the updates of parameters where ``mask`` is false; chained
  after the optimizer, those parameters stay bit-identical to their start at every step (weight
  decay included). The mask lives in the transform's state (sharded like the params, saved with
  the optimizer state); ``init`` embeds it as a constant of the jitted state constructor, which
  is fine at the sizes this runs on but not for billion-parameter models."""
  import jax
  import jax.numpy as jnp
  import optax

  mask_leaves, mask_def = jax.tree.flatten(mask)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    if len(leaves) != len(mask_leaves):
      # optax.tree_map_params probes with one placeholder for the whole params tree: answer
      # with it, which marks the mask as params-shaped (sharded as the params are).
      return {"mask": params}
    if treedef != mask_def:
      raise ValueError("train.update_mask: the mask's tree differs from the params' tree")
    return {"mask": jax.tree.unflatten(treedef, [jnp.asarray(m, bool).reshape(p.shape)
                                                 for m, p in zip(mask_leaves, leaves)])}

  def update_fn(updates, state, params=None):
    del params
    out = jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, state["mask"])
    return out, state

  return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["TOLERANCE", "TensorStats", "analyze", "compare", "compare_tensor", "flatten",
           "heatmap", "iter_source", "layer_of", "masked_updates", "matrix_view", "summarize",
           "update_mask", "update_rank"]
