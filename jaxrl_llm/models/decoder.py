"""One configurable decoder in Flax Linen: Llama 2/3, Qwen2/2.5, Qwen3, Mistral, Gemma 1/2, GPT-2.

Einsum letters: B batch, T query time, S key time, D model, N query heads, K kv heads, G query heads
per kv head, H head dim, F MLP hidden, V vocabulary.

Every parameter carries logical axis names (``nn.with_logical_partitioning``) so
:mod:`jaxrl_llm.parallel` can place it on any mesh. Positions come from the attention mask (a
left-padded prompt starts at position 0 at its first real token), ``segment_ids`` keep packed
sequences apart (positions restart per segment), and logits are float32.

KV cache: pass ``cache=`` (from :func:`init_cache`) and the call writes this chunk's keys and values
at ``cache["index"]`` (one position for all rows, or ``int32[B]``: one per row) and returns
``(output, new_cache)``; :func:`prefill` and :func:`decode_step`
wrap it. Shapes stay static (the cache is preallocated), so decoding compiles once.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.kernels import BlockSizes
from jaxrl_llm.models import lora as lora_lib
from jaxrl_llm.parallel.tpu import compile_backend

_NEG = -1e30  # Finite "minus infinity": fully masked rows give a uniform softmax, never NaN.


def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _param(module: nn.Module, name: str, init, shape, names, dtype):
  value = module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)
  # With LoRA the base is frozen: no gradient flows into it (nor is its weight gradient computed).
  frozen = module.frozen if isinstance(module, Norm) else module.config.lora.rank > 0
  return jax.lax.stop_gradient(value) if frozen else value


def _weight_name(module: nn.Module, name: str) -> str:
  """``layer_{i}/attn/q``: a weight's name inside the decoder (``model.lora.targets``)."""
  path = list(module.scope.path)
  layer = max((i for i, p in enumerate(path) if p.startswith("layer_")), default=len(path))
  return "/".join(path[layer:] + [name])


def _lora(module: nn.Module, name: str, x: jax.Array, in_shape: tuple, out_shape: tuple,
          in_names: tuple, out_names: tuple, deterministic: bool):
  """The LoRA term ``(alpha / r)·(dropout(x)·A)·B`` of weight ``name`` (``x``'s trailing dims are
  ``in_shape``; the result ends in ``out_shape``), or ``None`` when ``model.lora`` does not target
  it. ``A`` and ``B`` are float32 params ``{name}_lora_a`` / ``{name}_lora_b`` next to the
  weight, with its logical axes (so they shard like it) and ``lora_rank`` (replicated)."""
  c = module.config
  lc = c.lora
  if not lc.rank or _weight_name(module, name) not in c.lora_weights():
    return None
  fan_in = math.prod(in_shape)
  a = module.param(f"{name}_lora_a", nn.with_logical_partitioning(
      lora_lib.a_initializer(fan_in), in_names + ("lora_rank",)),
      in_shape + (lc.rank,), jnp.float32)
  b = module.param(f"{name}_lora_b", nn.with_logical_partitioning(
      nn.initializers.zeros, ("lora_rank",) + out_names), (lc.rank,) + out_shape, jnp.float32)
  cd = _dtype(c.dtype)
  h = nn.Dropout(lc.dropout)(x, deterministic=deterministic) if lc.dropout else x
  xa = jnp.tensordot(h, a.astype(cd), axes=len(in_shape))
  scale = lc.alpha / (math.sqrt(lc.rank) if lc.rslora else lc.rank)
  return jnp.tensordot(xa, b.astype(cd), axes=1) * jnp.asarray(scale, cd)


def _plus(y: jax.Array, delta) -> jax.Array:
  return y if delta is None else y + delta


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


def rope_inv_freq(config: ModelConfig) -> jax.Array:
  """``float32[H/2]`` inverse frequencies, with Llama-3 scaling when ``rope_type == "llama3"``."""
  h = config.resolved_head_dim
  inv = 1.0 / (config.rope_theta ** (jnp.arange(0, h, 2, dtype=jnp.float32) / h))
  if config.rope_type != "llama3":
    return inv
  factor, lo, hi = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
  old = config.rope_original_max_positions
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old / hi) & (wavelen <= old / lo)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq) -> jax.Array:
  """Rotary embedding, rotate-half layout (as Llama-family checkpoints store q/k).

  Args:
    x: ``[B, T, N, H]``; positions: ``int32[B, T]``; inv_freq: ``float32[H/2]``
      (:func:`rope_inv_freq`).
  """
  h = x.shape[-1]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : h // 2], x32[..., h // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def _activation(name: str):
  return {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
          "gelu": lambda x: jax.nn.gelu(x, approximate=False)}[name]


