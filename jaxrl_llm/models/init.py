"""Parameter creation straight into a sharding: no full copy ever sits on one device."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models.decoder import Decoder
from jaxrl_llm.parallel.mesh import DEFAULT_RULES, logical_axes_of, tree_shardings


def _boxed_init(config: ModelConfig, key):
  tokens = jnp.zeros((1, 2), jnp.int32)
  return Decoder(config).init({"params": key}, tokens, jnp.ones((1, 2), bool))["params"]


def param_logical_axes(config: ModelConfig):
  """Tree of logical axis-name tuples, one per parameter."""
  boxed = jax.eval_shape(lambda k: _boxed_init(config, k), jax.random.PRNGKey(0))
  return logical_axes_of(boxed)


def abstract_params(config: ModelConfig):
  """``ShapeDtypeStruct`` tree of the unboxed parameters."""
  return jax.eval_shape(lambda k: nn.unbox(_boxed_init(config, k)), jax.random.PRNGKey(0))


def init_params(config: ModelConfig, key: jax.Array, mesh, rules=DEFAULT_RULES):
  """Initialises parameters directly into their ``NamedSharding`` on ``mesh``.

  Args:
    key: ``uint32[2]`` init key.
  Returns:
    (params, shardings): unboxed parameter tree and the matching ``NamedSharding`` tree.
  """
  shardings = tree_shardings(abstract_params(config), param_logical_axes(config), mesh, rules)
  init = jax.jit(lambda k: nn.unbox(_boxed_init(config, k)), out_shardings=shardings)
  return init(key), shardings
