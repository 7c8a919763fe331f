"""One SFT step on a (data=2, fsdp=2, tensor=2) mesh equals the single-device step; output
shardings are what the logical-axis rules say; accumulation and the non-finite guard are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import replace
from jaxrl_llm.config import MeshConfig
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel import logical_to_spec, make_mesh
from jaxrl_llm.train import build


@pytest.fixture(scope="module")
def setups(tiny, tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp("shard"))
  sharded = build(replace(tiny, mesh=MeshConfig(data=2, fsdp=2, tensor=2)), run_dir)
  single = build(replace(tiny, mesh=MeshConfig(data=1, fsdp=1, tensor=1)), run_dir,
                 devices=jax.devices()[:1])
  return sharded, single


def _step(setup):
  state = setup.init_state()
  batch, _ = setup.batcher.batch(0)
  return setup.update(state, setup.put_train_batch(batch))


def test_sharded_step_equals_single_device(setups):
  sharded, single = setups
  s8, m8 = _step(sharded)
  s1, m1 = _step(single)
  for a, b in zip(jax.tree.leaves(jax.device_get(s8)), jax.tree.leaves(jax.device_get(s1))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for k in m1:
    np.testing.assert_allclose(m8[k], m1[k], rtol=2e-5, atol=1e-6)
  assert int(s8.step) == 1 and float(m8["train/skipped"]) == 0.0


def test_output_shardings_follow_the_rules(setups):
  sharded, _ = setups
  state, _ = _step(sharded)
  mesh = sharded.mesh
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  axes = param_logical_axes(sharded.model_config)
  abstract = abstract_params(sharded.model_config)

  def expected(names, leaf):
    return logical_to_spec(names, leaf.shape, mesh)

  want = jax.tree.map(expected, axes, abstract, is_leaf=lambda x: isinstance(x, tuple))
  got = jax.tree.map(lambda x: x.sharding.spec, state.params)
  assert jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, P)) == \
      jax.tree.leaves(want, is_leaf=lambda x: isinstance(x, P))
  # Concretely: embedding [vocab, embed] is split over tensor and fsdp; q over fsdp and tensor.
  assert state.params["embedding"].sharding.spec == P("tensor", "fsdp")
  assert state.params["layer_0"]["attn"]["q"].sharding.spec == P("fsdp", "tensor", None)
  assert state.params["layer_0"]["mlp"]["down"].sharding.spec == P("tensor", "fsdp")
  # Adam moments are sharded like their parameters; the step counter is replicated.
  adam = state.opt_state[1][0]
  assert adam.mu["embedding"].sharding.spec == P("tensor", "fsdp")
  assert state.step.sharding.spec == P()
  for leaf in jax.tree.leaves(state.params):
    assert isinstance(leaf.sharding, NamedSharding) and leaf.sharding.mesh.shape == mesh.shape


def test_rules_skip_axes_that_do_not_divide():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert logical_to_spec(("vocab", "embed"), (25, 32), mesh) == P(None, "fsdp")
  assert logical_to_spec(("batch", None), (8, 3), mesh) == P(("data", "fsdp"), None)
  assert logical_to_spec(("batch", None), (6, 3), mesh) == P("data", None)


def test_grad_accumulation_equals_one_big_batch(setups):
  _, single = setups
  state = single.init_state()
  batch, _ = single.batcher.batch(0)  # [2, 8, L]
  flat = {k: v.reshape((1, -1) + v.shape[2:]) for k, v in batch.items()}  # [1, 16, L]
  s_acc, m_acc = single.update(state, single.put_train_batch(batch))
  state = single.init_state()
  s_one, m_one = single.update(state, single.put_train_batch(flat))
  np.testing.assert_allclose(m_acc["train/loss"], m_one["train/loss"], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_one.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_non_finite_step_is_skipped_and_counted(setups):
  _, single = setups
  state = single.init_state()
  poisoned = jax.tree.map(lambda p: p, state)
  poisoned = poisoned.replace(params=jax.tree.map(
      lambda p: p.at[(0,) * p.ndim].set(jnp.nan) if p.ndim == 2 else p, state.params))
  before = jax.device_get(poisoned.params)
  batch, _ = single.batcher.batch(0)
  new, metrics = single.update(poisoned, single.put_train_batch(batch))
  assert float(metrics["train/skipped"]) == 1.0 and int(new.skipped_steps) == 1
  assert int(new.step) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(new.params)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(a, b)


def test_fused_sft_loss_equals_full_logits_loss(setups):
  """The update's loss (fused LM-head kernel) equals masked NLL from materialised logits."""
  from jaxrl_llm import ops

  _, single = setups
  state = single.init_state()
  batch, _ = single.batcher.batch(0)
  params = jax.device_get(state.params)
  tokens = batch["tokens"].reshape(-1, batch["tokens"].shape[-1])
  attn = batch["attention_mask"].reshape(tokens.shape)
  loss_mask = batch["loss_mask"].reshape(tokens.shape)
  logits = single.model.apply({"params": params}, tokens, attn)
  nll = ops.sft_token_nll(logits, tokens)
  expected = ops.aggregate_loss(nll, loss_mask, "token-mean")
  pred = np.argmax(np.asarray(logits[:, :-1]), -1) == tokens[:, 1:]
  expected_acc = pred[loss_mask[:, 1:]].mean()
  _, metrics = single.update(state, single.put_train_batch(batch))
  np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["train/token_accuracy"], expected_acc, rtol=1e-6)