class Norm(nn.Module):
  """RMSNorm (``w`` or Gemma's ``1 + w``) or LayerNorm (GPT-2), computed in float32."""

  kind: str
  eps: float
  offset: bool = False
  param_dtype: jnp.dtype = jnp.float32
  axis_name: str = "norm"
  frozen: bool = False  # LoRA: no gradient into the scale / bias.

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = _param(self, "scale", init, (d,), (self.axis_name,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    if self.kind == "layer":
      bias = _param(self, "bias", nn.initializers.zeros, (d,), (self.axis_name,), self.param_dtype)
      mean = jnp.mean(x32, axis=-1, keepdims=True)
      var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
      y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
      return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    w = scale.astype(jnp.float32)
    return (y * (1.0 + w if self.offset else w)).astype(x.dtype)


def _norm(c: ModelConfig, name: str, axis_name: str = "norm") -> Norm:
  return Norm(c.norm, c.norm_eps, c.norm_offset, _dtype(c.param_dtype), axis_name,
              c.lora.rank > 0, name=name)


def _write(buf: jax.Array, update: jax.Array, index: jax.Array, axis: int) -> jax.Array:
  """Writes ``update`` into ``buf`` at ``index`` along ``axis``: a scalar index for every row, or
  ``int32[B]`` -- one write position per row (the refill sampler's slots)."""
  if jnp.ndim(index) == 0:
    return jax.lax.dynamic_update_slice_in_dim(buf, update, index, axis=axis)
  return jax.vmap(lambda b, u, i: jax.lax.dynamic_update_slice_in_dim(b, u, i, axis=axis - 1))(
      buf, update, index)


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool, cache=None, index=None):
    c = self.config
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    d, n, k, h = c.d_model, c.n_heads, c.n_kv_heads, c.resolved_head_dim
    init = nn.initializers.normal(stddev=d ** -0.5)
    wq = _param(self, "q", init, (d, n, h), ("embed", "heads", "head_dim"), pd).astype(cd)
    wk = _param(self, "k", init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd).astype(cd)
    wv = _param(self, "v", init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd).astype(cd)
    wo = _param(self, "o", nn.initializers.normal(stddev=(n * h) ** -0.5), (n, h, d),
                ("heads", "head_dim", "embed"), pd).astype(cd)
    q = _plus(jnp.einsum("BTD,DNH->BTNH", x, wq),
              _lora(self, "q", x, (d,), (n, h), ("embed",), ("heads", "head_dim"), deterministic))
    kk = _plus(jnp.einsum("BSD,DKH->BSKH", x, wk),
               _lora(self, "k", x, (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                     deterministic))
    v = _plus(jnp.einsum("BSD,DKH->BSKH", x, wv),
              _lora(self, "v", x, (d,), (k, h), ("embed",), ("kv_heads", "head_dim"),
                    deterministic))
    if c.attention_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", zeros, (n, h), ("heads", "head_dim"), pd).astype(cd)
      kk = kk + _param(self, "k_bias", zeros, (k, h), ("kv_heads", "head_dim"), pd).astype(cd)
      v = v + _param(self, "v_bias", zeros, (k, h), ("kv_heads", "head_dim"), pd).astype(cd)
    if c.qk_norm:
      q = _norm(c, "q_norm", "head_dim")(q)
      kk = _norm(c, "k_norm", "head_dim")(kk)
    if c.positions == "rope":
      inv = rope_inv_freq(c)
      q = apply_rope(q, positions, inv)
      kk = apply_rope(kk, positions, inv)
    b, t = x.shape[:2]
    # Values live as [B, K, S, H] and cached keys as [B, K, H, S]: the score and output dots then
    # batch over leading (B, K) with the long S axis contiguous, and decoding never transposes the
    # cache (keys stored [B, K, S, H] made XLA:CPU's decode-time score dot ~4x slower).
    v = jnp.transpose(v, (0, 2, 1, 3))
    q = q.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    scale = c.query_scale if c.query_scale else h ** -0.5
    new_cache = None
    if cache is not None:
      kt = _write(cache["k"], jnp.transpose(kk, (0, 2, 3, 1)).astype(cache["k"].dtype), index, 3)
      v = _write(cache["v"], v.astype(cache["v"].dtype), index, 2)
      new_cache = {"k": kt, "v": v}
      v = v.astype(cd)
      scores = jnp.einsum("BKGTH,BKHS->BKGTS", q, kt.astype(cd)).astype(jnp.float32) * scale
    else:
      kk = jnp.transpose(kk, (0, 2, 1, 3))
      scores = jnp.einsum("BKGTH,BKSH->BKGTS", q, kk).astype(jnp.float32) * scale
    if c.attn_softcap:
      scores = jnp.tanh(scores / c.attn_softcap) * c.attn_softcap
    scores = jnp.where(mask[:, None, None, :, :], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(c.dropout_rate)(probs, deterministic=deterministic).astype(cd)
    # Contract into [B, K, G, T, H] (a plain batched matmul) and move T forward afterwards: asking
    # the dot for BTKGH directly made XLA:CPU pick a transposed [.., H, G] output layout that ran
    # ~6x slower in decoding, where T = 1 and this transpose is free.
    out = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h)
    out = _plus(jnp.einsum("BTNH,NHD->BTD", out, wo),
                _lora(self, "o", out, (n, h), (d,), ("heads", "head_dim"), ("embed",),
                      deterministic))
    if c.out_bias:
      out = out + _param(self, "o_bias", nn.initializers.zeros, (d,), ("embed",), pd).astype(cd)
    return out, new_cache


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    c = self.config
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    act = _activation(c.activation)
    lora = lambda name, x, n_in, n_out, names_in, names_out: _lora(
        self, name, x, (n_in,), (n_out,), (names_in,), (names_out,), deterministic)
    init_in = nn.initializers.normal(stddev=c.d_model ** -0.5)
    init_out = nn.initializers.normal(stddev=c.d_ff ** -0.5)
    up = _param(self, "up", init_in, (c.d_model, c.d_ff), ("embed", "mlp"), pd).astype(cd)
    down = _param(self, "down", init_out, (c.d_ff, c.d_model), ("mlp", "embed"), pd).astype(cd)
    u = _plus(jnp.einsum("BTD,DF->BTF", x, up), lora("up", x, c.d_model, c.d_ff, "embed", "mlp"))
    if c.mlp_bias:
      u = u + _param(self, "up_bias", nn.initializers.zeros, (c.d_ff,), ("mlp",), pd).astype(cd)
    if c.gated_mlp:
      gate = _param(self, "gate", init_in, (c.d_model, c.d_ff), ("embed", "mlp"), pd).astype(cd)
      g = _plus(jnp.einsum("BTD,DF->BTF", x, gate),
                lora("gate", x, c.d_model, c.d_ff, "embed", "mlp"))
      if c.mlp_bias:
        g = g + _param(self, "gate_bias", nn.initializers.zeros, (c.d_ff,), ("mlp",),
                       pd).astype(cd)
      hidden = act(g) * u
    else:
      hidden = act(u)
    out = _plus(jnp.einsum("BTF,FD->BTD", hidden, down),
                lora("down", hidden, c.d_ff, c.d_model, "mlp", "embed"))
    if c.mlp_bias:
      out = out + _param(self, "down_bias", nn.initializers.zeros, (c.d_model,), ("embed",),
                         pd).astype(cd)
    return out


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, deterministic: bool, cache=None, index=None):
    c = self.config
    drop = nn.Dropout(c.dropout_rate)
    h, new_cache = Attention(c, name="attn")(_norm(c, "attn_norm")(x), positions,
                                                           mask, deterministic, cache, index)
    if c.post_norms:
      h = _norm(c, "post_attn_norm")(h)
    x = x + drop(h, deterministic=deterministic)
    h = MLP(c, name="mlp")(_norm(c, "mlp_norm")(x), deterministic)
    if c.post_norms:
      h = _norm(c, "post_mlp_norm")(h)
    return x + drop(h, deterministic=deterministic), new_cache


class Decoder(nn.Module):
  """Decoder-only language model.

  ``__call__(tokens int32[B, T], attention_mask bool[B, T], segment_ids int32[B, T] | None)``
  returns float32 logits ``[B, T, V]`` (soft-capped when ``final_softcap``), or the final normed
  hidden states ``[B, T, D]`` (compute dtype) with ``return_hidden=True`` -- for the fused log-prob
  kernel with :func:`lm_head_weight`. With ``cache=`` it returns ``(output, new_cache)``.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, attention_mask, segment_ids=None, *, cache=None,
               deterministic: bool = True, return_hidden: bool = False):
    c = self.config
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask])
    pd, cd = _dtype(c.param_dtype), _dtype(c.dtype)
    attention_mask = attention_mask.astype(bool)
    embedding = _param(self, "embedding", nn.initializers.normal(stddev=c.d_model ** -0.5),
                       (c.vocab_size, c.d_model), ("vocab", "embed"), pd)
    x = jnp.take(embedding, tokens, axis=0).astype(cd)
    if c.embed_scale:
      x = x * jnp.asarray(math.sqrt(c.d_model), cd)
    b, t = tokens.shape
    if cache is None:
      positions = positions_from_mask(attention_mask, segment_ids)
      q_idx = jnp.arange(t)[None, :]
      key_mask = attention_mask
      index = None
    else:
      # A scalar index (every row writes at the same slot) or int32[B] (one per row).
      index = cache["index"]
      seen = jnp.sum(cache["mask"].astype(jnp.int32), axis=-1, keepdims=True)
      positions = seen + jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), -1) - 1, 0)
      q_idx = jnp.reshape(index, (-1, 1)) + jnp.arange(t)[None, :]  # [1 or B, T]
      key_mask = _write(cache["mask"], attention_mask, index, 1)
    s = key_mask.shape[1]
    k_idx = jnp.arange(s)
    causal = k_idx[None, None, :] <= q_idx[:, :, None]  # [1 or B, T, S]
    mask = causal & key_mask[:, None, :]
    if segment_ids is not None:
      if cache is not None:
        raise ValueError("segment_ids (packing) and a KV cache cannot be combined")
      chex.assert_equal_shape([tokens, segment_ids])
      mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
    window = ((q_idx[:, :, None] - k_idx[None, None, :]) < c.sliding_window
              if c.sliding_window else None)
    if c.positions == "learned":
      table = _param(self, "pos_embedding", nn.initializers.normal(stddev=0.02),
                     (c.max_seq_len, c.d_model), ("positions", "embed"), pd)
      x = x + jnp.take(table, jnp.minimum(positions, c.max_seq_len - 1), axis=0).astype(cd)
    new_layers = []
    # model.remat: each block's activations are recomputed in the backward instead of kept
    # (argument 4, `deterministic`, is a Python bool). Parameter names are unchanged.
    block = nn.remat(Block, static_argnums=(4,)) if c.remat and cache is None else Block
    for i in range(c.n_layers):
      layer_mask = mask & window if c.layer_is_sliding(i) else mask
      layer_cache = None if cache is None else cache["layers"][i]
      x, new = block(c, name=f"layer_{i}")(x, positions, layer_mask, deterministic,
                                           layer_cache, index)
      new_layers.append(new)
    x = _norm(c, "final_norm")(x)
    if not c.tie_embeddings:
      # Created unconditionally so the parameter tree never depends on `return_hidden`.
      head = _param(self, "lm_head", nn.initializers.normal(stddev=c.d_model ** -0.5),
                    (c.d_model, c.vocab_size), ("embed", "vocab"), pd)
    if return_hidden:
      out = x
    else:
      out = _project(x, embedding.T if c.tie_embeddings else head, c)
    if cache is None:
      return out
    return out, {"layers": new_layers, "mask": key_mask, "index": index + t}


def lm_head_weight(params, config: ModelConfig) -> jax.Array:
  """The ``[D, V]`` matrix with ``raw logits = hidden @ W`` (tied or untied).

  Apply ``config.final_softcap`` (the kernels' ``softcap=``) to get the model's logits.
  """
  if config.tie_embeddings:
    return params["embedding"].T
  return params["lm_head"]


def logprob_kwargs(config: ModelConfig) -> dict:
  """The keyword arguments of :func:`jaxrl_llm.kernels.fused_linear_logprobs` that the model
  config fixes: the final soft-capping and the kernel path and block sizes
  (``model.logprob_impl`` / ``logprob_block_n`` / ``logprob_block_v``)."""
  blocks = None
  if config.logprob_block_n or config.logprob_block_v:
    default = BlockSizes.default(compile_backend())
    blocks = BlockSizes(block_n=config.logprob_block_n or default.block_n,
                        block_v=config.logprob_block_v or default.block_v)
  return dict(softcap=config.final_softcap or None, block_sizes=blocks,
              impl=None if config.logprob_impl == "auto" else config.logprob_impl)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache: per layer keys ``k [B, K, H, max_len]`` and values ``v [B, K, max_len, H]``
  (:class:`Attention` says why keys are stored transposed), ``mask bool[B, max_len]`` (which slots
  hold real tokens) and ``index`` (int32, next slot to write)."""
  dtype = dtype or _dtype(config.dtype)
  h = config.resolved_head_dim
  shape = (batch, config.n_kv_heads, max_len, h)
  key_shape = (batch, config.n_kv_heads, h, max_len)
  layers = [{"k": jnp.zeros(key_shape, dtype), "v": jnp.zeros(shape, dtype)}
            for _ in range(config.n_layers)]
  return {"layers": layers, "mask": jnp.zeros((batch, max_len), bool),
          "index": jnp.zeros((), jnp.int32)}


def prefill(params, config: ModelConfig, tokens: jax.Array, attention_mask: jax.Array,
            max_len: int, *, return_hidden: bool = False):
  """Runs the prompt (``[B, P]``, left-padded) into a fresh cache of ``max_len`` slots.

  Returns:
    (logits float32 ``[B, P, V]``, cache), or with ``return_hidden=True`` the final normed hidden
    states ``[B, P, D]`` instead of logits (a sampler needs the LM head at the last column only:
    :func:`lm_head`).
  """
  if tokens.shape[1] > max_len:
    raise ValueError(f"prompt length {tokens.shape[1]} exceeds the cache size {max_len}")
  cache = init_cache(config, tokens.shape[0], max_len)
  return Decoder(config).apply({"params": params}, tokens, attention_mask, cache=cache,
                               return_hidden=return_hidden)


def _project(x: jax.Array, w: jax.Array, config: ModelConfig, vocab_major: bool = False
             ) -> jax.Array:
  """float32 logits of hidden states ``x [..., D]`` and the head ``w [D, V]``, soft-capped.

  ``[..., V]``; with ``vocab_major=True`` (``x [N, D]`` only) ``[V, N]``.
  """
  w = w.astype(_dtype(config.dtype))
  if vocab_major:
    out = jnp.einsum("DV,ND->VN", w, x, preferred_element_type=jnp.float32)
  else:
    out = jnp.einsum("...D,DV->...V", x, w, preferred_element_type=jnp.float32)
  if config.final_softcap:
    out = jnp.tanh(out / config.final_softcap) * config.final_softcap
  return out


def lm_head(params, config: ModelConfig, hidden: jax.Array, *, vocab_major: bool = False
            ) -> jax.Array:
  """Logits float32 of final hidden states, exactly as the model makes them.

  Args:
    hidden: ``[..., D]`` (``[N, D]`` when ``vocab_major``).
  Returns:
    ``[..., V]``, or ``[V, N]`` with ``vocab_major=True``: the decode-time layout, in which
    XLA:CPU runs this small-batch matmul ~30% faster than in ``[N, V]``
    (:mod:`jaxrl_llm.rollout` samples in it).
  """
  if vocab_major:
    chex.assert_rank(hidden, 2)
  return _project(hidden, lm_head_weight(params, config), config, vocab_major)


def decode_step(params, config: ModelConfig, tokens: jax.Array, cache: dict,
                valid: jax.Array | None = None, *, return_hidden: bool = False):
  """Feeds one token per row (``int32[B]``); returns (logits float32 ``[B, V]``, cache), or the
  final normed hidden states ``[B, D]`` instead of logits with ``return_hidden=True``.

  ``valid`` (bool ``[B]``) marks rows whose token is real (finished rows can pass False).
  """
  valid = jnp.ones(tokens.shape, bool) if valid is None else valid
  out, cache = Decoder(config).apply({"params": params}, tokens[:, None], valid[:, None],
                                     cache=cache, return_hidden=return_hidden)
  return out[:, 0], cache
