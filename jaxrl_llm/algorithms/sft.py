"""Supervised fine-tuning: masked next-token cross-entropy on answer tokens only.

Log-probs come from the fused LM-head kernel (:func:`jaxrl_llm.kernels.fused_linear_logprobs`) on
the trunk's final hidden states, so ``[B, T, V]`` logits are never held in memory (they would be the
largest array in the step for 150k-token vocabularies).

``update(state, batch) -> (state, metrics)`` is pure. The batch holds ``A`` micro-batches
(``tokens int32[A, b, L]``, ``attention_mask bool[A, b, L]``, ``loss_mask bool[A, b, L]``); the
gradient is accumulated over them with ``lax.scan`` inside the one jitted call. The loss weights are
computed once over the whole batch (:func:`jaxrl_llm.ops.aggregation_weights`), so accumulating over
``A`` micro-batches gives exactly the loss and gradient of one batch of ``A * b`` rows.

A step whose loss or gradient is not finite leaves params and optimizer state untouched and is
counted in ``state.skipped_steps`` (metric ``train/skipped``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import ops
from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms.common import (TrainState, full_grads, guarded_apply, trainable,
                                         tree_all_finite, update_dtype)
from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.kernels import fused_linear_logprobs
from jaxrl_llm.models.decoder import lm_head_weight, logprob_kwargs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """SFT hyperparameters: the loss aggregation mode and whether dropout is active."""

  loss_aggregation: str = "token-mean"
  use_dropout: bool = False


def loss_fn(params, apply_fn: Callable, model_config: ModelConfig, micro: dict,
            weights: jax.Array, dropout_key: jax.Array, *, use_dropout: bool):
  """Weighted next-token NLL of one micro-batch, through the fused log-prob kernel.

  Args:
    micro: ``tokens int32[b, L]``, ``attention_mask bool[b, L]``, ``loss_mask bool[b, L]``.
    weights: ``float32[b, L]`` aggregation weights (0 off the loss mask).
  Returns:
    (loss, aux) with aux = (correct answer tokens, answer tokens), both float32 scalars.
  """
  hidden = apply_fn({"params": params}, micro["tokens"], micro["attention_mask"],
                    deterministic=not use_dropout, rngs={"dropout": dropout_key},
                    return_hidden=True)
  targets = micro["tokens"][:, 1:]
  mask = micro["loss_mask"]
  out = fused_linear_logprobs(hidden[:, :-1], lm_head_weight(params, model_config), targets,
                              valid=mask[:, 1:], **logprob_kwargs(model_config))
  nll = jnp.pad(-out.logp, ((0, 0), (1, 0)))  # Aligned with tokens: position 0 predicts nothing.
  loss = ops.masked_sum(nll * weights, mask)
  hit = jnp.pad((out.logp == out.max_logp).astype(jnp.float32), ((0, 0), (1, 0)))
  correct = ops.masked_sum(hit, mask)
  return loss, (correct, jnp.sum(mask.astype(jnp.float32)))


def make_update(apply_fn: Callable, model_config: ModelConfig, tx: optax.GradientTransformation,
                schedule: Callable, config: Config = Config()):
  """Builds the pure ``update(state, batch) -> (state, metrics)`` for SFT.

  ``apply_fn`` is the decoder's ``apply`` (it must accept ``return_hidden=True``);
  ``model_config`` locates the LM head and its soft-capping.

  Metrics (float32 scalars): ``train/loss``, ``train/token_accuracy``, ``train/grad_norm``,
  ``train/learning_rate``, ``train/answer_tokens``, ``train/skipped`` (1 if this step was skipped),
  ``train/skipped_total``.
  """

  def update(state: TrainState, batch: dict):
    chex.assert_rank([batch["tokens"], batch["attention_mask"], batch["loss_mask"]], 3)
    chex.assert_equal_shape([batch["tokens"], batch["attention_mask"], batch["loss_mask"]])
    weights = ops.aggregation_weights(batch["loss_mask"], config.loss_aggregation)
    step_key = rng_lib.step_key(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(carry, xs):
      grads_acc, loss_acc, correct_acc, count_acc = carry
      micro, w, i = xs
      (loss, (correct, count)), grads = grad_fn(
          state.params, apply_fn, model_config, micro, w, jax.random.fold_in(step_key, i),
          use_dropout=config.use_dropout)
      grads_acc = jax.tree.map(jnp.add, grads_acc, trainable(grads))
      return (grads_acc, loss_acc + loss, correct_acc + correct, count_acc + count), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable(state.params))
    accum = batch["tokens"].shape[0]
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32))
    (grads, loss, correct, count), _ = jax.lax.scan(
        micro_step, init, (batch, weights, jnp.arange(accum)))
    grads = update_dtype(full_grads(grads, state.params), state.params)
    finite = jnp.isfinite(loss) & tree_all_finite(grads)
    new_state = guarded_apply(state, grads, tx, finite)
    metrics = {
        "train/loss": loss,
        "train/token_accuracy": correct / jnp.maximum(count, 1.0),
        "train/grad_norm": optax.tree_utils.tree_norm(grads),
        "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        "train/answer_tokens": count,
        "train/skipped": 1.0 - finite.astype(jnp.float32),
        "train/skipped_total": new_state.skipped_steps.astype(jnp.float32),
    }
    return new_state, metrics

  return update
