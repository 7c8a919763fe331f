"""The critic-free policy-gradient family: GRPO, Dr. GRPO, DAPO, GSPO, RLOO, REINFORCE++ (and its
baseline form), ReMax, with PPO-clip, GSPO, Clip-Cov or KL-Cov as the policy loss of any of them.

One family, three pure pieces, all built from :mod:`jaxrl_llm.ops` (docs/algorithms.md §1-9, 11, 21):

* :class:`Config` -- frozen hyperparameters (:func:`config_from` reads them off the run config;
  :data:`PRESETS` holds each paper's settings).
* :func:`prepare` -- rollout-level maths done once per rollout batch and frozen: KL in the reward,
  sequence scores, advantages. ``prepare(inputs, config, num_groups=B) -> (advantages, diag)``.
* :func:`make_update` -- ``update(state, batch) -> (state, metrics)``: ``epochs`` passes over the
  batch, each split into ``minibatches`` optimizer steps (each optionally accumulated over
  ``micro_batches``), all inside one jitted call (``lax.scan``).

The per-token loss of one minibatch, written out so that a research variant is a one-line edit
(see :func:`token_loss`)::

  ℓ = w_IS · policy_loss(logp, old_logp, A)  +  β·k(logp, ref_logp)   (KL in the loss)
      − c_ent · H                                                       (entropy bonus)
  L = Σ_t weights · ℓ        weights = aggregation_weights(mask, mode)  (over the whole minibatch)

Log-probs and entropy come from the fused LM-head kernel on the trunk's hidden states, so
``[N, T, V]`` logits are never materialised. The temperature is the sampler's.

**On-policy ratio.** At the first minibatch of the first epoch the parameters are exactly the ones
that generated the rollout, so ``old_logp`` is taken as ``stop_gradient(logp)`` there: the ratio is
exactly 1 (not 1 ± float noise of two differently-fused forward passes), and a fully on-policy run
(one epoch, one minibatch) is the textbook REINFORCE-with-baseline gradient. Later minibatches use
the frozen ``old_logp`` recomputed once after the rollout.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import ops
from jaxrl_llm.algorithms.common import (full_grads, guarded_apply, trainable, tree_all_finite,
                                         update_dtype)
from jaxrl_llm.config.schema import AlgorithmConfig, ModelConfig
from jaxrl_llm.kernels import fused_linear_logprobs
from jaxrl_llm.models.decoder import lm_head_weight, logprob_kwargs

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Static hyperparameters of the family (hashable: it is closed over by jitted functions).

  Field meanings are those of :class:`jaxrl_llm.config.AlgorithmConfig`; ``advantage`` and
  ``policy_loss`` are resolved names, ``temperature`` is the sampler's and ``norm_constant`` is
  Dr. GRPO's C (required by ``seq-mean-token-sum-norm``).
  """

  advantage: str = "grpo"
  policy_loss: str = "ppo"
  loss_aggregation: str = "token-mean"
  norm_constant: float | None = None
  clip_low: float = 0.2
  clip_high: float = 0.2
  dual_clip: float = 0.0
  kl_coef: float = 0.0
  kl_placement: str = "loss"
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  adv_eps: float = 1e-6
  singleton: str = "zero"
  gamma: float = 1.0
  clip_cov_ratio: float = 2e-4
  clip_cov_lb: float = 1.0
  clip_cov_ub: float = 5.0
  kl_cov_ratio: float = 2e-3
  kl_cov_coef: float = 1.0
  tis_cap: float = 0.0
  epochs: int = 1
  minibatches: int = 1
  micro_batches: int = 1
  shuffle_minibatches: bool = True
  temperature: float = 1.0
  luffy_gamma: float = 0.1
  clip_on_policy: bool = True
  adv_stats: str = "group"
  srft_sft_coef: float = 0.5
  srft_rl_coef: float = 0.1
  srft_logp_floor: float = -10.0
  prime_process_coef: float = 1.0
  prime_outcome_coef: float = 1.0
  prime_whiten: bool = False
  prime_loo: str = "paper"
  # The batch carries no ``old_logp``: the update's own (first-minibatch) forward supplies the
  # rollout log-probs for its metrics (see :func:`reuses_update_logp`).
  old_from_update: bool = False

  @property
  def kl_in_loss(self) -> bool:
    return self.kl_coef > 0 and self.kl_placement == "loss"

  @property
  def kl_in_reward(self) -> bool:
    return self.kl_coef > 0 and self.kl_placement == "reward"


