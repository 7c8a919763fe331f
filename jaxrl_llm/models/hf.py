"""Hugging Face interop: ``config.json`` + safetensors ⇄ (``ModelConfig``, params pytree).

Import reads tensors one at a time through a memory map of the safetensors files (any dtype,
bfloat16 included, via ``ml_dtypes``), converts that one tensor to our layout and places it with
``jax.make_array_from_callback`` straight into its target ``NamedSharding``: each device receives
only its shard and the host never holds more than one tensor (in two layouts at most), so a model
larger than a device never sits whole on one device, nor twice in host memory.

Layouts: HF ``nn.Linear`` weights are ``[out, in]``; ours are ``[in, ...heads..., out]`` einsum
kernels (``q: [D, N, H]``, ``o: [N, H, D]``, MLP ``[D, F]``/``[F, D]``, ``lm_head: [D, V]``). GPT-2's
``Conv1D`` weights are already ``[in, out]`` and its q/k/v live in one ``c_attn`` tensor.

Errors (:class:`HFError`) name the offending tensor or field: a missing tensor, an unexpected one, a
shape mismatch, an unsupported architecture or RoPE type.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel.mesh import DEFAULT_RULES, tree_shardings


class HFError(ValueError):
  """A Hugging Face checkpoint cannot be mapped; the message names the tensor or field."""


ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}

# --------------------------------------------------------------------------- safetensors reading

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


class SafetensorsReader:
  """Memory-mapped, lazy access to every tensor of a checkpoint directory.

  Uses ``model.safetensors.index.json`` when present (sharded checkpoints), else every
  ``*.safetensors`` file. ``get(name)`` returns a read-only ``np.memmap`` view (no copy).
  """

  def __init__(self, directory: str):
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      files = [os.path.join(directory, name) for name in files]
    else:
      files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
      raise HFError(f"{directory}: no *.safetensors files")
    self._entries: dict[str, tuple[str, Any, tuple, int]] = {}
    for path in files:
      with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
      base = 8 + header_len
      for name, info in header.items():
        if name == "__metadata__":
          continue
        if info["dtype"] not in _DTYPES:
          raise HFError(f"tensor {name!r}: unsupported safetensors dtype {info['dtype']}")
        begin, _ = info["data_offsets"]
        self._entries[name] = (path, _DTYPES[info["dtype"]], tuple(info["shape"]), base + begin)

  def names(self) -> set[str]:
    return set(self._entries)

  def shape(self, name: str) -> tuple:
    return self._entries[name][2]

  def get(self, name: str) -> np.ndarray:
    if name not in self._entries:
      raise HFError(f"missing tensor {name!r} in the checkpoint")
    path, dtype, shape, offset = self._entries[name]
    if int(np.prod(shape)) == 0:
      return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


# --------------------------------------------------------------------------- configs

def _get(hf: dict, *names, default=None):
  for n in names:
    if hf.get(n) is not None:
      return hf[n]
  return default


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
  """Maps a Hugging Face ``config.json`` dict onto :class:`ModelConfig` (``overrides`` win).

  Raises:
    HFError: unsupported architecture or RoPE type, naming it.
  """
  model_type = hf.get("model_type")
  if model_type not in ARCHITECTURES:
    raise HFError(f"unsupported architecture: model_type={model_type!r} "
                  f"(architectures={hf.get('architectures')}); supported: {sorted(ARCHITECTURES)}")
  if model_type == "gpt2":
    d = hf["n_embd"]
    kw = dict(family="gpt2", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
              n_heads=hf["n_head"], n_kv_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
              max_seq_len=hf.get("n_positions", 1024), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
              tie_embeddings=True, norm="layer", activation=_act(hf.get("activation_function",
                                                                        "gelu_new"), "gpt2"),
              gated_mlp=False, attention_bias=True, out_bias=True, mlp_bias=True,
              positions="learned")
    kw.update(overrides)
    return ModelConfig(**kw)
  rope = dict(hf.get("rope_parameters") or {})
  legacy = hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
  theta = rope.get("rope_theta") or hf.get("rope_theta") or 10000.0
  if rope_type not in ("default", "llama3"):
    raise HFError(f"config field 'rope_parameters.rope_type': {rope_type!r} is not supported "
                  "(supported: default, llama3)")
  scaling = {**legacy, **rope}
  n_heads = hf["num_attention_heads"]
  d = hf["hidden_size"]
  kw = dict(family=model_type, vocab_size=hf["vocab_size"], d_model=d,
            n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads,
            head_dim=hf.get("head_dim") or d // n_heads, d_ff=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=float(theta),
            norm_eps=_get(hf, "rms_norm_eps", default=1e-6),
            tie_embeddings=bool(hf.get("tie_word_embeddings", model_type.startswith("gemma"))),
            activation=_act(_get(hf, "hidden_activation", "hidden_act", default="silu"),
                            model_type),
            rope_type=rope_type)
  if rope_type == "llama3":
    kw.update(rope_factor=float(scaling["factor"]),
              rope_low_freq_factor=float(scaling["low_freq_factor"]),
              rope_high_freq_factor=float(scaling["high_freq_factor"]),
              rope_original_max_positions=int(scaling["original_max_position_embeddings"]))
  if model_type == "llama":
    kw.update(attention_bias=bool(hf.get("attention_bias")), out_bias=bool(hf.get("attention_bias")),
              mlp_bias=bool(hf.get("mlp_bias")))
  elif model_type == "qwen2":
    kw.update(attention_bias=True)
  elif model_type == "qwen3":
    kw.update(qk_norm=True, attention_bias=bool(hf.get("attention_bias")),
              out_bias=bool(hf.get("attention_bias")))
  elif model_type in ("gemma", "gemma2"):
    kw.update(norm_offset=True, embed_scale=True)
    if model_type == "gemma2":
      kw.update(post_norms=True, query_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
                attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
                final_softcap=float(hf.get("final_logit_softcapping") or 0.0))
  layer_types = hf.get("layer_types")
  window = hf.get("sliding_window") or 0
  if model_type == "qwen2" and not hf.get("use_sliding_window"):
    window, layer_types = 0, None
  if layer_types:
    types = tuple("sliding" if t == "sliding_attention" else "full" for t in layer_types)
    if "sliding" in types:
      kw.update(layer_types=types, sliding_window=int(window))
  elif window and model_type == "mistral":
    kw.update(sliding_window=int(window))
  kw.update(overrides)
  return ModelConfig(**kw)


def _act(name: str, model_type: str) -> str:
  table = {"silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh",
           "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
  if name not in table:
    raise HFError(f"config field 'hidden_act' of {model_type}: activation {name!r} is not "
                  f"supported (supported: {sorted(table)})")
  return table[name]


def config_to_hf(c: ModelConfig) -> dict:
  """The Hugging Face ``config.json`` dict of ``c`` (what ``transformers`` needs to load it)."""
  if c.family == "gpt2":
    return {"model_type": "gpt2", "architectures": [ARCHITECTURES["gpt2"]],
            "vocab_size": c.vocab_size, "n_embd": c.d_model, "n_layer": c.n_layers,
            "n_head": c.n_heads, "n_inner": c.d_ff, "n_positions": c.max_seq_len,
            "layer_norm_epsilon": c.norm_eps,
            "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu"}[c.activation],
            "tie_word_embeddings": True, "torch_dtype": c.param_dtype}
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[c.activation]
  rope = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
  if c.rope_type == "llama3":
    rope.update(factor=c.rope_factor, low_freq_factor=c.rope_low_freq_factor,
                high_freq_factor=c.rope_high_freq_factor,
                original_max_position_embeddings=c.rope_original_max_positions)
  out = {"model_type": c.family, "architectures": [ARCHITECTURES[c.family]],
         "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
         "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
         "num_key_value_heads": c.n_kv_heads, "head_dim": c.resolved_head_dim,
         "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
         "rope_parameters": rope, "rope_theta": c.rope_theta,
         "tie_word_embeddings": c.tie_embeddings, "torch_dtype": c.param_dtype}
  if c.family.startswith("gemma"):
    out["hidden_activation"] = act
  else:
    out["hidden_act"] = act
  if c.family in ("llama", "qwen3"):
    out["attention_bias"] = c.attention_bias
  if c.family == "llama":
    out["mlp_bias"] = c.mlp_bias
  types = [("sliding_attention" if c.layer_is_sliding(i) else "full_attention")
           for i in range(c.n_layers)]
  if c.family == "gemma2":
    out.update(query_pre_attn_scalar=(int(round(c.query_scale ** -2)) if c.query_scale
                                      else c.resolved_head_dim),
               attn_logit_softcapping=c.attn_softcap or None,
               final_logit_softcapping=c.final_softcap or None)
  if c.sliding_window:
    out["sliding_window"] = c.sliding_window
    if c.family == "qwen2":
      out["use_sliding_window"] = True
  if c.family in ("gemma2", "qwen2", "qwen3") or (c.layer_types and c.family != "mistral"):
    out["layer_types"] = types
    if c.family == "gemma2" and not c.sliding_window:
      out["sliding_window"] = 4096 if "sliding_attention" not in types else c.sliding_window
  return out


# --------------------------------------------------------------------------- tensor layouts

@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One of our parameters: where it lives in the HF checkpoint and how to convert."""

  path: tuple[str, ...]
  hf_name: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _tensor_table(c: ModelConfig) -> list[_Tensor]:
  n, k, h, d = c.n_heads, c.n_kv_heads, c.resolved_head_dim, c.d_model
  same = lambda x: x
  t = lambda x: np.ascontiguousarray(x.T)
  heads_in = lambda heads: (lambda x: x.reshape(heads, h, d).transpose(2, 0, 1),
                            lambda x: x.transpose(1, 2, 0).reshape(heads * h, d))
  heads_bias = lambda heads: (lambda x: x.reshape(heads, h), lambda x: x.reshape(heads * h))
  o_proj = (lambda x: x.reshape(d, n, h).transpose(1, 2, 0),
            lambda x: x.transpose(2, 0, 1).reshape(d, n * h))
  out: list[_Tensor] = []
  add = lambda path, name, fns: out.append(_Tensor(tuple(path.split("/")), name, *fns))
  if c.family == "gpt2":
    add("embedding", "transformer.wte.weight", (same, same))
    add("pos_embedding", "transformer.wpe.weight", (same, same))
    for i in range(c.n_layers):
      p, hf = f"layer_{i}", f"transformer.h.{i}"
      for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        add(f"{p}/{ours}/scale", f"{hf}.{theirs}.weight", (same, same))
        add(f"{p}/{ours}/bias", f"{hf}.{theirs}.bias", (same, same))
      # c_attn is handled jointly (q, k, v slices of one tensor); see _gpt2_qkv.
      add(f"{p}/attn/o", f"{hf}.attn.c_proj.weight",
          (lambda x: x.reshape(n, h, d), lambda x: x.reshape(n * h, d)))
      add(f"{p}/attn/o_bias", f"{hf}.attn.c_proj.bias", (same, same))
      add(f"{p}/mlp/up", f"{hf}.mlp.c_fc.weight", (same, same))
      add(f"{p}/mlp/up_bias", f"{hf}.mlp.c_fc.bias", (same, same))
      add(f"{p}/mlp/down", f"{hf}.mlp.c_proj.weight", (same, same))
      add(f"{p}/mlp/down_bias", f"{hf}.mlp.c_proj.bias", (same, same))
    add("final_norm/scale", "transformer.ln_f.weight", (same, same))
    add("final_norm/bias", "transformer.ln_f.bias", (same, same))
    return out
  add("embedding", "model.embed_tokens.weight", (same, same))
  for i in range(c.n_layers):
    p, hf = f"layer_{i}", f"model.layers.{i}"
    add(f"{p}/attn_norm/scale", f"{hf}.input_layernorm.weight", (same, same))
    if c.post_norms:
      add(f"{p}/post_attn_norm/scale", f"{hf}.post_attention_layernorm.weight", (same, same))
      add(f"{p}/mlp_norm/scale", f"{hf}.pre_feedforward_layernorm.weight", (same, same))
      add(f"{p}/post_mlp_norm/scale", f"{hf}.post_feedforward_layernorm.weight", (same, same))
    else:
      add(f"{p}/mlp_norm/scale", f"{hf}.post_attention_layernorm.weight", (same, same))
    add(f"{p}/attn/q", f"{hf}.self_attn.q_proj.weight", heads_in(n))
    add(f"{p}/attn/k", f"{hf}.self_attn.k_proj.weight", heads_in(k))
    add(f"{p}/attn/v", f"{hf}.self_attn.v_proj.weight", heads_in(k))
    add(f"{p}/attn/o", f"{hf}.self_attn.o_proj.weight", o_proj)
    if c.attention_bias:
      add(f"{p}/attn/q_bias", f"{hf}.self_attn.q_proj.bias", heads_bias(n))
      add(f"{p}/attn/k_bias", f"{hf}.self_attn.k_proj.bias", heads_bias(k))
      add(f"{p}/attn/v_bias", f"{hf}.self_attn.v_proj.bias", heads_bias(k))
    if c.out_bias:
      add(f"{p}/attn/o_bias", f"{hf}.self_attn.o_proj.bias", (same, same))
    if c.qk_norm:
      add(f"{p}/attn/q_norm/scale", f"{hf}.self_attn.q_norm.weight", (same, same))
      add(f"{p}/attn/k_norm/scale", f"{hf}.self_attn.k_norm.weight", (same, same))
    add(f"{p}/mlp/gate", f"{hf}.mlp.gate_proj.weight", (t, t))
    add(f"{p}/mlp/up", f"{hf}.mlp.up_proj.weight", (t, t))
    add(f"{p}/mlp/down", f"{hf}.mlp.down_proj.weight", (t, t))
    if c.mlp_bias:
      add(f"{p}/mlp/up_bias", f"{hf}.mlp.up_proj.bias", (same, same))
      add(f"{p}/mlp/gate_bias", f"{hf}.mlp.gate_proj.bias", (same, same))
      add(f"{p}/mlp/down_bias", f"{hf}.mlp.down_proj.bias", (same, same))
  add("final_norm/scale", "model.norm.weight", (same, same))
  if not c.tie_embeddings:
    add("lm_head", "lm_head.weight", (t, t))
  return out


