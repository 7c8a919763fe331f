"""Device mesh, logical-axis rules and ``NamedSharding`` helpers.

Parameters and batches name *logical* axes (``embed``, ``heads``, ``batch``...). One rules table maps
each logical axis to zero or more mesh axes (``data``, ``fsdp``, ``tensor``); changing the mesh is a
config change, never a code change. A mesh axis is dropped for a given array dimension when it does
not divide it (tiny test models, odd vocabularies), so every rule is always safe to apply: the
dimension is then replicated over that axis instead of failing to shard.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrl_llm.config.schema import MESH_AXES, MeshConfig

# Logical axis -> mesh axes. Batch is split over data and fsdp; weights are split over fsdp on their
# model dimension (ZeRO-3 style) and over tensor on heads / MLP / vocabulary (Megatron style).
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("vocab", ("tensor",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("length", ()),
    ("positions", ()),
    ("norm", ()),
    ("accum", ()),
    ("lora_rank", ()),
)


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a ``('data', 'fsdp', 'tensor')`` mesh with GSPMD-style (``Auto``) axis types.

  Args:
    config: sizes per axis; one may be -1 to take the remaining devices.
    devices: defaults to ``jax.devices()``.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = config.shape(len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  grid = np.asarray(devices, dtype=object).reshape(shape)
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    return Mesh(grid, MESH_AXES, axis_types=(axis_type.Auto,) * len(MESH_AXES))
  return Mesh(grid, MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
  """Maps one array's logical axis names to a ``PartitionSpec`` on ``mesh``.

  Each mesh axis is used at most once per array; a mesh axis whose size does not divide the
  dimension (together with the axes already placed on it) is skipped.

  Args:
    logical_axes: one name (or None) per dimension.
    shape: the array's shape, same length.
  """
  if len(logical_axes) != len(shape):
    raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, dim in zip(logical_axes, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    placed: list[str] = []
    size = 1
    for mesh_axis in table[name]:
      n = mesh.shape[mesh_axis]
      if mesh_axis in used or n == 1 or dim % (size * n):
        continue
      placed.append(mesh_axis)
      size *= n
    used.update(placed)
    spec.append(tuple(placed) if len(placed) > 1 else (placed[0] if placed else None))
  return P(*spec)


def _is_partitioned(x) -> bool:
  return hasattr(x, "names") and hasattr(x, "value")


def logical_axes_of(boxed_tree) -> Any:
  """Logical axis names of every leaf of a tree of ``nn.LogicallyPartitioned`` boxes."""
  return jax.tree.map(lambda b: tuple(b.names) if _is_partitioned(b) else None, boxed_tree,
                      is_leaf=_is_partitioned)


def tree_shardings(abstract_tree, logical_tree, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """``NamedSharding`` for every leaf of ``abstract_tree`` given its logical axes (None: replicated)."""

  def one(leaf, names):
    if names is None:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, logical_to_spec(names, leaf.shape, mesh, rules))

  return jax.tree.map(one, abstract_tree, logical_tree, is_leaf=lambda x: x is None)


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0, shape=None,
                   rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of a batch array: dimension ``batch_axis`` over the ``batch`` rule, rest replicated."""
  names = [None] * ndim
  names[batch_axis] = "batch"
  shape = shape if shape is not None else (0,) * ndim  # 0 is divisible by anything.
  return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


def batch_size_multiple(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  """Number of shards along the batch dimension: global batches must be a multiple of it."""
  return int(np.prod([mesh.shape[a] for a in dict(rules)["batch"]]))