# Each paper's settings (docs/algorithms.md §23), as overrides of `algorithm.*`. Learning rates and batch
# geometry live in the experiment modules: they depend on the model and task.
PRESETS: dict[str, dict] = {
    "grpo": dict(name="grpo", loss_aggregation="seq-mean-token-mean", clip_low=0.2,
                 clip_high=0.2, kl_coef=0.04, kl_placement="loss", kl_estimator="k3"),
    "drgrpo": dict(name="drgrpo", loss_aggregation="seq-mean-token-sum-norm", clip_low=0.2,
                   clip_high=0.2, kl_coef=0.0),
    "dapo": dict(name="dapo", loss_aggregation="token-mean", clip_low=0.2, clip_high=0.28,
                 kl_coef=0.0, dynamic_sampling=True, overlong_buffer=0, dual_clip=10.0),
    "gspo": dict(name="gspo", loss_aggregation="seq-mean-token-mean", clip_low=3e-4,
                 clip_high=4e-4, kl_coef=0.0),
    "rloo": dict(name="rloo", loss_aggregation="token-mean", kl_coef=0.001,
                 kl_placement="reward", kl_estimator="k1"),
    "reinforce_pp": dict(name="reinforce_pp", loss_aggregation="token-mean", kl_coef=0.001,
                         kl_placement="reward", kl_estimator="k1"),
    "reinforce_pp_baseline": dict(name="reinforce_pp_baseline", loss_aggregation="token-mean",
                                  kl_coef=1e-5, kl_placement="loss", kl_estimator="k2"),
    "remax": dict(name="remax", loss_aggregation="token-mean", kl_coef=0.001,
                  kl_placement="reward", kl_estimator="k1"),
    "clip_cov": dict(name="grpo", policy_loss="clip_cov", loss_aggregation="token-mean",
                     clip_low=1.0, clip_high=1.0, kl_coef=0.0, clip_cov_ratio=2e-4),
    "kl_cov": dict(name="grpo", policy_loss="kl_cov", loss_aggregation="token-mean",
                   kl_coef=0.0, kl_cov_ratio=2e-3, kl_cov_coef=1.0),
    # The paper's settings (std-normalised group advantages over on- and off-policy rows,
    # token-mean, clipped on-policy term); the released script's are advantage="drgrpo",
    # loss_aggregation="seq-mean-token-sum-norm", clip_on_policy=False, entropy_coef=0.001.
    "luffy": dict(name="luffy", loss_aggregation="token-mean", clip_low=0.2, clip_high=0.2,
                  kl_coef=0.0, luffy_gamma=0.1, clip_on_policy=True, adv_stats="group"),
    "srft": dict(name="srft", loss_aggregation="token-mean", clip_low=0.2, clip_high=0.2,
                 kl_coef=0.0, srft_sft_coef=0.5, srft_rl_coef=0.1, adv_stats="group"),
    # PRIME as the paper writes it (A = A^φ + A^o, leave-one-out, no whitening, no KL) and as the
    # verl recipe runs it (both parts ×5, the recipe's leave-one-out, batch-normalised implicit
    # rewards, whitened; entropy bonus 0.001). Both: PPO clip 0.2, token-mean, β_PRM = 0.05.
    "prime": dict(name="prime", loss_aggregation="token-mean", clip_low=0.2, clip_high=0.2,
                  kl_coef=0.0, prime_beta=0.05, prime_update="before", prime_loo="paper",
                  prime_process_coef=1.0, prime_outcome_coef=1.0, prime_whiten=False,
                  prime_norm="none", prime_granularity="token"),
    "prime_recipe": dict(name="prime", loss_aggregation="token-mean", clip_low=0.2,
                         clip_high=0.2, kl_coef=0.0, entropy_coef=0.001, prime_beta=0.05,
                         prime_update="before", prime_loo="recipe", prime_process_coef=5.0,
                         prime_outcome_coef=5.0, prime_whiten=True, prime_norm="batch_norm",
                         prime_granularity="token", prime_max_grad_norm=10.0),
}