def _gpt2_qkv(c: ModelConfig, i: int, which: str, reader: SafetensorsReader, bias: bool):
  name = f"transformer.h.{i}.attn.c_attn.{'bias' if bias else 'weight'}"
  full = reader.get(name)
  j = "qkv".index(which)
  d, n, h = c.d_model, c.n_heads, c.resolved_head_dim
  part = full[..., j * d:(j + 1) * d]
  return part.reshape(n, h) if bias else part.reshape(d, n, h)


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flatten(value, prefix + (key,))
  else:
    yield prefix, tree


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# --------------------------------------------------------------------------- load / save

def load_hf(directory: str, *, mesh=None, rules=DEFAULT_RULES, param_dtype: str | None = None,
            dtype: str | None = None):
  """Loads a Hugging Face checkpoint directory into sharded params.

  Args:
    directory: holds ``config.json`` and ``*.safetensors`` (optionally with an index).
    mesh: target mesh (default: a single-device mesh); params land in their rule-given shardings.
    param_dtype, dtype: override the parameter / compute dtype (default: float32 / float32).
  Returns:
    (params, ModelConfig).
  Raises:
    HFError: naming a missing, unexpected or mis-shaped tensor, or an unsupported config.
  """
  with open(os.path.join(directory, "config.json")) as f:
    hf = json.load(f)
  overrides = {}
  if param_dtype:
    overrides["param_dtype"] = param_dtype
  if dtype:
    overrides["dtype"] = dtype
  config = config_from_hf(hf, **overrides)
  reader = SafetensorsReader(directory)
  if mesh is None:
    from jaxrl_llm.config.schema import MeshConfig
    from jaxrl_llm.parallel.mesh import make_mesh

    mesh = make_mesh(MeshConfig(data=1), jax.devices()[:1])
  abstract = abstract_params(config)
  shardings = tree_shardings(abstract, param_logical_axes(config), mesh, rules)
  table = {t.path: t for t in _tensor_table(config)}
  used: set[str] = set()
  params: dict = {}
  flat_shard = dict(_flatten(shardings))
  for path, leaf in _flatten(abstract):
    gpt2_qkv = config.family == "gpt2" and path[1:2] == ("attn",) and path[2] in (
        "q", "k", "v", "q_bias", "k_bias", "v_bias")
    if gpt2_qkv:
      i = int(path[0].split("_")[1])
      is_bias = path[2].endswith("_bias")
      name = f"transformer.h.{i}.attn.c_attn.{'bias' if is_bias else 'weight'}"
      host = _gpt2_qkv(config, i, path[2][0], reader, is_bias)
    else:
      if path not in table:
        raise HFError(f"no Hugging Face tensor is mapped to parameter {'/'.join(path)}")
      entry = table[path]
      name = entry.hf_name
      host = entry.to_ours(reader.get(name))
    used.add(name)
    if tuple(host.shape) != tuple(leaf.shape):
      raise HFError(f"tensor {name!r}: shape {reader.shape(name)} does not match the config "
                    f"(expected {tuple(leaf.shape)} in our layout, got {tuple(host.shape)})")
    target = leaf.dtype
    _set(params, path, jax.make_array_from_callback(
        leaf.shape, flat_shard[path],
        lambda index, host=host, target=target: np.asarray(host[index]).astype(target)))
  ignorable = {n for n in reader.names() if n.endswith("rotary_emb.inv_freq")
               or n.endswith(".attn.bias") or n.endswith(".attn.masked_bias")}
  if config.tie_embeddings:
    ignorable.add("lm_head.weight")  # Some exports write the tied head anyway.
  unexpected = sorted(reader.names() - used - ignorable)
  if unexpected:
    raise HFError(f"unexpected tensor(s) in the checkpoint: {unexpected[:5]}"
                  f"{' ...' if len(unexpected) > 5 else ''}")
  return params, config


