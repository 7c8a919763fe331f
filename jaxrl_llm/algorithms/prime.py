"""PRIME's implicit process reward model (docs/algorithms.md §10; Cui et al., arXiv:2502.01456;
the implicit PRM of Yuan et al., arXiv:2412.01981).

The implicit PRM is a causal LM π_φ (initialised from the starting policy) read against a frozen
reference π_ref (the same starting policy). Every response token gets the reward

  ``r_φ(y_t) = β·log(π_φ(y_t | x, y_<t) / π_ref(y_t | x, y_<t))``,

and the sequence's implicit reward ``r_φ(y) = Σ_t r_φ(y_t)`` is trained online, every RL step,
on the current rollouts' **outcome labels only** by cross-entropy:
``L(φ) = −mean[ r_o·log σ(r_φ(y)) + (1 − r_o)·log(1 − σ(r_φ(y))) ]``.
So a PRM learns which tokens raise the odds of a correct answer without any step label.

This module holds the pure pieces; :mod:`jaxrl_llm.train.rl_loop` keeps the PRM's ``TrainState``
next to the policy's (one checkpoint tree ``{"actor", "implicit_prm"}``) and calls them in the
order ``prime_update`` says:

* ``before`` (the verl recipe's default): update φ on this batch, then compute the rewards with the
  updated PRM (two PRM forwards);
* ``after``: compute the rewards with the PRM as it was, then update it (one forward: the update's).

Log-probabilities of the PRM and its reference are taken at temperature 1: they are a reward
model's scores, not the sampler's distribution.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import ops
from jaxrl_llm.algorithms.common import TrainState, guarded_apply, tree_all_finite, update_dtype
from jaxrl_llm.algorithms.policy_gradient import response_logprobs
from jaxrl_llm.config.schema import AlgorithmConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class Config:
  """PRIME's static settings (hashable). Field meanings: ``AlgorithmConfig.prime_*``."""

  beta: float = 0.05
  update: str = "before"
  norm: str = "none"
  granularity: str = "token"
  loo: str = "paper"
  process_coef: float = 1.0
  outcome_coef: float = 1.0
  whiten: bool = False


def config_from(algorithm: AlgorithmConfig) -> Config:
  """The :class:`Config` of a run's ``algorithm.prime_*`` fields."""
  a = algorithm
  return Config(beta=a.prime_beta, update=a.prime_update, norm=a.prime_norm,
                granularity=a.prime_granularity, loo=a.prime_loo,
                process_coef=a.prime_process_coef, outcome_coef=a.prime_outcome_coef,
                whiten=a.prime_whiten)


def make_optimizer(algorithm: AlgorithmConfig) -> optax.GradientTransformation:
  """The PRM's own optimizer: global-norm clipping (``prime_max_grad_norm``, 0 = off), then AdamW
  at the constant ``prime_learning_rate`` without weight decay (the recipe's settings)."""
  parts = []
  if algorithm.prime_max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(algorithm.prime_max_grad_norm))
  parts.append(optax.adamw(algorithm.prime_learning_rate, weight_decay=0.0))
  return optax.chain(*parts)


def sequence_rewards(prm_logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, beta: float
                     ) -> jax.Array:
  """``r_φ(y) = β·Σ_t (log π_φ − log π_ref)`` over the masked tokens: float32 ``[N]``.

  Args:
    prm_logp, ref_logp: float ``[N, T]``; mask: bool ``[N, T]``.
  """
  chex.assert_equal_shape([prm_logp, ref_logp, mask])
  diff = (prm_logp.astype(jnp.float32) - ref_logp.astype(jnp.float32))
  return beta * jnp.sum(jnp.where(mask, diff, 0.0), axis=-1)


def process_rewards(prm_logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, config: Config
                    ) -> jax.Array:
  """Per-token implicit rewards ``β·(log π_φ − log π_ref)`` float32 ``[N, T]`` (0 off the mask).

  ``granularity="whole"`` puts each row's sum on its last token instead; ``norm="batch_norm"``
  divides every reward by ``max |Σ_{s≥t} r_s| + 1e-6`` over the batch (the recipe's ``prime_norm``).
  """
  chex.assert_equal_shape([prm_logp, ref_logp, mask])
  m = mask.astype(bool)
  r = jnp.where(m, config.beta * (prm_logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)),
                0.0)
  if config.granularity == "whole":
    idx, has = ops.last_token_index(m)
    total = jnp.sum(r, axis=-1)
    at_last = jnp.arange(m.shape[1])[None, :] == idx[:, None]
    r = jnp.where(at_last & has[:, None], total[:, None], 0.0)
  if config.norm == "batch_norm":
    returns = ops.discounted_returns(r, m, gamma=1.0)
    r = r / (jnp.max(jnp.abs(jnp.where(m, returns, 0.0))) + 1e-6)
  return r