def config_from(algorithm: AlgorithmConfig, *, temperature: float, max_new_tokens: int) -> Config:
  """The static :class:`Config` of a run (``norm_constant`` 0 → the generation budget)."""
  return Config(
      advantage=algorithm.resolved_advantage, policy_loss=algorithm.resolved_policy_loss,
      loss_aggregation=algorithm.loss_aggregation,
      norm_constant=float(algorithm.norm_constant or max_new_tokens),
      clip_low=algorithm.clip_low, clip_high=algorithm.clip_high, dual_clip=algorithm.dual_clip,
      kl_coef=algorithm.kl_coef, kl_placement=algorithm.kl_placement,
      kl_estimator=algorithm.kl_estimator, entropy_coef=algorithm.entropy_coef,
      adv_eps=algorithm.adv_eps, singleton=algorithm.singleton, gamma=algorithm.gamma,
      clip_cov_ratio=algorithm.clip_cov_ratio, clip_cov_lb=algorithm.clip_cov_lb,
      clip_cov_ub=algorithm.clip_cov_ub, kl_cov_ratio=algorithm.kl_cov_ratio,
      kl_cov_coef=algorithm.kl_cov_coef, tis_cap=algorithm.tis_cap, epochs=algorithm.epochs,
      minibatches=algorithm.minibatches, micro_batches=algorithm.micro_batches,
      shuffle_minibatches=algorithm.shuffle_minibatches, temperature=temperature,
      luffy_gamma=algorithm.luffy_gamma, clip_on_policy=algorithm.clip_on_policy,
      adv_stats=algorithm.adv_stats, srft_sft_coef=algorithm.srft_sft_coef,
      srft_rl_coef=algorithm.srft_rl_coef, srft_logp_floor=algorithm.srft_logp_floor,
      prime_process_coef=algorithm.prime_process_coef,
      prime_outcome_coef=algorithm.prime_outcome_coef, prime_whiten=algorithm.prime_whiten,
      prime_loo=algorithm.prime_loo, old_from_update=reuses_update_logp(algorithm))


def reuses_update_logp(algorithm: AlgorithmConfig) -> bool:
  """Whether a run skips the separate old-policy forward (``algorithm.old_logp_pass="auto"``).

  With one epoch of one minibatch the update runs on the rollout's own params, where the loss
  already takes ``old_logp = stop_gradient(logp)``; the old log-probs are then needed only by an
  in-reward KL (before the update) or truncated importance sampling, and by metrics, which the
  update computes from its own forward. PPO (values from the same pass) always runs it.
  """
  kl_in_reward = algorithm.kl_coef > 0 and algorithm.kl_placement == "reward"
  return (algorithm.old_logp_pass == "auto" and algorithm.name != "ppo"
          and algorithm.epochs == 1 and algorithm.minibatches == 1 and not kl_in_reward
          and not algorithm.tis_cap)


# --------------------------------------------------------------------------------------------
# Log-probs through the fused kernel.


def response_logprobs(apply_fn: Callable, params, model_config: ModelConfig, tokens: jax.Array,
                      attention_mask: jax.Array, response_mask: jax.Array, *,
                      temperature: float = 1.0):
  """Log-prob and entropy of every response token under ``params`` (fused kernel, no logits).

  Args:
    tokens: int32 ``[N, P + T]`` (left-padded prompt, then response).
    attention_mask: bool ``[N, P + T]`` (prompt and response tokens).
    response_mask: bool ``[N, T]`` -- which response positions are real tokens.
  Returns:
    ``kernels.LogProbs`` with ``logp``, ``entropy`` ... each float32 ``[N, T]`` (0 off the mask):
    the token at response position ``t`` is scored from the hidden state at ``P + t − 1``.
  """
  chex.assert_rank([tokens, attention_mask, response_mask], 2)
  n, length = tokens.shape
  t = response_mask.shape[1]
  p = length - t
  if p < 1:
    raise ValueError(f"tokens width {length} leaves no prompt before {t} response positions")
  hidden = apply_fn({"params": params}, tokens, attention_mask, deterministic=True,
                    return_hidden=True)
  return fused_linear_logprobs(hidden[:, p - 1:length - 1], lm_head_weight(params, model_config),
                               tokens[:, p:], temperature=temperature,
                               valid=response_mask, **logprob_kwargs(model_config))


# --------------------------------------------------------------------------------------------
# prepare: once per rollout batch.


