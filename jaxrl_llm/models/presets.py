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


# Real-size architectures, as the `config.json` of their Hugging Face checkpoints states them
# (shapes only: no weights). For `jaxrl-llm plan` and memory tables.
_QWEN = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768,
             rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu")
_HF_CONFIGS = {
    "Qwen2.5-0.5B": dict(_QWEN, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(_QWEN, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "Qwen2.5-7B": dict(_QWEN, vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       tie_word_embeddings=False),
    "Llama-3-8B": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                       rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False),
    "Gemma-2-2B": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304,
                       intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                       rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                       query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, sliding_window=4096,
                       layer_types=["sliding_attention", "full_attention"] * 13,
                       tie_word_embeddings=True),
}
REAL_SIZES = tuple(_HF_CONFIGS)


def real_size(name: str, **overrides) -> ModelConfig:
  """The architecture of a released model (one of :data:`REAL_SIZES`), from its Hugging Face
  config; ``overrides`` replace fields (dtypes, LoRA, ``max_seq_len`` ...)."""
  from jaxrl_llm.models.hf import config_from_hf

  if name not in _HF_CONFIGS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(REAL_SIZES)}")
  return config_from_hf(_HF_CONFIGS[name], **overrides)
