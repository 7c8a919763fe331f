"""LoRA: step 0 is the base bit for bit, gradients reach only the adapters, merged equals unmerged
for every family, the reference is the base with adapters off, the optimizer holds no state for
the base, bad targets are clear errors, and SFT / GRPO train with adapters end to end."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrl_llm.config import ConfigError, LoraConfig, MeshConfig
from jaxrl_llm.models import Decoder, init_params, tiny
from jaxrl_llm.models import lora
from jaxrl_llm.parallel import make_mesh

FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gpt2")
ALL = ("q", "k", "v", "o", "up", "gate", "down")


def _with_lora(config, **kw):
  return dataclasses.replace(config, lora=LoraConfig(**kw))


def _batch(config, rows=3, t=7, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (rows, t)), jnp.int32)
  mask = jnp.asarray(np.arange(t)[None, :] >= np.array([0, 2, 4])[:rows, None])
  return tokens, mask


@pytest.fixture(scope="module")
def one_device():
  return make_mesh(MeshConfig(data=1), jax.devices()[:1])


def test_step_zero_is_the_base_bit_for_bit_and_grads_reach_only_adapters(one_device):
  base_cfg = tiny("qwen2")
  cfg = _with_lora(base_cfg, rank=4, targets=ALL)
  base, _ = init_params(base_cfg, jax.random.PRNGKey(0), one_device)
  params = lora.add_adapters(base, cfg, jax.random.PRNGKey(1))
  tokens, mask = _batch(cfg)
  want = Decoder(base_cfg).apply({"params": base}, tokens, mask)
  got = Decoder(cfg).apply({"params": params}, tokens, mask)
  np.testing.assert_array_equal(got, want)
  assert lora.param_counts(params)["adapter"] > 0
  assert jax.tree.structure(lora.base_of(params)) == jax.tree.structure(base)

  def loss(p):
    return jnp.mean(jax.nn.log_softmax(Decoder(cfg).apply({"params": p}, tokens, mask))[..., 0])

  grads = jax.grad(loss)(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, g in flat:
    name = path[-1].key
    if name.endswith("_lora_b"):
      assert float(jnp.abs(g).max()) > 0, name  # B = 0: only B moves at the first step.
    elif not lora.is_adapter(name):
      assert not np.any(np.asarray(g)), name


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_equals_unmerged(family, one_device):
  base_cfg = tiny(family)
  targets = tuple(w for w in ALL if w != "gate" or base_cfg.gated_mlp)
  cfg = _with_lora(base_cfg, rank=3, alpha=8.0, targets=targets, rslora=family == "gemma")
  base, _ = init_params(base_cfg, jax.random.PRNGKey(0), one_device)
  params = lora.add_adapters(base, cfg, jax.random.PRNGKey(1))
  # Non-zero B (as after training), so the adapters change the outputs.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
      if p[-1].key.endswith("_lora_b") else x, params)
  tokens, mask = _batch(cfg)
  unmerged = Decoder(cfg).apply({"params": params}, tokens, mask)
  merged = Decoder(base_cfg).apply({"params": lora.merge(params, cfg)}, tokens, mask)
  plain = Decoder(base_cfg).apply({"params": base}, tokens, mask)
  assert float(jnp.abs(unmerged - plain).max()) > 1e-3  # The adapters matter here.
  np.testing.assert_allclose(merged, unmerged, atol=2e-5, rtol=2e-5)


def test_adapters_only_optimizer_has_no_state_for_the_base(one_device):
  base_cfg = tiny("llama")
  cfg = _with_lora(base_cfg, rank=2, targets=("q", "v"))
  base, _ = init_params(base_cfg, jax.random.PRNGKey(0), one_device)
  params = lora.add_adapters(base, cfg, jax.random.PRNGKey(1))
  tx = lora.adapters_only(optax.adamw(1e-2), params)
  state = tx.init(params)
  n_state = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim)
  assert n_state == 2 * lora.param_counts(params)["adapter"]
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new)[0], jax.tree.leaves(params)):
    if lora.is_adapter(path[-1].key):
      assert not np.array_equal(a, b)
    else:
      np.testing.assert_array_equal(a, b)


def test_bad_targets_are_clear_errors():
  with pytest.raises(ConfigError, match=r"model.lora.targets.*'q_proj'"):
    _with_lora(tiny("llama"), rank=4, targets=("q_proj",))
  with pytest.raises(ConfigError, match=r"'gate'"):
    _with_lora(tiny("gpt2"), rank=4, targets=("gate",))  # GPT-2's MLP has no gate.
  with pytest.raises(ConfigError, match="model.lora.rank"):
    LoraConfig(rank=-1)
  cfg = _with_lora(tiny("llama"), rank=4, targets=("layer_0/mlp/*", "v"))
  assert list(cfg.lora_weights()) == ["layer_0/attn/v", "layer_0/mlp/up", "layer_0/mlp/gate",
                                       "layer_0/mlp/down", "layer_1/attn/v"]


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _leaves_with_names(tree):
  return [(path[-1].key, np.asarray(x)) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_sft_and_grpo_train_only_adapters_with_the_base_as_reference(tiny, data_dir, tmp_path):
  from conftest import replace
  from test_rl import _digit_fraction, tiny_rl_config

  from jaxrl_llm.config import InitConfig, RewardConfig
  from jaxrl_llm.rewards import RewardSpec
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import read_metrics, rl_loop, sft_loop

  # SFT with adapters on a fresh base: only the adapters move.
  start = str(tmp_path / "sft")
  sft_loop.train(replace(tiny, train=dict(steps=2, eval_every=0, test_examples=0)), start)
  sft_lora = str(tmp_path / "sft_lora")
  sft_loop.train(replace(tiny, model=dict(lora=LoraConfig(rank=4, targets=("q", "v", "up", "down"))),
                         init=dict(policy_run=start),
                         train=dict(steps=2, eval_every=0, test_examples=0)), sft_lora)
  tuned = load_run(sft_lora)
  names = [n for n, _ in _leaves_with_names(tuned.policy_params())]
  assert any(lora.is_adapter(n) for n in names)
  _assert_same(lora.base_of(tuned.policy_params()), load_run(start).policy_params())
  b = [x for n, x in _leaves_with_names(tuned.policy_params()) if n.endswith("_lora_b")]
  assert all(np.any(x) for x in b)  # Every B left zero.

  # GRPO with adapters and a KL term: the reference is the base inside the policy's params.
  cfg = replace(tiny_rl_config(data_dir, kl_coef=0.05),
                model=dict(lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "k", "v", "o"))),
                init=InitConfig(policy_run=start),
                reward=RewardConfig(functions=("digits",), weights=(1.0,), accuracy=""),
                train=dict(steps=3, checkpoint_every=1, async_checkpointing=False))
  fns = [RewardSpec("digits", _digit_fraction)]
  whole = str(tmp_path / "grpo")
  rl_loop.train(cfg, whole, reward_fns=fns)
  rows = read_metrics(whole)
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert abs(rows[0]["kl/ref"]) < 1e-6  # B = 0: the policy is the base at step 1.
  assert rows[-1]["kl/ref"] > 0  # Measured against the unchanged base, not the moving policy.
  art = load_run(whole)
  params = art.policy_params()
  _assert_same(lora.base_of(params), load_run(start).policy_params())
  # Optimizer state: Adam's two moments for the adapters only (plus scalar counters).
  opt = [x for x in jax.tree.leaves(art.state["opt_state"]) if np.ndim(x)]
  assert sum(x.size for x in opt) == 2 * lora.param_counts(params)["adapter"]
  _check_exports(whole, tmp_path)
  # The sparsity analysis reads a LoRA run as a plain model: only the targeted weights moved, and
  # each one's update has rank <= r (full fine-tuning's updates are full rank).
  from jaxrl_llm.analysis.sparsity import analyze

  report = analyze(whole, out_dir=str(tmp_path / "sparsity"))
  for name, t in report["tensors"].items():
    targeted = any(f"['attn']['{w}']" in name for w in "qkvo")
    assert (t["changed_fraction"] > 0) == targeted, name
    if targeted:
      d = min(t["shape"][0], int(np.prod(t["shape"][1:])))
      assert 0 < t["update_rank"] <= 4 / d + 1e-9, (name, t["update_rank"])
  # Killed after step 1 and resumed: the same run.
  cut = str(tmp_path / "cut")
  rl_loop.train(cfg, cut, reward_fns=fns, stop_after=1)
  rl_loop.train(cfg, cut, reward_fns=fns, resume=True)
  assert read_metrics(cut) == rows
  for x, y in zip(jax.tree.leaves(load_run(cut).state), jax.tree.leaves(art.state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loops_without_lora_support_refuse_it(tiny, data_dir, tmp_path):
  from conftest import replace
  from test_rl import tiny_rl_config

  from jaxrl_llm.train import rl_loop

  from jaxrl_llm.config import AlgorithmConfig

  cfg = replace(tiny_rl_config(data_dir), model=dict(lora=LoraConfig(rank=4)),
                algorithm=AlgorithmConfig(name="ppo"))
  with pytest.raises(ConfigError, match="model.lora.rank.*PPO"):
    rl_loop.build(cfg, str(tmp_path / "ppo"))


def _check_exports(run, tmp_path):
  """The merged checkpoint loads in ``transformers`` and the PEFT adapters in ``peft``, each with
  the LoRA model's logits."""
  import peft
  import torch
  import transformers

  from jaxrl_llm.cli import main
  from jaxrl_llm.rundir.artifacts import load_run

  art = load_run(run)
  cfg = art.model_config
  tokens = np.array([[3, 5, 7, 9, 11, 4]], np.int32)
  mask = np.ones_like(tokens, bool)
  ours = np.asarray(Decoder(cfg).apply({"params": art.policy_params()}, jnp.asarray(tokens),
                                       jnp.asarray(mask)))
  assert main(["export", run, str(tmp_path / "merged")]) == 0
  with torch.no_grad():
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))
    theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=1e-4)
  assert main(["export", run, str(tmp_path / "peft"), "--adapters"]) == 0
  with torch.no_grad():
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "peft" / "base"))
    plain = base(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    tuned = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    theirs = tuned(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  assert np.abs(plain - ours).max() > 1e-4  # The adapters change the logits...
  np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=1e-4)  # ...and PEFT applies them.
  assert main(["export", load_run(run).config.init.policy_run, str(tmp_path / "x"),
               "--adapters"]) == 2  # A run without LoRA has no adapters to export.


def test_sampler_with_adapters_equals_merged_and_mesh_equals_one_device(one_device):
  from jaxrl_llm.parallel.mesh import tree_shardings
  from jaxrl_llm.models.init import abstract_params, param_logical_axes
  from jaxrl_llm.rollout import Sampler, SamplingConfig, pad_prompts

  base_cfg = tiny("qwen2")
  cfg = _with_lora(base_cfg, rank=4, alpha=8.0, targets=ALL)
  params, _ = init_params(cfg, jax.random.PRNGKey(0), one_device)  # Adapters from the init.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape)
      if p[-1].key.endswith("_lora_b") else x, params)
  prompts, lengths = pad_prompts([[1, 2, 3], [4, 5, 6, 9, 8], [11, 12]], (8,), 0)
  kw = dict(sampling=SamplingConfig(temperature=1.0), max_new_tokens=6, stop_token_ids=[],
            rng=jax.random.PRNGKey(3), num_samples=2)
  a = Sampler(cfg).generate(params, prompts, lengths, **kw)
  b = Sampler(base_cfg).generate(lora.merge(params, cfg), prompts, lengths, **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.sampler_logprobs, b.sampler_logprobs, atol=1e-5)
  # Adapters carry the logical axes of the weights they modify: on a (2, 2, 2) mesh they shard
  # like them, and the model's outputs equal one device's.
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  shardings = tree_shardings(abstract_params(cfg), param_logical_axes(cfg), mesh)
  q_a = shardings["layer_0"]["attn"]["q_lora_a"].spec
  q = shardings["layer_0"]["attn"]["q"].spec
  assert q_a[0] == q[0] and q_a[1] is None  # "embed" like q's input axis; the rank replicated.
  sharded = jax.device_put(params, shardings)
  tokens, mask = _batch(cfg, rows=2)
  one = Decoder(cfg).apply({"params": params}, tokens, mask)
  many = jax.jit(lambda p, t, m: Decoder(cfg).apply({"params": p}, t, m))(sharded, tokens, mask)
  np.testing.assert_allclose(np.asarray(many), np.asarray(one), atol=1e-5)