def prepare(inputs: dict, config: Config, *, num_groups: int):
  """Advantages of one rollout batch (docs/algorithms.md §1.3 placement A, 3-9).

  Args:
    inputs: ``scores float32[N]`` (total reward, NaN = unscorable), ``group_ids int32[N]``,
      ``mask bool[N, T]`` (trainable response tokens), ``old_logp float32[N, T]``,
      ``ref_logp float32[N, T]`` (zeros when no reference), ``kl_coef float32[]`` (the current
      β, which an adaptive controller moves), for ReMax ``baseline_scores float32[N]``, for
      PRIME ``process_rewards float32[N, T]`` (:func:`jaxrl_llm.algorithms.prime.process_rewards`),
      for ``grpo_process`` ``step_rewards float32[N, S]`` (NaN = none) and ``step_positions
      int32[N, S]`` (response-token index of each step's last token, −1 = none).
    num_groups: ``B``, the number of prompts (static).
  Returns:
    (advantages float32 ``[N, T]``, diagnostics dict of float32 scalars; ``kl_ref_seq`` is the
    batch mean of per-row mean ``k(old, ref)`` that the adaptive controller observes).
  """
  scores, gid, mask = inputs["scores"], inputs["group_ids"], inputs["mask"]
  chex.assert_rank([scores, gid, mask], [1, 1, 2])
  m = mask.astype(bool)
  beta = inputs["kl_coef"]
  diag = {}
  kl = None
  if config.kl_in_reward and "old_logp" not in inputs:
    raise ValueError("an in-reward KL needs the rollout's old_logp (algorithm.kl_placement)")
  if config.kl_coef > 0 and "old_logp" in inputs:
    # k(old, ref) on the rollout tokens: the in-reward penalty, and the KL-to-reference metric
    # (which the update reports itself when the batch has no old_logp).
    kind = config.kl_estimator.rstrip("+")
    kl = ops.kl_penalty(inputs["old_logp"], inputs["ref_logp"], kind, mask=m)
    row_len = jnp.maximum(jnp.sum(m, -1), 1)
    has = jnp.any(m, -1)
    diag["kl_ref_seq"] = ops.masked_mean(jnp.sum(kl, -1) / row_len, has)
  if config.kl_in_reward:
    # Outcome estimators read the sequence score Σ_t r = R − β Σ_t k (docs/algorithms.md §1.3).
    seq_scores = jnp.where(jnp.isfinite(scores), scores - beta * jnp.sum(kl, -1), jnp.nan)
    token_rewards = ops.scores_to_token_rewards(scores, m, kl=kl, kl_coef=beta)
  else:
    seq_scores = scores
    token_rewards = ops.scores_to_token_rewards(scores, m)
  est = config.advantage
  group_kw = dict(num_groups=num_groups, singleton=config.singleton)
  if config.adv_stats == "on_policy" and est in ("grpo", "drgrpo"):
    # LUFFY's grpo_split: the group's mean / std come from its on-policy rows only; every row
    # (teacher traces included) is centred and scaled by them.
    adv, d = on_policy_group_advantages(seq_scores, gid, m, inputs["is_demonstration"],
                                        num_groups=num_groups, eps=config.adv_eps,
                                        normalize_std=est == "grpo")
  elif est == "grpo":
    adv, d = ops.grpo_advantages(seq_scores, gid, m, eps=config.adv_eps, **group_kw)
  elif est == "drgrpo":
    adv, d = ops.drgrpo_advantages(seq_scores, gid, m, **group_kw)
  elif est == "rloo":
    adv, d = ops.rloo_advantages(seq_scores, gid, m, **group_kw)
  elif est == "reinforce_pp_baseline":
    adv, d = ops.reinforce_pp_baseline_advantages(seq_scores, gid, m, **group_kw)
  elif est == "reinforce_pp":
    # Unscorable rows place no reward token; keep them out of the whitening statistics too.
    scorable = m & jnp.isfinite(scores)[:, None]
    adv, d = ops.reinforce_pp_advantages(token_rewards, scorable, gamma=config.gamma)
  elif est == "grpo_process":
    # GRPO process supervision (§18): the group's step rewards normalised over all its steps.
    adv, d = ops.process.grpo_process_advantages(inputs["step_rewards"], inputs["step_positions"],
                                                 gid, m, num_groups=num_groups,
                                                 eps=config.adv_eps)
  elif est == "prime":
    # PRIME (§10): leave-one-out on the implicit per-token rewards and on the outcome, summed.
    adv, d = ops.prime_advantages(inputs["process_rewards"], seq_scores, gid, m,
                                  num_groups=num_groups, gamma=config.gamma,
                                  process_coef=config.prime_process_coef,
                                  outcome_coef=config.prime_outcome_coef,
                                  whiten=config.prime_whiten, singleton=config.singleton,
                                  loo=config.prime_loo)
    adv = jnp.where(jnp.isfinite(scores)[:, None], adv, 0.0)
  elif est == "remax":
    baseline = inputs["baseline_scores"]
    adv, d = ops.remax_advantages(token_rewards, jnp.nan_to_num(baseline), m)
    adv = jnp.where((jnp.isfinite(scores) & jnp.isfinite(baseline))[:, None], adv, 0.0)
  else:
    raise ValueError(f"unknown advantage estimator {est!r}")
  diag.update({f"adv/{k}": jnp.asarray(v, jnp.float32) for k, v in d.items()
               if jnp.ndim(v) == 0})
  diag["adv/mean"] = ops.masked_mean(adv, m)
  diag["adv/abs_mean"] = ops.masked_mean(jnp.abs(adv), m)
  return jnp.where(m, adv, 0.0), diag


