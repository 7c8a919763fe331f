"""A decoder-only transformer in Flax Linen: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Einsum letters: B batch, T query time, S key time, D model, N query heads, K kv heads, G query heads
per kv head, H head dim, F MLP hidden, V vocabulary.

Every parameter carries logical axis names (``nn.with_logical_partitioning``), so
:mod:`jaxrl_llm.parallel` can place it on any mesh. Positions come from the attention mask (a
left-padded prompt starts at position 0 at its first real token), and optional ``segment_ids``
keep packed sequences from attending to each other. Logits are always float32.

The model-zoo issue generalises this module (norm kinds, biases, qk-norm, soft-capping, other
heads); its pieces are kept small and separately named with that in mind.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import chex
import flax.linen as nn

from jaxrl_llm.config.schema import ModelConfig

_NEG = -1e30  # Finite "minus infinity": fully masked rows give a uniform softmax, never NaN.


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _param(module: nn.Module, name: str, init, shape, names, dtype):
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def positions_from_mask(attention_mask: jax.Array, segment_ids: jax.Array | None = None
                        ) -> jax.Array:
  """``int32[B, T]`` positions: the index of each real token among the real tokens of its row
  (of its segment, when ``segment_ids`` marks packed sequences; segments are contiguous runs).

  Padding positions get the position of the previous real token (0 before the first); they are
  masked out of attention anyway.
  """
  chex.assert_rank(attention_mask, 2)
  m = attention_mask.astype(jnp.int32)
  count = jnp.cumsum(m, axis=-1)  # Real tokens up to and including t.
  if segment_ids is not None:
    chex.assert_equal_shape([attention_mask, segment_ids])
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    before = jnp.where(starts, count - m, 0)  # Real tokens before each segment's start.
    count = count - jax.lax.cummax(before, axis=1)
  return jnp.maximum(count - 1, 0)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, rotate-half layout (as Llama checkpoints store q/k).

  Args:
    x: ``[B, T, N, H]`` queries or keys, H even.
    positions: ``int32[B, T]``.
  """
  h = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))  # [H/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : h // 2], x32[..., h // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nn.Module):
  eps: float
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("norm",), self.param_dtype)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool):
    c = self.config
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    d, n, k, h = c.d_model, c.n_heads, c.n_kv_heads, c.resolved_head_dim
    init = nn.initializers.normal(stddev=d ** -0.5)
    wq = _param(self, "q", init, (d, n, h), ("embed", "heads", "head_dim"), pd).astype(cd)
    wk = _param(self, "k", init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd).astype(cd)
    wv = _param(self, "v", init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd).astype(cd)
    wo = _param(self, "o", nn.initializers.normal(stddev=(n * h) ** -0.5), (n, h, d),
                ("heads", "head_dim", "embed"), pd).astype(cd)
    q = apply_rope(jnp.einsum("BTD,DNH->BTNH", x, wq), positions, c.rope_theta)
    kk = apply_rope(jnp.einsum("BSD,DKH->BSKH", x, wk), positions, c.rope_theta)
    v = jnp.einsum("BSD,DKH->BSKH", x, wv)
    b, t = x.shape[:2]
    q = q.reshape(b, t, k, n // k, h)  # [B, T, K, G, H]
    scores = jnp.einsum("BTKGH,BSKH->BKGTS", q, kk).astype(jnp.float32) * (h ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(c.dropout_rate)(probs, deterministic=deterministic).astype(cd)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
    return jnp.einsum("BTNH,NHD->BTD", out, wo)


class SwiGLU(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    init_in = nn.initializers.normal(stddev=c.d_model ** -0.5)
    init_out = nn.initializers.normal(stddev=c.d_ff ** -0.5)
    gate = _param(self, "gate", init_in, (c.d_model, c.d_ff), ("embed", "mlp"), pd).astype(cd)
    up = _param(self, "up", init_in, (c.d_model, c.d_ff), ("embed", "mlp"), pd).astype(cd)
    down = _param(self, "down", init_out, (c.d_ff, c.d_model), ("mlp", "embed"), pd).astype(cd)
    hidden = jax.nn.silu(jnp.einsum("BTD,DF->BTF", x, gate)) * jnp.einsum("BTD,DF->BTF", x, up)
    return jnp.einsum("BTF,FD->BTD", hidden, down)


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool):
    c = self.config
    pd = _dtype(c.param_dtype)
    drop = nn.Dropout(c.dropout_rate)
    h = Attention(c, name="attn")(RMSNorm(c.norm_eps, pd, name="attn_norm")(x), positions, mask,
                                  deterministic)
    x = x + drop(h, deterministic=deterministic)
    h = SwiGLU(c, name="mlp")(RMSNorm(c.norm_eps, pd, name="mlp_norm")(x))
    return x + drop(h, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder-only language model.

  ``__call__(tokens int32[B, T], attention_mask bool[B, T], segment_ids int32[B, T] | None)``
  returns float32 logits ``[B, T, V]``, or the final normed hidden states ``[B, T, D]`` (compute
  dtype) when ``return_hidden=True`` -- for callers that fuse the LM head into the log-prob kernel
  (see :func:`lm_head_weight`).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, attention_mask, segment_ids=None, *, deterministic: bool = True,
               return_hidden: bool = False):
    c = self.config
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask])
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    attention_mask = attention_mask.astype(bool)
    embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                       (c.vocab_size, c.d_model), ("vocab", "embed"), pd)
    x = jnp.take(embedding, tokens, axis=0).astype(cd)
    positions = positions_from_mask(attention_mask, segment_ids)
    t = tokens.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    mask = causal[None] & attention_mask[:, None, :]  # [B, T(query), S(key)]
    if segment_ids is not None:
      chex.assert_equal_shape([tokens, segment_ids])
      mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    for i in range(c.n_layers):
      x = Block(c, name=f"layer_{i}")(x, positions, mask, deterministic)
    x = RMSNorm(c.norm_eps, pd, name="final_norm")(x)
    if not c.tie_embeddings:
      # Created unconditionally so the parameter tree never depends on `return_hidden`.
      head = _param(self, "lm_head", nn.initializers.normal(stddev=c.d_model ** -0.5),
                    (c.d_model, c.vocab_size), ("embed", "vocab"), pd)
    if return_hidden:
      return x
    if c.tie_embeddings:
      # Tied: the embedding table scaled by 1/sqrt(D) keeps initial logits O(1).
      return jnp.einsum("BTD,VD->BTV", x, embedding.astype(cd),
                        preferred_element_type=jnp.float32) * (c.d_model ** -0.5)
    return jnp.einsum("BTD,DV->BTV", x, head.astype(cd), preferred_element_type=jnp.float32)


def lm_head_weight(params, config: ModelConfig) -> jax.Array:
  """The ``[D, V]`` matrix with ``logits = hidden @ W`` (tied or untied), float32."""
  if config.tie_embeddings:
    return params["embedding"].astype(jnp.float32).T * (config.d_model ** -0.5)
  return params["lm_head"].astype(jnp.float32)
