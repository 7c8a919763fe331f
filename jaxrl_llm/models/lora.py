"""LoRA on the params pytree: adding adapters to a base, splitting them off, merging them in, and
the optimizer that trains only them.

The decoder declares the adapters itself when ``model.lora.rank > 0`` (:func:`decoder._lora`):
``{weight}_lora_a`` / ``{weight}_lora_b`` leaves next to each targeted weight, float32, with the
weight's logical axes. Everything here is a pure function of the params tree, so a base from any
source (a fresh init, an SFT warm start, a Hugging Face checkpoint) gets adapters the same way, and
a LoRA tree gives back its base without copying a weight.
"""

from __future__ import annotations

import dataclasses
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm.config.schema import ModelConfig

SUFFIXES = ("_lora_a", "_lora_b")


def is_adapter(name: str) -> bool:
  """Whether a params key (the last path element) is a LoRA leaf."""
  return name.endswith(SUFFIXES)


def _map_dict(tree, fn):
  return {k: _map_dict(v, fn) if isinstance(v, dict) else v for k, v in tree.items()
          if fn(k, v)}


def base_config(config: ModelConfig) -> ModelConfig:
  """``config`` with adapters off: the model the base params (and the reference policy) run in."""
  return dataclasses.replace(config, lora=dataclasses.replace(config.lora, rank=0))


def base_of(params: dict) -> dict:
  """The base params of a LoRA tree (adapter leaves dropped; the same arrays, nothing copied)."""
  return _map_dict(params, lambda k, v: isinstance(v, dict) or not is_adapter(k))


def adapters_of(params: dict) -> dict:
  """Only the adapter leaves (empty sub-dicts removed)."""
  def keep(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        sub = keep(v)
        if sub:
          out[k] = sub
      elif is_adapter(k):
        out[k] = v
    return out
  return keep(params)


def labels(params: dict) -> dict:
  """``"adapter"`` / ``"frozen"`` for every leaf (for ``optax.multi_transform``)."""
  def one(tree):
    return {k: one(v) if isinstance(v, dict) else ("adapter" if is_adapter(k) else "frozen")
            for k, v in tree.items()}
  return one(params)


def adapters_only(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
  """``tx`` on the adapter leaves; the base gets zero updates and no optimizer state at all
  (``optax.multi_transform`` with ``set_to_zero``), so Adam's moments cost 2x the adapters, not 2x
  the model. Global-norm clipping inside ``tx`` sees only the adapters' gradients.

  ``params``: the params tree or its shapes (:func:`jaxrl_llm.models.init.abstract_params`); the
  labels are fixed from it (sharding helpers probe ``init`` with placeholders, not trees)."""
  return optax.multi_transform({"adapter": tx, "frozen": optax.set_to_zero()}, labels(params))


def a_initializer(fan_in: int):
  """The initializer of every ``A`` matrix: normal with standard deviation ``fan_in^-1/2`` (LoRA,
  Hu et al. 2021, §4: ``A`` random Gaussian, ``B`` zero). The decoder and :func:`add_adapters`
  both draw through it, so an adapter added later equals one initialised with the model."""
  return nn.initializers.normal(stddev=fan_in ** -0.5)


def add_adapters(base: dict, config: ModelConfig, key: jax.Array) -> dict:
  """``base`` with freshly initialised adapters for ``config.lora`` (``A`` random with standard
  deviation ``fan_in^-1/2``, ``B`` zero: the model equals the base exactly until the first
  update). Leaves already present in ``base`` are kept, so a tree that has adapters is returned
  unchanged."""
  from jaxrl_llm.models.init import abstract_params

  if not config.lora.rank:
    return base
  shapes = abstract_params(config)
  out = jax.tree.map(lambda x: x, base)  # A new tree (same arrays).
  names = []

  def walk(shape_tree, path):
    for k, v in shape_tree.items():
      if isinstance(v, dict):
        walk(v, path + (k,))
      elif is_adapter(k):
        names.append((path, k, v))
  walk(shapes, ())
  for i, (path, k, leaf) in enumerate(names):
    node = out
    for p in path:
      node = node.setdefault(p, {})
    if k in node:
      continue
    chex.assert_equal(leaf.dtype, jnp.float32)
    if k.endswith("_lora_b"):
      node[k] = jnp.zeros(leaf.shape, jnp.float32)
    else:
      fan_in = math.prod(leaf.shape[:-1])
      node[k] = a_initializer(fan_in)(jax.random.fold_in(key, i), leaf.shape, jnp.float32)
  return out


def merge(params: dict, config: ModelConfig) -> dict:
  """The base params with every adapter folded in: ``W + (alpha / r)·A·B`` in the weight's dtype
  (what an export writes; the model in :func:`base_config` then gives the LoRA model's outputs up
  to float rounding)."""
  lc = config.lora
  if not lc.rank:
    return params
  scale = lc.alpha / (math.sqrt(lc.rank) if lc.rslora else lc.rank)

  def fold(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = fold(v)
      elif not is_adapter(k):
        a, b = tree.get(f"{k}_lora_a"), tree.get(f"{k}_lora_b")
        if a is None:
          out[k] = v
        else:
          delta = jnp.tensordot(a, b, axes=1) * scale
          out[k] = (v.astype(jnp.float32) + delta).astype(v.dtype)
    return out
  return fold(params)


def param_counts(params: dict) -> dict:
  """``{"adapter": n, "base": n}`` parameter counts."""
  n = lambda t: sum(int(x.size) for x in jax.tree.leaves(t))
  return {"adapter": n(adapters_of(params)), "base": n(base_of(params))}