def on_policy_group_advantages(scores: jax.Array, group_ids: jax.Array, mask: jax.Array,
                               is_demonstration: jax.Array, *, num_groups: int,
                               eps: float = 1e-6, normalize_std: bool = True):
  """LUFFY's ``grpo_split`` (docs/algorithms.md §12): ``A_i = (R_i − mean_on) / (std_on + eps)``
  for every row of a group, the statistics over its scorable on-policy rows only.

  Where the on-policy rows are constant (all failed, the case teacher traces are for) the std is
  0; we then use ``R_i − mean_on`` unscaled, so a correct trace among failed samples gets
  ``+1`` rather than ``1/eps`` (our choice: the paper leaves it open).

  Args:
    scores: float ``[N]`` (NaN = unscorable); group_ids: int32 ``[N]``; mask: ``[N, T]``;
    is_demonstration: bool ``[N]``.
  Returns:
    (advantages float32 ``[N, T]``, diagnostics).
  """
  chex.assert_rank([scores, group_ids, is_demonstration, mask], [1, 1, 1, 2])
  valid = jnp.isfinite(scores)
  on = valid & ~is_demonstration.astype(bool)
  stats = ops.group_stats(scores, group_ids, num_groups=num_groups, valid=on)
  s = jnp.where(valid, scores, 0.0).astype(jnp.float32)
  centred = s - stats.mean[group_ids]
  spread = (stats.count[group_ids] > 1) & ~stats.constant[group_ids]
  adv = jnp.where(spread & normalize_std, centred / (stats.std[group_ids] + eps), centred)
  adv = jnp.where(valid & (stats.count[group_ids] > 0), adv, 0.0)
  return jnp.broadcast_to(adv[:, None], mask.shape) * mask, {
      "groups_constant_on_policy": jnp.mean(stats.constant.astype(jnp.float32))}


# --------------------------------------------------------------------------------------------
# update: K epochs x minibatches, one jitted call.


