"""Tiny model configs for tests and demos, one per family (nothing is downloaded).

``tiny(family)`` mirrors each family's switches at toy size: d_model 32, 2 layers, 4 heads, 2 KV
heads, head_dim 8, d_ff 64, vocabulary 61 (deliberately not a power of two).
"""

from __future__ import annotations

import dataclasses

from jaxrl_llm.config.schema import FAMILIES, ModelConfig

_BASE = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
             max_seq_len=64)

_FAMILY = {
    "llama": dict(tie_embeddings=False),
    "qwen2": dict(tie_embeddings=False, attention_bias=True),
    "qwen3": dict(tie_embeddings=False, qk_norm=True),
    "mistral": dict(tie_embeddings=False, sliding_window=4),
    "gemma": dict(norm_offset=True, embed_scale=True, activation="gelu_tanh"),
    "gemma2": dict(norm_offset=True, embed_scale=True, activation="gelu_tanh", post_norms=True,
                   query_scale=12 ** -0.5, attn_softcap=50.0, final_softcap=30.0,
                   sliding_window=4, layer_types=("sliding", "full")),
    "gpt2": dict(n_kv_heads=4, head_dim=0, norm="layer", norm_eps=1e-5, activation="gelu_tanh",
                 gated_mlp=False, attention_bias=True, out_bias=True, mlp_bias=True,
                 positions="learned"),
}


def tiny(family: str = "llama", **overrides) -> ModelConfig:
  """The tiny config of ``family`` (see module doc); ``overrides`` replace fields."""
  if family not in FAMILIES:
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")
  config = ModelConfig(family=family, **{**_BASE, **_FAMILY[family]})
  return dataclasses.replace(config, **overrides) if overrides else config