def save_hf(params, config: ModelConfig, directory: str, *, dtype: str | None = None) -> None:
  """Writes ``config.json`` + ``model.safetensors`` that ``transformers`` loads.

  Args:
    dtype: storage dtype (default: ``config.param_dtype``).
  """
  import safetensors.numpy

  os.makedirs(directory, exist_ok=True)
  store = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
           "float16": np.float16}[dtype or config.param_dtype]
  flat = {path: np.asarray(jax.device_get(v)).astype(np.float32) for path, v in _flatten(params)}
  tensors: dict[str, np.ndarray] = {}
  for entry in _tensor_table(config):
    if entry.path not in flat:
      raise HFError(f"parameter {'/'.join(entry.path)} is missing from params")
    tensors[entry.hf_name] = entry.to_hf(flat[entry.path])
  if config.family == "gpt2":
    d = config.d_model
    for i in range(config.n_layers):
      a = f"layer_{i}", "attn"
      tensors[f"transformer.h.{i}.attn.c_attn.weight"] = np.concatenate(
          [flat[a + (w,)].reshape(d, d) for w in "qkv"], axis=1)
      tensors[f"transformer.h.{i}.attn.c_attn.bias"] = np.concatenate(
          [flat[a + (f"{w}_bias",)].reshape(d) for w in "qkv"])
  if store is ml_dtypes.bfloat16:
    import safetensors.flax

    safetensors.flax.save_file({k: jnp.asarray(v, jnp.bfloat16) for k, v in tensors.items()},
                               os.path.join(directory, "model.safetensors"),
                               metadata={"format": "pt"})
  else:
    safetensors.numpy.save_file({k: np.ascontiguousarray(v.astype(store))
                                 for k, v in tensors.items()},
                                os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})
  hf = config_to_hf(dataclasses.replace(config, param_dtype=dtype or config.param_dtype))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
