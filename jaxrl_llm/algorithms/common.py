"""State and optimizer shared by every algorithm."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm.config.schema import OptimizerConfig
from jaxrl_llm.parallel import replicated


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes. A pytree; checkpointed whole.

  Fields:
    step: ``int32[]`` optimizer steps taken (skipped non-finite steps count too).
    params: parameter pytree.
    opt_state: optax state.
    rng: ``uint32[2]`` dropout stream key; step ``s`` uses ``fold_in(rng, s)``.
    skipped_steps: ``int32[]`` updates skipped by the non-finite guard so far.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  skipped_steps: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
               skipped_steps=jnp.zeros((), jnp.int32))


def train_state_shardings(tx: optax.GradientTransformation, abstract_params, param_shardings,
                          mesh) -> "TrainState":
  """The ``NamedSharding`` of every ``TrainState`` leaf: params and their optimizer moments as the
  param rules say, scalars (step, counts, PRNG key) replicated."""
  abstract = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.PRNGKey(0)),
                            abstract_params)
  # Matched by path rather than with optax.tree_map_params: that cannot map a state over a part
  # of the params (LoRA's multi_transform), and one rule for every optimizer is simpler.
  opt = _shardings_by_path(abstract.opt_state, abstract_params, param_shardings, mesh)
  return TrainState(step=replicated(mesh), params=param_shardings, opt_state=opt,
                    rng=replicated(mesh), skipped_steps=replicated(mesh))


def _dict_keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _shardings_by_path(opt_state, abstract_params, param_shardings, mesh):
  """Each optimizer-state leaf sharded like the param whose dict-key path ends its own (and whose
  shape it has); anything else (counters, scalars) replicated."""
  params = {_dict_keys(p): (x.shape, s) for (p, x), s in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0], jax.tree.leaves(param_shardings))}

  def one(path, leaf):
    keys = _dict_keys(path)
    for i in range(len(keys)):
      hit = params.get(keys[i:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return replicated(mesh)
  return jax.tree_util.tree_map_with_path(one, opt_state)


def _decay_mask(params):
  # Decay matrices only: norm scales (rank 1) keep their value.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def warmup_cosine_schedule(learning_rate: float, warmup_steps: int, total_steps: int,
                           end_ratio: float):
  """Linear warm-up, then cosine decay: ``step -> float32``.

  ``lr·(s + 1)/W`` for update ``s < W`` (the first update already moves: a warm-up that starts
  at 0 wastes it, which in RL is a whole rollout), then ``end + (lr − end)·½(1 + cos(π·t))`` with
  ``t = (s − W) / (total − W)`` clipped to [0, 1] and ``end = lr·end_ratio``.
  """
  lr, w = float(learning_rate), int(warmup_steps)
  end = lr * float(end_ratio)
  decay = max(total_steps - w, 1)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    t = jnp.clip((s - w) / decay, 0.0, 1.0)
    cosine = end + (lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    if not w:
      return cosine
    return jnp.where(s < w, lr * jnp.minimum(s + 1.0, w) / w, cosine)

  return schedule


def make_optimizer(config: OptimizerConfig, total_steps: int):
  """AdamW with linear warm-up and cosine decay (:func:`warmup_cosine_schedule`), after
  global-norm clipping.

  Returns:
    ``(tx, schedule)``, the optax chain and the learning-rate schedule ``step -> float``.
  """
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  schedule = warmup_cosine_schedule(config.learning_rate, warmup, total_steps,
                                    config.end_learning_rate_ratio)
  parts = []
  if config.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule


class MasterWeightsState(NamedTuple):
  """State of :func:`with_master_weights`: the float32 master copy of the params and the inner
  optimizer's state (built on that copy)."""

  master: Any
  inner: Any


def with_master_weights(tx: optax.GradientTransformation,
                        param_dtype: str = "float32") -> optax.GradientTransformation:
  """``tx`` run on a float32 master copy of params stored in a narrower dtype.

  With ``param_dtype`` ``float32`` this is ``tx`` itself. Otherwise the state is
  :class:`MasterWeightsState`: the optimizer (moments, weight decay, masks) works on the float32
  master, which accumulates every update exactly as a float32 run would; the stored params are
  ``master.astype(param_dtype)`` after each step (:func:`guarded_apply` writes them so, rounding to
  nearest even). Small updates therefore add up in the master even when each is below the
  storage dtype's resolution (mixed-precision training as in Micikevicius et al., 2018,
  "Mixed Precision Training", arXiv:1710.03740). The returned updates are the master's float32
  steps.
  """
  if param_dtype == "float32":
    return tx

  def to_f32(p):
    # optax.tree_map_params probes init with a placeholder object: pass it through, which marks
    # the master copy as params-shaped (sharded like the params).
    return p.astype(jnp.float32) if hasattr(p, "astype") else p

  def init_fn(params):
    master = jax.tree.map(to_f32, params)
    return MasterWeightsState(master=master, inner=tx.init(master))

  def update_fn(updates, state, params=None):
    del params
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
    steps, inner = tx.update(grads, state.inner, state.master)
    master = optax.apply_updates(state.master, steps)
    return steps, MasterWeightsState(master=master, inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)