def test_dpo_with_adapters_against_the_base_as_reference(tmp_path):
  from conftest import replace, tiny_config

  from jaxrl_llm.config import AlgorithmConfig, DataConfig, InitConfig, ModelConfig
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train import preference_loop, read_metrics

  data_dir = str(tmp_path / "tfds")
  cfg = tiny_config(data_dir, steps=3, checkpoint_every=3, eval_every=0, test_examples=8,
                    eval_batch_size=8, batch_size=8, grad_accum_steps=1,
                    async_checkpointing=False)
  cfg = replace(cfg, experiment="tiny-dpo-lora",
                model=ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                                  max_seq_len=32, lora=LoraConfig(rank=4, targets=("q", "v"))),
                data=DataConfig(task="sorted_digits", train_size=16, validation_size=0,
                                test_size=8, length_buckets=(16,), data_dir=data_dir,
                                preference_kind="pairs"),
                optimizer=dataclasses.replace(cfg.optimizer, learning_rate=1e-2),
                algorithm=AlgorithmConfig(name="dpo", beta=0.1), init=InitConfig())
  run_dir = str(tmp_path / "dpo")
  preference_loop.train(cfg, run_dir)
  rows = read_metrics(run_dir)
  # Step 1: the policy is its reference (B = 0), so the DPO loss is exactly log 2.
  assert rows[0]["train/loss"] == pytest.approx(np.log(2.0), abs=1e-6)
  assert rows[-1]["train/loss"] < rows[0]["train/loss"]
  params = load_run(run_dir).policy_params()
  assert lora.param_counts(params)["adapter"] > 0
  with pytest.raises(ConfigError, match="model.lora.rank.*reward models"):
    preference_loop.build(replace(cfg, algorithm=AlgorithmConfig(name="reward_model")),
                          str(tmp_path / "rm"))
