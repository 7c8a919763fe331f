"""Process rewards: step-level losses, solution scores and advantages (docs/algorithms.md §18).

Steps are given per row as ``positions int[B, S]`` (the token index, within the response, of
each step's last token; −1 for padding or an unlabelled, cut-off step) with ``labels`` /
``rewards float[B, S]`` (NaN = unlabelled).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

SCORINGS = ("product", "min", "last")


def gather_steps(per_token: jax.Array, positions: jax.Array) -> jax.Array:
  """``per_token [B, T]`` at each step's token: ``[B, S]`` (0 where ``positions`` is −1)."""
  chex.assert_rank([per_token, positions], 2)
  idx = jnp.clip(positions, 0, per_token.shape[1] - 1)
  return jnp.where(positions >= 0, jnp.take_along_axis(per_token, idx, axis=1), 0.0)


def prm_loss(logits: jax.Array, positions: jax.Array, labels: jax.Array, *,
             last_step_only: bool = False):
  """PRM binary cross-entropy at each labelled step's last token (Lightman et al.,
  arXiv:2305.20050; Math-Shepherd's soft labels allowed).

  Args:
    logits: float ``[B, T]`` the head's logit per response token.
    positions: int ``[B, S]``; labels: float ``[B, S]`` in [0, 1], NaN = unlabelled.
    last_step_only: train on each row's last labelled step only (TRL's option).
  Returns:
    (mean BCE over the labelled steps (0 when none), diagnostics: ``steps`` counted, ``accuracy``
    of ``σ(logit) > 0.5`` against ``label > 0.5``).
  """
  chex.assert_equal_shape([positions, labels])
  z = gather_steps(logits.astype(jnp.float32), positions)
  valid = (positions >= 0) & jnp.isfinite(labels)
  if last_step_only:
    last = jnp.max(jnp.where(valid, jnp.arange(labels.shape[1])[None, :], -1), axis=1)
    valid = valid & (jnp.arange(labels.shape[1])[None, :] == last[:, None])
  y = jnp.where(valid, labels, 0.0).astype(jnp.float32)
  bce = jax.nn.softplus(z) - y * z  # −[y log σ(z) + (1 − y) log(1 − σ(z))]
  n = jnp.sum(valid)
  loss = jnp.sum(jnp.where(valid, bce, 0.0)) / jnp.maximum(n, 1)
  hits = (z > 0) == (y > 0.5)
  acc = jnp.sum(jnp.where(valid, hits, False)) / jnp.maximum(n, 1)
  return loss, {"steps": n.astype(jnp.float32), "accuracy": acc}


def solution_scores(step_probs: jax.Array, valid: jax.Array, mode: str = "product") -> jax.Array:
  """One score per solution from its steps' correctness probabilities ``[B, S]``: ``product``
  (the probability every step is right, Lightman et al.), ``min`` (Math-Shepherd) or ``last``.
  A solution with no valid step scores 0."""
  if mode not in SCORINGS:
    raise ValueError(f"scoring must be one of {SCORINGS}, got {mode!r}")
  chex.assert_equal_shape([step_probs, valid])
  p = step_probs.astype(jnp.float32)
  any_valid = jnp.any(valid, axis=1)
  if mode == "product":
    out = jnp.exp(jnp.sum(jnp.where(valid, jnp.log(jnp.maximum(p, 1e-30)), 0.0), axis=1))
  elif mode == "min":
    out = jnp.min(jnp.where(valid, p, jnp.inf), axis=1)
  else:
    last = jnp.max(jnp.where(valid, jnp.arange(p.shape[1])[None, :], -1), axis=1)
    out = jnp.take_along_axis(p, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  return jnp.where(any_valid, out, 0.0)


def grpo_process_advantages(step_rewards: jax.Array, positions: jax.Array, group_ids: jax.Array,
                            mask: jax.Array, *, num_groups: int, eps: float = 1e-6):
  """GRPO with process supervision (Shao et al., arXiv:2402.03300; docs/algorithms.md §18).

  Every step reward of a group is normalised by the group's mean and std over *all* its steps
  (rows may have different step counts); a token's advantage is the sum of the normalised rewards
  of the steps ending at or after it: ``A_{i,t} = Σ_{k: pos_k ≥ t} r̃_{i,k}``.

  Args:
    step_rewards: float ``[B, S]`` (NaN = none); positions: int ``[B, S]`` (−1 = none);
    group_ids: int ``[B]``; mask: bool ``[B, T]`` response tokens.
  Returns:
    (advantages float32 ``[B, T]``, diagnostics).
  """
  chex.assert_equal_shape([step_rewards, positions])
  chex.assert_rank([group_ids, mask], [1, 2])
  valid = (positions >= 0) & jnp.isfinite(step_rewards)
  r = jnp.where(valid, step_rewards, 0.0).astype(jnp.float32)
  v = valid.astype(jnp.float32)
  seg = lambda x: jax.ops.segment_sum(x, group_ids, num_segments=num_groups)  # noqa: E731
  count = seg(jnp.sum(v, 1))
  mean = seg(jnp.sum(r, 1)) / jnp.maximum(count, 1.0)
  dev = jnp.where(valid, r - mean[group_ids][:, None], 0.0)
  var = seg(jnp.sum(dev * dev, 1)) / jnp.maximum(count - 1.0, 1.0)
  std = jnp.sqrt(var)
  norm = jnp.where(valid, dev / (std[group_ids][:, None] + eps), 0.0)
  t = jnp.arange(mask.shape[1])
  # [B, T, S]: step k counts for token t when it ends at or after t.
  after = (positions[:, None, :] >= t[None, :, None]) & valid[:, None, :]
  adv = jnp.sum(jnp.where(after, norm[:, None, :], 0.0), axis=-1)
  return jnp.where(mask, adv, 0.0), {"steps": jnp.sum(v)}


def step_token_rewards(step_rewards: jax.Array, positions: jax.Array, length: int) -> jax.Array:
  """Each step's reward on its last token: float32 ``[B, length]`` (Math-Shepherd's step-by-step
  PPO adds these to the outcome reward before GAE). Steps with position −1 or a NaN reward add
  nothing; two steps on one token add up."""
  chex.assert_equal_shape([step_rewards, positions])
  valid = (positions >= 0) & jnp.isfinite(step_rewards)
  r = jnp.where(valid, step_rewards, 0.0).astype(jnp.float32)
  onehot = (positions[:, :, None] == jnp.arange(length)[None, None, :]) & valid[:, :, None]
  return jnp.sum(jnp.where(onehot, r[:, :, None], 0.0), axis=1)


__all__ = ["SCORINGS", "gather_steps", "grpo_process_advantages", "prm_loss", "solution_scores",
           "step_token_rewards"]