def ce_loss(seq_rewards: jax.Array, labels: jax.Array, valid: jax.Array):
  """The implicit PRM's cross-entropy on outcome labels (docs/algorithms.md §10).

  Args:
    seq_rewards: float32 ``[N]`` ``r_φ(y)`` (the logit of "correct").
    labels: float ``[N]`` outcome labels in [0, 1]; valid: bool ``[N]`` rows that count.
  Returns:
    (mean BCE over valid rows, 0 when none; diagnostics ``accuracy`` (sign of ``r_φ(y)`` vs
    ``label > 0.5``) and ``rows``).
  """
  chex.assert_rank([seq_rewards, labels, valid], 1)
  z = seq_rewards.astype(jnp.float32)
  y = jnp.where(valid, labels, 0.0).astype(jnp.float32)
  bce = jax.nn.softplus(z) - y * z  # −[y log σ(z) + (1 − y) log(1 − σ(z))]
  n = jnp.sum(valid)
  loss = jnp.sum(jnp.where(valid, bce, 0.0)) / jnp.maximum(n, 1)
  hits = jnp.where(valid, (z > 0) == (y > 0.5), False)
  return loss, {"accuracy": jnp.sum(hits) / jnp.maximum(n, 1), "rows": n.astype(jnp.float32)}


def prm_logprobs(apply_fn: Callable, params, model_config: ModelConfig, tokens, attention_mask,
                 mask) -> jax.Array:
  """Response-token log-probs float32 ``[N, T]`` of the PRM (or its reference) at temperature 1."""
  return response_logprobs(apply_fn, params, model_config, tokens, attention_mask, mask,
                           temperature=1.0).logp


def make_update(apply_fn: Callable, model_config: ModelConfig, tx: optax.GradientTransformation,
                config: Config):
  """The PRM's pure ``update(state, batch) -> (state, metrics, logp)``: one optimizer step of
  :func:`ce_loss` on the whole batch; ``logp`` float32 ``[N, T]`` are the PRM's log-probs
  *before* the step (the ``after`` timing's rewards, so it needs no second forward).

  Batch: ``tokens int32[N, L]``, ``attention_mask bool[N, L]``, ``mask bool[N, T]`` (response
  tokens), ``ref_logp float32[N, T]`` (the frozen reference's), ``labels float32[N]``,
  ``label_valid bool[N]`` (rows with a verdict: the policy's own scorable samples).
  Metrics: ``prm/loss``, ``prm/accuracy``, ``prm/rows``, ``prm/reward_mean`` (mean ``r_φ(y)``
  before the step), ``prm/grad_norm``, ``prm/skipped``.
  """

  def loss_fn(params, batch):
    logp = prm_logprobs(apply_fn, params, model_config, batch["tokens"],
                        batch["attention_mask"], batch["mask"])
    seq = sequence_rewards(logp, batch["ref_logp"], batch["mask"], config.beta)
    valid = batch["label_valid"] & jnp.any(batch["mask"], axis=-1)
    loss, diag = ce_loss(seq, batch["labels"], valid)
    diag["reward_mean"] = jnp.sum(jnp.where(valid, seq, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return loss, (diag, jax.lax.stop_gradient(logp))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: TrainState, batch: dict):
    chex.assert_rank([batch["tokens"], batch["mask"], batch["labels"]], [2, 2, 1])
    (loss, (diag, logp)), grads = grad_fn(state.params, batch)
    grads = update_dtype(grads, state.params)
    finite = jnp.isfinite(loss) & tree_all_finite(grads)
    new_state = guarded_apply(state, grads, tx, finite)
    metrics = {"prm/loss": loss, **{f"prm/{k}": v for k, v in diag.items()},
               "prm/grad_norm": optax.tree_utils.tree_norm(grads),
               "prm/skipped": 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics, logp

  return update


__all__ = ["Config", "ce_loss", "config_from", "make_optimizer", "make_update", "prm_logprobs",
           "process_rewards", "sequence_rewards"]