def token_loss(config: Config, logp, entropy, mb: dict, *, on_policy: jax.Array, key: jax.Array):
  """Per-token loss ``ℓ [n, T]`` of one (micro-)batch and its diagnostics. Edit here to compose.

  Args:
    logp, entropy: float32 ``[n, T]`` under the current params (carry gradients).
    mb: the minibatch fields (``mask``, ``advantages``, ``old_logp``, ``ref_logp``,
      ``sampler_logp``, optionally ``behaviour_logp``).
    on_policy: bool scalar -- the params are the rollout's (first minibatch of the first epoch).
    key: PRNG key for Clip-Cov's random selection.
  """
  m = mb["mask"]
  old = jnp.where(on_policy, sg(logp), mb["old_logp"])
  adv = mb["advantages"]
  if config.policy_loss == "ppo":
    pg, diag = ops.ppo_clip_loss(logp, old, adv, m, clip_low=config.clip_low,
                                 clip_high=config.clip_high, dual_clip=config.dual_clip or None)
  elif config.policy_loss == "gspo":
    pg, diag = ops.gspo_loss(logp, old, adv, m, clip_low=config.clip_low,
                             clip_high=config.clip_high)
  elif config.policy_loss == "clip_cov":
    pg, diag = ops.clip_cov_loss(logp, old, adv, m, key=key, clip_ratio=config.clip_cov_ratio,
                                 cov_lb=config.clip_cov_lb, cov_ub=config.clip_cov_ub,
                                 clip_low=config.clip_low, clip_high=config.clip_high)
  elif config.policy_loss == "kl_cov":
    pg, diag = ops.kl_cov_loss(logp, old, adv, m, kl_cov_ratio=config.kl_cov_ratio,
                               kl_coef=config.kl_cov_coef)
  elif config.policy_loss == "luffy":
    # Teacher tokens: -A·f(π), no ratio, no clip; the policy's own tokens: the surrogate.
    off = mb.get("off_policy", jnp.zeros_like(m))
    pg, diag = ops.luffy_loss(logp, old, adv, m, off, gamma=config.luffy_gamma,
                              clip_low=config.clip_low, clip_high=config.clip_high,
                              clip_on_policy=config.clip_on_policy)
  elif config.policy_loss == "srft":
    off = mb.get("off_policy", jnp.zeros_like(m))
    # Correct rows (the loop passes the verifier's verdict); without it, the advantage's sign.
    positive = mb["positive"] if "positive" in mb else jnp.sum(jnp.where(m, adv, 0.0), -1) > 0
    pg, diag = ops.srft_loss(logp, entropy, adv, m, off, positive,
                             clip_low=config.clip_low, clip_high=config.clip_high,
                             sft_coef=config.srft_sft_coef, rl_coef=config.srft_rl_coef,
                             logp_floor=config.srft_logp_floor)
  else:
    raise ValueError(f"unknown policy loss {config.policy_loss!r}")
  if config.tis_cap:
    # Rollout correction: π_old / π_behaviour, truncated (docs/algorithms.md §21). The behaviour policy
    # is the distribution the token was drawn from: the top-k/top-p-truncated one when sampling
    # truncates (``behaviour_logp``), else the sampler's full distribution.
    behaviour = mb.get("behaviour_logp", mb["sampler_logp"])
    w, tis = ops.truncated_is_weights(mb["old_logp"], behaviour, m, cap=config.tis_cap)
    pg = pg * w
    diag.update(tis)
  loss = pg
  if config.kl_in_loss:
    kl = ops.kl_penalty(logp, mb["ref_logp"], config.kl_estimator, mask=m)
    loss = loss + config.kl_coef * kl
    diag["kl_loss"] = ops.masked_mean(kl, m)
  if config.entropy_coef:
    loss = loss - config.entropy_coef * entropy
  diag["pg_loss_mean"] = ops.masked_mean(pg, m)
  return jnp.where(m, loss, 0.0), diag


_AVERAGED = ("clipfrac", "clipfrac_lower", "approx_kl", "ratio_mean", "kl_loss", "pg_loss_mean",
             "is_weight_mean", "is_capped_fraction", "seq_ratio_mean", "clip_cov_selected",
             "kl_cov_selected", "offpolicy_fraction", "offpolicy_prob_mean", "srft_w_sft",
             "srft_w_rl")