def trainable(tree):
  """The leaves of a params-shaped tree that train: the LoRA adapters when the tree has any
  (:mod:`jaxrl_llm.models.lora`), else the whole tree. Gradient accumulators carry only these, so
  a frozen base costs no gradient buffers."""
  from jaxrl_llm.models import lora

  adapters = lora.adapters_of(tree) if isinstance(tree, dict) else None
  return adapters if adapters else tree


def full_grads(grads, params):
  """:func:`trainable` gradients back in the params' tree, zeros (broadcast constants, never
  buffers) for the frozen leaves."""
  if jax.tree.structure(grads) == jax.tree.structure(params):
    return grads

  def fill(g, p):
    if not isinstance(p, dict):
      return g if g is not None else jnp.zeros(p.shape, jnp.float32)
    return {k: fill(None if g is None else g.get(k), v) for k, v in p.items()}
  return fill(grads, params)


def update_dtype(grads, params):
  """Gradients cast for the optimizer: each leaf in its param's dtype, but never narrower than
  float32 (a bf16-stored model keeps float32 gradients for its float32 master copy)."""
  return jax.tree.map(lambda g, p: g.astype(jnp.promote_types(p.dtype, jnp.float32)), grads,
                      params)


def tree_all_finite(tree) -> jax.Array:
  """``bool[]``: every element of every leaf is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def guarded_apply(state: TrainState, grads, tx: optax.GradientTransformation, finite: jax.Array,
                  **extra) -> TrainState:
  """Applies ``grads`` when ``finite``; otherwise keeps params and optimizer state and counts a skip.

  The step counter advances either way, so data and PRNG streams stay aligned with the step.
  """
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  if isinstance(new_opt_state, MasterWeightsState):  # Stored params = the rounded master.
    new_params = jax.tree.map(lambda m, p: m.astype(p.dtype), new_opt_state.master, state.params)
  else:
    new_params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
  return state.replace(step=state.step + 1, params=keep(new_params, state.params),
                       opt_state=keep(new_opt_state, state.opt_state),
                       skipped_steps=state.skipped_steps + (1 - finite.astype(jnp.int32)), **extra)


def accumulate_and_apply(state: TrainState, tx: optax.GradientTransformation, grad_fn,
                         batch: dict, weights, metric_names, schedule):
  """One optimizer step from gradients summed over the leading micro-batch axis ``A`` of ``batch``.

  Args:
    grad_fn: ``(params, micro_batch, micro_weights) -> ((loss, sums), grads)``, where ``loss`` is a
      float32 scalar and ``sums`` a dict (keys ``metric_names``) of float32 scalars, both already
      weighted so that adding them over micro-batches gives the whole batch's values.
    batch / weights: pytrees whose leaves carry the axis ``A`` first.
    schedule: the learning-rate schedule (for the ``train/learning_rate`` metric).
  Returns:
    (new state, loss, sums, step metrics ``train/grad_norm``, ``train/learning_rate``,
    ``train/skipped``, ``train/skipped_total``). A non-finite loss or gradient skips the step
    (:func:`guarded_apply`).
  """

  def micro_step(carry, xs):
    grads_acc, loss_acc, sums_acc = carry
    micro, w = xs
    (loss, sums), grads = grad_fn(state.params, micro, w)
    return (jax.tree.map(jnp.add, grads_acc, trainable(grads)), loss_acc + loss,
            jax.tree.map(jnp.add, sums_acc, sums)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable(state.params))
  scalar = jnp.zeros((), jnp.float32)
  init = (zeros, scalar, {name: scalar for name in metric_names})
  (grads, loss, sums), _ = jax.lax.scan(micro_step, init, (batch, weights))
  grads = update_dtype(full_grads(grads, state.params), state.params)
  finite = jnp.isfinite(loss) & tree_all_finite(grads)
  new_state = guarded_apply(state, grads, tx, finite)
  step_metrics = {
      "train/grad_norm": optax.tree_utils.tree_norm(grads),
      "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
      "train/skipped": 1.0 - finite.astype(jnp.float32),
      "train/skipped_total": new_state.skipped_steps.astype(jnp.float32),
  }
  return new_state, loss, sums, step_metrics
