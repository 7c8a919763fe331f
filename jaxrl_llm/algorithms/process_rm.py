"""Outcome and process reward models (docs/algorithms.md §18): a scalar head on the policy trunk
(:mod:`jaxrl_llm.models.heads`, the same params as :mod:`jaxrl_llm.algorithms.reward_model`) read
as the logit that a solution -- or a step -- is right.

* **ORM** (Cobbe et al., arXiv:2110.14168): binary cross-entropy between ``σ(v_last)`` and the
  solution's outcome ``z`` at its last token (EOS); ``orm_per_token`` trains every solution token
  to predict ``z`` (Cobbe's token-level verifier), the last token's prediction still being the
  score.
* **PRM** (Lightman et al., arXiv:2305.20050; Math-Shepherd, arXiv:2312.08935): binary
  cross-entropy at each labelled step's label token only (the token holding the step's last
  character, located by character offsets in :mod:`jaxrl_llm.data.steps`); soft labels as given,
  or ``hard_labels`` (label > 0: "some completion from here reaches the answer");
  ``last_step_only`` trains each row's last labelled step.

Batches (``jaxrl_llm.data.steps.step_batch``): ``tokens int32[B, L]``, ``attention_mask``,
``response_mask`` bool ``[B, L]``, ``last_index int32[B]``, ``positions int32[B, S]`` (absolute
token index, −1 = none), ``labels float32[B, S]`` (NaN = unlabelled), ``outcome float32[B]`` (NaN =
unknown), ``valid bool[B]`` (filler rows false).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm.algorithms.common import TrainState, guarded_apply, tree_all_finite, update_dtype
from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models import heads
from jaxrl_llm.ops import process


@dataclasses.dataclass(frozen=True)
class Config:
  """Static settings (hashable). Field meanings: ``AlgorithmConfig.rm_*``."""

  objective: str = "prm"  # "orm" or "prm"
  orm_per_token: bool = False
  hard_labels: bool = False
  last_step_only: bool = False
  scoring: str = "product"


def _bce(z, y):
  return jax.nn.softplus(z) - y * z  # −[y log σ(z) + (1 − y) log(1 − σ(z))]


def outputs(params: dict, model_config: ModelConfig, batch: dict) -> dict:
  """The head's logits where they are read: ``steps float32[B, S]`` (each step's label token; 0
  where none) and ``final float32[B]`` (the last token), plus ``tokens float32[B, L]`` (all)."""
  values = heads.token_values(params, model_config, batch["tokens"], batch["attention_mask"])
  final = jnp.take_along_axis(values, batch["last_index"][:, None].astype(jnp.int32), 1)[:, 0]
  return {"tokens": values, "steps": process.gather_steps(values, batch["positions"]),
          "final": final}


def step_targets(batch: dict, config: Config) -> tuple[jax.Array, jax.Array]:
  """``(labels float32[B, S], valid bool[B, S])``: the labels trained on (hard when configured)
  and which steps count (labelled, located, real row; the last one only when configured)."""
  labels = batch["labels"].astype(jnp.float32)
  valid = (batch["positions"] >= 0) & jnp.isfinite(labels) & batch["valid"][:, None]
  if config.last_step_only:
    idx = jnp.arange(labels.shape[1])[None, :]
    last = jnp.max(jnp.where(valid, idx, -1), axis=1)
    valid = valid & (idx == last[:, None])
  if config.hard_labels:
    labels = (labels > 0).astype(jnp.float32)
  return jnp.where(valid, labels, 0.0), valid


def loss_fn(params: dict, model_config: ModelConfig, batch: dict, config: Config):
  """Mean BCE over the trained positions and diagnostics (pure).

  Returns:
    (loss float32[], ``{"accuracy", "count"}``: hit rate of ``logit > 0`` vs ``label > 0.5``
    over the trained positions, and how many there were).
  """
  chex.assert_rank([batch["tokens"], batch["positions"]], [2, 2])
  out = outputs(params, model_config, batch)
  if config.objective == "prm":
    y, valid = step_targets(batch, config)
    z = out["steps"]
  else:
    outcome = batch["outcome"].astype(jnp.float32)
    row_ok = jnp.isfinite(outcome) & batch["valid"]
    y_row = jnp.where(row_ok, outcome, 0.0)
    if config.orm_per_token:
      valid = batch["response_mask"] & row_ok[:, None]
      y = jnp.broadcast_to(y_row[:, None], valid.shape)
      z = out["tokens"]
    else:
      valid, y, z = row_ok, y_row, out["final"]
  n = jnp.sum(valid)
  loss = jnp.sum(jnp.where(valid, _bce(z, y), 0.0)) / jnp.maximum(n, 1)
  hits = jnp.where(valid, (z > 0) == (y > 0.5), False)
  return loss, {"accuracy": jnp.sum(hits) / jnp.maximum(n, 1), "count": n.astype(jnp.float32)}


def make_update(model_config: ModelConfig, tx: optax.GradientTransformation, schedule,
                config: Config):
  """The pure ``update(state, batch) -> (state, metrics)``: one optimizer step on the batch.

  Metrics: ``train/loss``, ``rm/accuracy``, ``rm/count`` (positions trained on),
  ``train/grad_norm``, ``train/learning_rate``, ``train/skipped``.
  """
  grad_fn = jax.value_and_grad(lambda p, b: loss_fn(p, model_config, b, config), has_aux=True)

  def update(state: TrainState, batch: dict):
    (loss, diag), grads = grad_fn(state.params, batch)
    grads = update_dtype(grads, state.params)
    finite = jnp.isfinite(loss) & tree_all_finite(grads)
    new_state = guarded_apply(state, grads, tx, finite)
    return new_state, {"train/loss": loss, "rm/accuracy": diag["accuracy"],
                       "rm/count": diag["count"],
                       "train/grad_norm": optax.tree_utils.tree_norm(grads),
                       "train/learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
                       "train/skipped": 1.0 - finite.astype(jnp.float32)}

  return update


def scores(params: dict, model_config: ModelConfig, batch: dict, config: Config) -> dict:
  """Probabilities for evaluation and reranking (pure): ``steps float32[B, S]`` (σ of each step's
  logit), ``step_valid bool[B, S]`` (located steps), ``final float32[B]`` (σ of the last token's)
  and ``solution float32[B]`` -- the solution's score: the PRM's ``scoring`` over its steps, the
  ORM's final probability."""
  out = outputs(params, model_config, batch)
  steps = jax.nn.sigmoid(out["steps"])
  step_valid = batch["positions"] >= 0
  final = jax.nn.sigmoid(out["final"])
  if config.objective == "prm":
    solution = process.solution_scores(steps, step_valid, config.scoring)
  else:
    solution = final
  return {"steps": steps, "step_valid": step_valid, "final": final, "solution": solution}


__all__ = ["Config", "loss_fn", "make_update", "outputs", "scores", "step_targets"]
