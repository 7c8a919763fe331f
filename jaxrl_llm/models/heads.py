"""Value and reward heads on the decoder trunk.

A head model's params are ``{"trunk": <Decoder params>, "head": {"kernel": [D], "bias": []}}``:
the trunk's final hidden states (``Decoder(..., return_hidden=True)``) go through one linear map to
a scalar. The value head (PPO critic) reads every token; the reward head reads the last non-pad
token of each row (left or right padding alike), and PRMs read it at step-marker positions.
:func:`init_from_policy` copies a policy's trunk and draws a fresh head.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.ops.advantages import last_token_index
from jaxrl_llm.models.decoder import Decoder


def init_head(config: ModelConfig, key: jax.Array) -> dict:
  """A fresh scalar head: ``kernel float32[D]`` ~ N(0, 1/D), ``bias`` 0."""
  d = config.d_model
  return {"kernel": jax.random.normal(key, (d,), jnp.float32) * d ** -0.5,
          "bias": jnp.zeros((), jnp.float32)}


def init_from_policy(policy_params: dict, config: ModelConfig, key: jax.Array) -> dict:
  """Critic / reward model initialised from a policy checkpoint: trunk copied, head fresh.

  The policy's untied ``lm_head`` (if any) is dropped: a head model never computes logits.
  """
  trunk = {k: v for k, v in policy_params.items() if k != "lm_head"}
  trunk = jax.tree.map(jnp.array, trunk)  # A copy, so updating the critic never aliases the policy.
  return {"trunk": trunk, "head": init_head(config, key)}


def _trunk_config(config: ModelConfig) -> ModelConfig:
  return dataclasses.replace(config, tie_embeddings=True)  # No lm_head parameter in the trunk.


def token_values(params: dict, config: ModelConfig, tokens: jax.Array,
                 attention_mask: jax.Array) -> jax.Array:
  """Per-token scalar outputs (values), float32 ``[B, T]`` (0 at padding)."""
  chex.assert_equal_shape([tokens, attention_mask])
  hidden = Decoder(_trunk_config(config)).apply({"params": params["trunk"]}, tokens,
                                                attention_mask, return_hidden=True)
  out = jnp.einsum("BTD,D->BT", hidden.astype(jnp.float32), params["head"]["kernel"])
  out = out + params["head"]["bias"]
  return jnp.where(attention_mask.astype(bool), out, 0.0)


def last_token_rewards(params: dict, config: ModelConfig, tokens: jax.Array,
                       attention_mask: jax.Array) -> jax.Array:
  """Scalar reward per row read at its last non-pad token, float32 ``[B]`` (0 for empty rows)."""
  values = token_values(params, config, tokens, attention_mask)
  last, has = last_token_index(attention_mask)
  picked = jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]
  return jnp.where(has, picked, 0.0)


def rewards_at(params: dict, config: ModelConfig, tokens: jax.Array, attention_mask: jax.Array,
               positions_mask: jax.Array) -> jax.Array:
  """Scalar outputs at marked positions (PRM step markers): float32 ``[B, T]``, 0 elsewhere."""
  chex.assert_equal_shape([tokens, positions_mask])
  values = token_values(params, config, tokens, attention_mask)
  return jnp.where(positions_mask.astype(bool), values, 0.0)
