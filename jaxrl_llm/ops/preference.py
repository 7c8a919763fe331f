"""Preference-optimisation and reward-model losses (docs/algorithms.md §16, 17).

Inputs are per-example quantities: sequence log-likelihoods ``S = Σ_t m·logp`` (``[B]``, sum, not
mean) for DPO, scalar rewards for reward models. Losses are per-example ``[B]`` plus diagnostics;
average them (or weight them) yourself.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

DPO_KINDS = ("sigmoid", "ipo", "robust", "hinge")


def dpo_loss(chosen_logp: jax.Array, rejected_logp: jax.Array, ref_chosen_logp: jax.Array,
             ref_rejected_logp: jax.Array, *, beta: float = 0.1, kind: str = "sigmoid",
             label_smoothing: float = 0.0):
  """DPO family (Rafailov et al., arXiv:2305.18290; IPO: Azar et al., arXiv:2310.12036; robust DPO:
  Chowdhury et al., arXiv:2403.00409), per pair.

  ``h = [S_θ(y_w) − S_ref(y_w)] − [S_θ(y_l) − S_ref(y_l)]``.

  * ``sigmoid``: ``−(1 − ε)·log σ(β·h) − ε·log σ(−β·h)`` -- DPO with ε = 0, cDPO with
    ``label_smoothing = ε``.
  * ``robust``: ``[−(1 − ε)·log σ(β·h) + ε·log σ(−β·h)] / (1 − 2ε)``, ε ∈ [0, 0.5).
  * ``ipo``: ``(h − 1/(2τ))²`` with τ = ``beta``. The paper's h uses summed log-probs; TRL
    length-normalises -- pass per-token mean log-probs for that.
  * ``hinge``: ``max(0, 1 − β·h)``.

  Args:
    chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp: float ``[B]`` sequence sums.
  Returns:
    (loss float32 ``[B]``, diagnostics: ``reward_accuracy``, ``reward_margin``, ``chosen_reward``,
    ``rejected_reward`` with implicit reward ``β·(S_θ − S_ref)``).
  """
  chex.assert_rank([chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp], 1)
  chex.assert_equal_shape([chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp])
  if kind not in DPO_KINDS:
    raise ValueError(f"unknown DPO kind {kind!r}; known: {DPO_KINDS}")
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
  f32 = lambda x: x.astype(jnp.float32)
  ref_c, ref_r = jax.lax.stop_gradient(f32(ref_chosen_logp)), jax.lax.stop_gradient(
      f32(ref_rejected_logp))
  chosen = f32(chosen_logp) - ref_c
  rejected = f32(rejected_logp) - ref_r
  h = chosen - rejected
  eps = label_smoothing
  if kind == "sigmoid":
    loss = -(1 - eps) * jax.nn.log_sigmoid(beta * h) - eps * jax.nn.log_sigmoid(-beta * h)
  elif kind == "robust":
    loss = (-(1 - eps) * jax.nn.log_sigmoid(beta * h)
            + eps * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * eps)
  elif kind == "ipo":
    loss = (h - 1.0 / (2.0 * beta)) ** 2
  else:
    loss = jnp.maximum(0.0, 1.0 - beta * h)
  rc, rr = beta * chosen, beta * rejected
  return loss, {"reward_accuracy": jnp.mean((rc > rr).astype(jnp.float32)),
                "reward_margin": jnp.mean(rc - rr), "chosen_reward": jnp.mean(rc),
                "rejected_reward": jnp.mean(rr)}


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array, *,
                       margin: jax.Array | float | None = None, center_coef: float = 0.0):
  """Pairwise Bradley–Terry reward-model loss (docs/algorithms.md §17).

  ``ℓ = −log σ(r_w − r_l − m)`` with optional margin ``m`` (scalar or ``[B]``, Llama 2) and optional
  centering ``+ η·(r_w + r_l)²`` (``center_coef`` η; 0.01 recommended when used).

  Args:
    chosen, rejected: float ``[B]`` rewards.
  Returns:
    (loss float32 ``[B]``, diagnostics: ``accuracy`` (r_w > r_l), ``margin`` mean, reward
    ``mean``/``std`` over both).
  """
  chex.assert_rank([chosen, rejected], 1)
  chex.assert_equal_shape([chosen, rejected])
  rw, rl = chosen.astype(jnp.float32), rejected.astype(jnp.float32)
  diff = rw - rl
  if margin is not None:
    diff = diff - jnp.asarray(margin, jnp.float32)
  loss = -jax.nn.log_sigmoid(diff)
  if center_coef:
    loss = loss + center_coef * (rw + rl) ** 2
  both = jnp.concatenate([rw, rl])
  return loss, {"accuracy": jnp.mean((rw > rl).astype(jnp.float32)),
                "margin": jnp.mean(rw - rl), "reward_mean": jnp.mean(both),
                "reward_std": jnp.std(both)}


def plackett_luce_loss(scores: jax.Array, ranking: jax.Array, *, valid: jax.Array | None = None):
  """Listwise Plackett–Luce loss (docs/algorithms.md §17; the DPO paper's listwise form with
  ``scores = β·(S_θ − S_ref)``).

  ``ℓ = −Σ_{k=1}^{K−1} [ s_{τ(k)} − log Σ_{j=k}^{K} exp s_{τ(j)} ]``; K = 2 is Bradley–Terry.

  Args:
    scores: float ``[B, K]`` one score per response.
    ranking: int ``[B, K]``; ``ranking[b, k]`` is the index of the response ranked k-th (best first).
    valid: optional bool ``[B, K]`` over *ranked positions*: a shorter list puts its ranked
      responses first and marks the tail invalid.
  Returns:
    (loss float32 ``[B]``, diagnostics: ``top1_accuracy`` -- the best-ranked response scores highest).
  """
  chex.assert_rank([scores, ranking], 2)
  chex.assert_equal_shape([scores, ranking])
  s = jnp.take_along_axis(scores.astype(jnp.float32), ranking.astype(jnp.int32), axis=1)
  v = jnp.ones_like(s, bool) if valid is None else valid.astype(bool)
  chex.assert_equal_shape([s, v])
  masked = jnp.where(v, s, -jnp.inf)
  tail_lse = jax.lax.cumlogsumexp(masked, axis=1, reverse=True)
  # Positions with at least one valid successor contribute (the last valid one adds 0 anyway).
  terms = jnp.where(v, s - jnp.where(v, tail_lse, 0.0), 0.0)
  loss = -jnp.sum(terms, axis=1)
  best = jnp.argmax(jnp.where(_valid_responses(ranking, v), scores, -jnp.inf), axis=1)
  return loss, {"top1_accuracy": jnp.mean((best == ranking[:, 0]).astype(jnp.float32))}


def _valid_responses(ranking, valid_positions):
  """bool ``[B, K]`` over response indices: response r appears at a valid ranked position."""
  k = ranking.shape[1]
  onehot = jax.nn.one_hot(ranking, k, dtype=bool) & valid_positions[..., None]
  return jnp.any(onehot, axis=1)


def pointwise_reward_loss(scores: jax.Array, targets: jax.Array, *, kind: str = "regression",
                          thresholds: jax.Array | None = None):
  """Pointwise reward-model losses for ratings (docs/algorithms.md §17).

  * ``regression``: ``Σ_a (r_a − y_a)²`` over the trailing attribute axis (``scores``/``targets``
    ``[B]`` or ``[B, A]``).
  * ``binary``: ``BCE(σ(r), y)`` with ``y ∈ [0, 1]`` (outcome reward models; soft labels allowed).
  * ``ordinal``: cumulative-link (ordinal logistic) classification: ``P(y ≤ c) = σ(θ_c − r)`` with
    increasing ``thresholds θ [C − 1]``; ``ℓ = −log P(y = c)`` for integer ratings ``c ∈ [0, C)``.

  Returns:
    (loss float32 ``[B]``, diagnostics: ``score_mean``, ``score_std``).
  """
  s = scores.astype(jnp.float32)
  if kind == "regression":
    chex.assert_equal_shape([scores, targets])
    d = s - targets.astype(jnp.float32)
    loss = jnp.sum(d * d, axis=-1) if d.ndim == 2 else d * d
  elif kind == "binary":
    chex.assert_equal_shape([scores, targets])
    y = targets.astype(jnp.float32)
    loss = -(y * jax.nn.log_sigmoid(s) + (1 - y) * jax.nn.log_sigmoid(-s))
  elif kind == "ordinal":
    if thresholds is None:
      raise ValueError("kind='ordinal' needs thresholds [C - 1]")
    chex.assert_rank([scores, targets, thresholds], [1, 1, 1])
    th = thresholds.astype(jnp.float32)
    # Cumulative probabilities with P(y <= -1) = 0 and P(y <= C-1) = 1.
    cdf = jax.nn.sigmoid(th[None, :] - s[:, None])  # [B, C-1]
    cdf = jnp.concatenate([jnp.zeros_like(s[:, None]), cdf, jnp.ones_like(s[:, None])], axis=1)
    probs = cdf[:, 1:] - cdf[:, :-1]  # [B, C]
    picked = jnp.take_along_axis(probs, targets.astype(jnp.int32)[:, None], axis=1)[:, 0]
    loss = -jnp.log(jnp.maximum(picked, 1e-12))
  else:
    raise ValueError(f"unknown pointwise kind {kind!r}; known: regression, binary, ordinal")
  return loss, {"score_mean": jnp.mean(s), "score_std": jnp.std(s)}
