import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrl_llm.config import MeshConfig, ModelConfig
from jaxrl_llm.models import Decoder, init_params, lm_head_weight, param_logical_axes
from jaxrl_llm.parallel import make_mesh


CFG = ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                  max_seq_len=16)


@pytest.fixture(scope="module")
def params():
  mesh = make_mesh(MeshConfig(data=-1), jax.devices()[:1])
  return init_params(CFG, jax.random.PRNGKey(0), mesh)[0]


@pytest.fixture(scope="module")
def apply():
  return jax.jit(lambda p, t, m, s=None: Decoder(CFG).apply({"params": p}, t, m, s))


def test_every_param_has_logical_axes(params):
  axes = param_logical_axes(CFG)
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  flat_params = jax.tree.leaves(params)
  assert len(flat_axes) == len(flat_params)
  for names, p in zip(flat_axes, flat_params):
    assert isinstance(names, tuple) and len(names) == p.ndim


def test_left_padding_does_not_change_logits(params, apply):
  tokens = jnp.array([[5, 6, 7, 8, 9]])
  plain = apply(params, tokens, jnp.ones_like(tokens, bool))
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], 1)
  mask = jnp.concatenate([jnp.zeros((1, 3), bool), jnp.ones((1, 5), bool)], 1)
  out = apply(params, padded, mask)
  np.testing.assert_allclose(out[:, 3:], plain, atol=1e-5)
  assert np.all(np.isfinite(out))


def test_packed_equals_unpacked(params, apply):
  a, b = jnp.array([[3, 4, 5]]), jnp.array([[6, 7, 8, 9]])
  la = apply(params, a, jnp.ones_like(a, bool))
  lb = apply(params, b, jnp.ones_like(b, bool))
  packed = jnp.concatenate([a, b], 1)
  seg = jnp.array([[0, 0, 0, 1, 1, 1, 1]])
  lp = apply(params, packed, jnp.ones_like(packed, bool), seg)
  np.testing.assert_allclose(lp[:, :3], la, atol=1e-5)
  np.testing.assert_allclose(lp[:, 3:], lb, atol=1e-5)
  # Without segment ids the second sequence would see the first: the test can fail.
  assert not np.allclose(apply(params, packed, jnp.ones_like(packed, bool))[:, 3:], lb, atol=1e-3)


def test_hidden_states_times_head_weight_equal_logits(params, apply):
  tokens = jnp.array([[1, 2, 3, 4]])
  mask = jnp.ones_like(tokens, bool)
  hidden = Decoder(CFG).apply({"params": params}, tokens, mask, return_hidden=True)
  logits = apply(params, tokens, mask)
  np.testing.assert_allclose(hidden @ lm_head_weight(params, CFG), logits, atol=1e-5)


def test_remat_same_outputs_and_gradients():
  """model.remat recomputes blocks in the backward: same parameter tree, same loss, gradients
  equal to float tolerance."""
  import dataclasses

  from jaxrl_llm.models import Decoder, init_params, tiny

  cfg = tiny("qwen2")
  rc = dataclasses.replace(cfg, remat=True)
  params = init_params(cfg, jax.random.PRNGKey(0), _mesh1())[0]
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, cfg.vocab_size)
  mask = jnp.ones_like(tokens, bool)

  def loss(p, c):
    return jnp.mean(Decoder(c).apply({"params": p}, tokens, mask) ** 2)

  assert jax.tree.structure(init_params(rc, jax.random.PRNGKey(0), _mesh1())[0]) == jax.tree.structure(
      params)
  (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(params, c) for c in (cfg, rc))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g0, g1)


def _mesh1():
  return make_mesh(MeshConfig(data=1), jax.devices()[:1])