def make_update(apply_fn: Callable, model_config: ModelConfig, tx: optax.GradientTransformation,
                schedule: Callable, config: Config):
  """Builds the pure ``update(state, batch) -> (state, metrics)``.

  Args:
    apply_fn: the decoder's ``apply`` (must accept ``return_hidden=True``).
    tx: the optax chain.
    schedule: its learning-rate schedule (for the metric).

  The batch (``N`` rows, response length ``T``, ``L = P + T``):
    ``tokens int32[N, L]``, ``attention_mask bool[N, L]``, ``mask bool[N, T]`` (trainable
    tokens), ``advantages``, ``old_logp``, ``ref_logp``, ``sampler_logp`` float32 ``[N, T]``
    (``sampler_logp``: the sampler's log-probs under the full temperature-scaled distribution,
    for the sampler-trainer gap metric; optional ``behaviour_logp``: under the truncated
    distribution actually sampled from, for truncated importance sampling).

  ``N`` must divide into ``minibatches × micro_batches`` equal parts. With
  ``config.old_from_update`` the batch may omit ``old_logp``: the update's own forward (one epoch,
  one minibatch: the rollout's params) stands in for it in every metric, and it also reports
  ``kl/ref`` (the rollout's mean per-row KL to the reference, which ``prepare`` reports
  otherwise).

  Metrics (float32 scalars, means over the optimizer steps of this call unless noted):
  ``train/loss``, ``train/pg_loss``, ``train/entropy``, ``train/clipfrac`` (token clip, high
  side or any), ``train/clipfrac_lower`` (dual clip), ``train/approx_kl_old`` (mean old − new),
  ``train/kl_ref`` (KL term, when in the loss), ``train/grad_norm``, ``train/learning_rate``,
  ``train/ratio_first_max_dev`` (max ``|ρ − 1|`` at the first minibatch: 0 on-policy),
  ``train/sampler_gap_k1`` and ``train/sampler_gap_abs_max`` (trainer ``old_logp`` vs sampler),
  ``train/skipped`` (optimizer steps skipped as non-finite in this call), ``train/skipped_total``;
  the entropy dynamics of the whole batch (:func:`jaxrl_llm.ops.covariance_stats` of
  ``old_logp`` and the advantages): ``train/cov``, ``train/cov_clip_band``, ``train/cov_kl_topk``,
  ``train/cov_kl_topk_share``.
  """
  e_count, m_count, a_count = config.epochs, config.minibatches, config.micro_batches

  def loss_fn(params, micro, weights, on_policy, key):
    out = response_logprobs(apply_fn, params, model_config, micro["tokens"],
                            micro["attention_mask"], micro["mask"],
                            temperature=config.temperature)
    per_token, diag = token_loss(config, out.logp, out.entropy, micro, on_policy=on_policy,
                                 key=key)
    loss = ops.masked_sum(per_token * weights, micro["mask"])
    ent = ops.masked_sum(sg(out.entropy) * weights, micro["mask"])
    first_dev = jnp.max(jnp.where(micro["mask"], jnp.abs(
        jnp.exp(jnp.clip(sg(out.logp) - jnp.where(on_policy, sg(out.logp), micro["old_logp"]),
                         -20.0, 20.0)) - 1.0), 0.0))
    return loss, (diag, ent, first_dev, sg(out.logp))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def optimizer_step(state, mb, on_policy, key):
    n = mb["tokens"].shape[0]
    weights = ops.aggregation_weights(mb["mask"], config.loss_aggregation,
                                      norm_constant=config.norm_constant)
    fields = dict(mb, weights=weights)
    micro = jax.tree.map(lambda x: x.reshape((a_count, n // a_count) + x.shape[1:]), fields)

    def micro_step(carry, xs):
      grads_acc, loss_acc, ent_acc, diag_acc, dev_acc = carry
      mu, i = xs
      w = mu.pop("weights")
      (loss, (diag, ent, dev, logp)), grads = grad_fn(state.params, mu, w, on_policy,
                                                      jax.random.fold_in(key, i))
      diag = {k: jnp.asarray(diag.get(k, 0.0), jnp.float32) for k in _AVERAGED}
      return (jax.tree.map(jnp.add, grads_acc, trainable(grads)), loss_acc + loss, ent_acc + ent,
              jax.tree.map(lambda a, b: a + b / a_count, diag_acc, diag),
              jnp.maximum(dev_acc, dev)), (logp if config.old_from_update else None)

    zero = jnp.zeros((), jnp.float32)
    init = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable(state.params)),
            zero, zero, {k: zero for k in _AVERAGED}, zero)
    (grads, loss, ent, diag, dev), logp = jax.lax.scan(micro_step, init,
                                                       (micro, jnp.arange(a_count)))
    grads = update_dtype(full_grads(grads, state.params), state.params)
    finite = jnp.isfinite(loss) & tree_all_finite(grads)
    lr = jnp.asarray(schedule(state.step), jnp.float32)
    new_state = guarded_apply(state, grads, tx, finite)
    metrics = dict(diag, loss=loss, entropy=ent, grad_norm=optax.tree_utils.tree_norm(grads),
                   learning_rate=lr, skipped=1.0 - finite.astype(jnp.float32), first_dev=dev)
    if config.old_from_update:  # this minibatch's log-probs before the step, [n, T]
      metrics["logp"] = logp.reshape((n,) + logp.shape[2:])
    return new_state, metrics

  def update(state, batch: dict):
    own = config.old_from_update and "old_logp" not in batch  # static per trace
    if own:
      if e_count * m_count != 1:
        raise ValueError("old_from_update needs one epoch of one minibatch")
      # Never read: the only optimizer step is on-policy (old = stop_gradient(logp)).
      batch = dict(batch, old_logp=jnp.zeros(batch["mask"].shape, jnp.float32))
    chex.assert_rank([batch["tokens"], batch["attention_mask"], batch["mask"],
                      batch["advantages"], batch["old_logp"]], 2)
    chex.assert_equal_shape([batch["mask"], batch["advantages"], batch["old_logp"],
                             batch["ref_logp"], batch["sampler_logp"]])
    chex.assert_equal_shape([batch["tokens"], batch["attention_mask"]])
    n = batch["tokens"].shape[0]
    if n % (m_count * a_count):
      raise ValueError(f"{n} rows do not split into {m_count} minibatches x {a_count} "
                       "micro-batches")
    key = jax.random.fold_in(state.rng, state.step)
    if config.shuffle_minibatches and m_count > 1:
      perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), n)
                         for e in range(e_count)])
    else:
      perms = jnp.tile(jnp.arange(n), (e_count, 1))
    order = perms.reshape(e_count * m_count, n // m_count)

    def body(state, xs):
      rows, i = xs
      mb = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch)
      return optimizer_step(state, mb, i == 0, jax.random.fold_in(key, 1000 + i))

    state, per_step = jax.lax.scan(body, state, (order, jnp.arange(e_count * m_count)))
    # The rollout's log-probs under the trainer: the batch's, or the update's own first forward
    # (one unshuffled minibatch: rows in batch order).
    own_logp = per_step.pop("logp", None)
    old_logp = own_logp[0] if own else batch["old_logp"]
    # The sampler-trainer gap over the policy's own tokens (teacher tokens were not sampled).
    sampled = batch["mask"] & ~batch["off_policy"] if "off_policy" in batch else batch["mask"]
    _, gap = ops.truncated_is_weights(old_logp, batch["sampler_logp"], sampled,
                                      cap=max(config.tis_cap, 1.0))
    cov = ops.covariance_stats(old_logp, batch["advantages"], batch["mask"],
                               clip_cov_lb=config.clip_cov_lb, clip_cov_ub=config.clip_cov_ub,
                               kl_cov_ratio=config.kl_cov_ratio)
    mean = lambda x: jnp.mean(x)
    metrics = {
        "train/loss": mean(per_step["loss"]),
        "train/pg_loss": mean(per_step["pg_loss_mean"]),
        "train/entropy": mean(per_step["entropy"]),
        "train/clipfrac": mean(per_step["clipfrac"]),
        "train/clipfrac_lower": mean(per_step["clipfrac_lower"]),
        "train/approx_kl_old": mean(per_step["approx_kl"]),
        "train/ratio_mean": mean(per_step["ratio_mean"]),
        "train/grad_norm": mean(per_step["grad_norm"]),
        "train/learning_rate": per_step["learning_rate"][-1],
        "train/ratio_first_max_dev": per_step["first_dev"][0],
        "train/sampler_gap_k1": gap["sampler_gap_k1"],
        "train/sampler_gap_abs_max": gap["sampler_gap_abs_max"],
        "train/skipped": jnp.sum(per_step["skipped"]),
        "train/skipped_total": state.skipped_steps.astype(jnp.float32),
        **{f"train/{k}": v for k, v in cov.items()},
    }
    if config.kl_in_loss:
      metrics["train/kl_ref"] = mean(per_step["kl_loss"])
    if own and config.kl_coef > 0:  # what prepare reports from old_logp
      m = batch["mask"]
      kl = ops.kl_penalty(old_logp, batch["ref_logp"], config.kl_estimator.rstrip("+"), mask=m)
      metrics["kl/ref"] = ops.masked_mean(jnp.sum(kl, -1) / jnp.maximum(jnp.sum(m, -1), 1),
                                          jnp.any(m, -1))
    if config.tis_cap:
      metrics["train/is_weight_mean"] = mean(per_step["is_weight_mean"])
      metrics["train/is_capped_fraction"] = mean(per_step["is_capped_fraction"])
    if config.policy_loss == "gspo":
      metrics["train/seq_ratio_mean"] = mean(per_step["seq_ratio_mean"])
    if config.policy_loss == "clip_cov":
      metrics["train/clip_cov_selected"] = mean(per_step["clip_cov_selected"])
    if config.policy_loss == "kl_cov":
      metrics["train/kl_cov_selected"] = mean(per_step["kl_cov_selected"])
    if config.policy_loss == "luffy":
      metrics["train/offpolicy_fraction"] = mean(per_step["offpolicy_fraction"])
      metrics["train/offpolicy_prob_mean"] = mean(per_step["offpolicy_prob_mean"])
    if config.policy_loss == "srft":
      metrics["train/offpolicy_fraction"] = mean(per_step["offpolicy_fraction"])
      metrics["train/srft_w_sft"] = mean(per_step["srft_w_sft"])
      metrics["train/srft_w_rl"] = mean(per_step["srft_w_rl"])
    return state, metrics

  return update
