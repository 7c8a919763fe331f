"""Model zoo: logit parity with `transformers` for every family (float32, padded batch), export
round trip, incremental decode == full forward, packed == unpacked, sharded load == one device,
clear errors for bad checkpoints, heads, chat templates."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # The test extra installs the CPU build (README's test command).
import transformers

from jaxrl_llm.config import MeshConfig
from jaxrl_llm.models import (Decoder, decode_step, init_from_policy, init_params,
                              last_token_rewards, prefill, tiny, token_values)
from jaxrl_llm.models.hf import HFError, config_to_hf, load_hf, save_hf
from jaxrl_llm.models.init import param_logical_axes
from jaxrl_llm.parallel import logical_to_spec, make_mesh

FAMILIES = ["llama", "llama3", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gpt2"]


def our_tiny(name):
  if name == "llama3":
    return tiny("llama", rope_type="llama3", rope_theta=500000.0, rope_factor=8.0,
                rope_original_max_positions=16)
  return tiny(name)


def hf_model(name):
  hf = config_to_hf(our_tiny(name))
  model_type = hf.pop("model_type")
  hf.pop("architectures")
  hf.pop("torch_dtype", None)
  cfg = transformers.AutoConfig.for_model(model_type, **hf)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  with torch.no_grad():  # Non-trivial norms and biases, larger weights.
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.1)
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  out = {}
  for name in FAMILIES:
    model = hf_model(name)
    path = str(root / name)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


TOKENS = np.random.RandomState(0).randint(0, 61, (3, 10))
MASK = np.ones((3, 10), bool)
MASK[1, :4] = False  # Left-padded rows.
MASK[2, :1] = False
POSITIONS = np.maximum(np.cumsum(MASK, 1) - 1, 0)


def hf_logits(model, tokens=TOKENS, mask=MASK):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                position_ids=torch.tensor(pos))
  return out.logits.float().numpy()


def ours(params, config, tokens=TOKENS, mask=MASK):
  return np.asarray(Decoder(config).apply({"params": params}, jnp.asarray(tokens),
                                          jnp.asarray(mask)))


def rel_err(a, b, mask=MASK):
  return float(np.max(np.abs(a - b)[mask]) / np.max(np.abs(b[mask])))


@pytest.mark.parametrize("name", FAMILIES)
def test_logit_parity_and_export_round_trip(name, checkpoints, tmp_path):
  path, model = checkpoints[name]
  params, config = load_hf(path)
  assert config.family == ("llama" if name == "llama3" else name)
  ref = hf_logits(model)
  got = ours(params, config)
  assert rel_err(got, ref) < 1e-5
  save_hf(params, config, str(tmp_path / "export"))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).eval()
  assert rel_err(hf_logits(reloaded), got) < 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_incremental_decode_equals_full_forward(name, checkpoints):
  params, config = load_hf(checkpoints[name][0])
  full = ours(params, config)
  prompt = 5
  step = jax.jit(lambda p, t, c, v: decode_step(p, config, t, c, v))
  logits, cache = jax.jit(lambda p, t, m: prefill(p, config, t, m, max_len=12))(
      params, jnp.asarray(TOKENS[:, :prompt]), jnp.asarray(MASK[:, :prompt]))
  np.testing.assert_allclose(np.asarray(logits)[MASK[:, :prompt]], full[:, :prompt][
      MASK[:, :prompt]], rtol=1e-5, atol=1e-5)
  for t in range(prompt, TOKENS.shape[1]):
    out, cache = step(params, jnp.asarray(TOKENS[:, t]), cache, jnp.asarray(MASK[:, t]))
    rows = MASK[:, t]
    np.testing.assert_allclose(np.asarray(out)[rows], full[rows, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_packed_equals_unpacked(name):
  config = our_tiny(name)
  params, _ = init_params(config, jax.random.PRNGKey(0), make_mesh(MeshConfig(data=1),
                                                                   jax.devices()[:1]))
  a, b = TOKENS[:1, :4], TOKENS[:1, 4:10]
  la = ours(params, config, a, np.ones_like(a, bool))
  lb = ours(params, config, b, np.ones_like(b, bool))
  packed = np.concatenate([a, b], 1)
  seg = np.array([[0] * 4 + [1] * 6])
  lp = np.asarray(Decoder(config).apply({"params": params}, jnp.asarray(packed),
                                        jnp.ones(packed.shape, bool), jnp.asarray(seg)))
  np.testing.assert_allclose(lp[:, :4], la, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(lp[:, 4:], lb, rtol=1e-5, atol=1e-5)


def test_sharded_load_equals_one_device(checkpoints):
  path, _ = checkpoints["qwen2"]
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  params8, config = load_hf(path, mesh=mesh)
  params1, _ = load_hf(path)
  # Shardings are what the rules say, e.g. q [D, N, H] over fsdp and tensor.
  axes = param_logical_axes(config)
  q = params8["layer_0"]["attn"]["q"]
  assert q.sharding.spec == logical_to_spec(axes["layer_0"]["attn"]["q"], q.shape, mesh)
  assert q.sharding.spec[0] == "fsdp" and q.sharding.spec[1] == "tensor"
  batch = jax.device_put(jnp.asarray(np.tile(TOKENS, (4, 1))[:8]),
                         jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data",
                                                                                        "fsdp"))))
  mask = np.tile(MASK, (4, 1))[:8]
  f = jax.jit(lambda p, t, m: Decoder(config).apply({"params": p}, t, m))
  np.testing.assert_allclose(f(params8, batch, jnp.asarray(mask)),
                             f(params1, jnp.asarray(np.asarray(batch)), jnp.asarray(mask)),
                             rtol=1e-5, atol=1e-5)


def test_bfloat16_load_and_export_round_trip(checkpoints, tmp_path):
  path, model = checkpoints["llama"]
  params, config = load_hf(path, param_dtype="bfloat16", dtype="bfloat16")
  assert params["embedding"].dtype == jnp.bfloat16
  got = ours(params, config)
  assert got.dtype == np.float32  # Logits always accumulate in float32.
  assert rel_err(got, hf_logits(model)) < 5e-2
  # Export in the stored dtype and back: bit-identical; transformers reads it as bfloat16.
  save_hf(params, config, str(tmp_path / "bf16"))
  again, config2 = load_hf(str(tmp_path / "bf16"), param_dtype="bfloat16", dtype="bfloat16")
  assert config2.param_dtype == "bfloat16"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    assert b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"),
                                                               torch_dtype=torch.bfloat16).eval()
  assert next(reloaded.parameters()).dtype == torch.bfloat16
  assert rel_err(hf_logits(reloaded), got) < 5e-2


def _rewrite(path, dst, *, drop=None, add=None, reshape=None):
  from safetensors.numpy import load_file, save_file

  shutil.copytree(path, dst)
  tensors = load_file(os.path.join(dst, "model.safetensors"))
  if drop:
    tensors.pop(drop)
  if add:
    tensors[add] = np.zeros((2,), np.float32)
  if reshape:
    tensors[reshape] = tensors[reshape][:-1]
  save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def test_bad_checkpoints_name_the_tensor(checkpoints, tmp_path):
  path, _ = checkpoints["llama"]
  name = "model.layers.1.mlp.up_proj.weight"
  _rewrite(path, tmp_path / "missing", drop=name)
  with pytest.raises(HFError, match=f"missing tensor '{name}'"):
    load_hf(str(tmp_path / "missing"))
  _rewrite(path, tmp_path / "extra", add="model.layers.0.mystery.weight")
  with pytest.raises(HFError, match="unexpected tensor.*mystery"):
    load_hf(str(tmp_path / "extra"))
  _rewrite(path, tmp_path / "shape", reshape=name)
  with pytest.raises(HFError, match=f"tensor '{name}': shape"):
    load_hf(str(tmp_path / "shape"))
  shutil.copytree(path, tmp_path / "arch")
  cfg = json.loads((tmp_path / "arch" / "config.json").read_text())
  cfg["model_type"] = "falcon"
  (tmp_path / "arch" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(HFError, match="unsupported architecture: model_type='falcon'"):
    load_hf(str(tmp_path / "arch"))


def test_sharded_safetensors_index(checkpoints, tmp_path):
  path, model = checkpoints["gemma2"]
  model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 1
  params, config = load_hf(str(tmp_path / "sharded"))
  assert rel_err(ours(params, config), hf_logits(model)) < 1e-5


def test_value_and_reward_heads(checkpoints):
  params, config = load_hf(checkpoints["qwen3"][0])
  critic = init_from_policy(params, config, jax.random.PRNGKey(1))
  assert "lm_head" not in critic["trunk"] and critic["head"]["kernel"].shape == (config.d_model,)
  np.testing.assert_array_equal(critic["trunk"]["embedding"], params["embedding"])
  values = token_values(critic, config, jnp.asarray(TOKENS), jnp.asarray(MASK))
  assert values.shape == TOKENS.shape and np.all(np.asarray(values)[~MASK] == 0)
  # The reward is read at the last real token: left and right padding agree.
  row = TOKENS[0, :6]
  left = np.concatenate([np.zeros(3, int), row])[None]
  right = np.concatenate([row, np.zeros(3, int)])[None]
  lmask = np.array([[False] * 3 + [True] * 6])
  rmask = lmask[:, ::-1].copy()
  r_left = last_token_rewards(critic, config, jnp.asarray(left), jnp.asarray(lmask))
  r_right = last_token_rewards(critic, config, jnp.asarray(right), jnp.asarray(rmask))
  np.testing.assert_allclose(r_left, r_right, rtol=1e-5, atol=1e-6)
  v_full = token_values(critic, config, jnp.asarray(row[None]), jnp.ones((1, 6), bool))
  np.testing.assert_allclose(r_left[0], v_full[0, -1], rtol=1e-5, atol=1e-6)


def test_chat_template(tmp_path):
  from jaxrl_llm.data import apply_chat_template, build_char_tokenizer, load_tokenizer

  tok = build_char_tokenizer()
  tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                       "{% if add_generation_prompt %}<assistant>{% endif %}")
  tok.save_pretrained(str(tmp_path))
  loaded = load_tokenizer(str(tmp_path))
  ids = apply_chat_template(loaded, [{"role": "user", "content": "2+2="}])
  assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
  assert loaded.decode(ids) == "<user>2+2=<assistant>"
