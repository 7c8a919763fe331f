"""PPO for RLHF with a learned critic and GAE (docs/algorithms.md §2), as pure jitted functions.

Three pieces, mirroring :mod:`jaxrl_llm.algorithms.policy_gradient` (the critic-free family, whose
per-token actor loss :func:`policy_gradient.token_loss` is reused unchanged):

* :class:`Config` -- frozen hyperparameters: the actor's (same fields as the family's
  ``Config``; :attr:`Config.pg` builds that one) plus GAE, critic and warm-up settings.
* :func:`prepare` -- once per rollout batch, frozen afterwards: token rewards, GAE advantages,
  λ-returns, whitening. ``prepare(inputs, config) -> (advantages, returns, diag)``.
* :func:`make_update` -- ``update(state, batch) -> (state, metrics)``: ``epochs`` passes of
  ``minibatches`` optimizer steps (each optionally accumulated over ``micro_batches``), actor and
  critic on the same shuffled minibatches, all inside one jitted ``lax.scan``.

**Maths.** With ``m`` the response mask and ``R_i`` the outcome score (NaN = unscorable)::

  r_t   = −β·k1(old, ref)_t·m_t  +  R_i·[t = L_i − 1]          (KL in the reward; placement A)
  δ_t   = r_t + γ·V_next − V_t,   g ← δ_t + γλ·g,   A_t = g      (right to left over valid tokens;
                                                                 masked tokens carry g and V_next)
  Ret_t = A_t + V_t                                             (critic target, before whitening)
  A     = whiten(A, m_scorable)                                 (batch-wide, token-weighted)

  actor:  ℓ_π = token_loss(...)  -- PPO clip (optional dual clip), optional KL in the loss,
                                     entropy bonus; aggregated with the family's weights
  critic: V_clip = V_old + clip(V − V_old, −ε_v, ε_v),  ℓ_v = ½·max((V − Ret)², (V_clip − Ret)²)
  separate critic: two optimizers, L_π and L_v minimised independently;
  shared trunk:    L = L_π + c_v·L_v with one optimizer.

Both losses are aggregated with the same mode (``loss_aggregation``) and weights computed over the
whole minibatch, so micro-batching and sharding do not change the step.

**Alignment.** ``tokens [N, P + T]`` is a left-padded prompt then the response. Response position
``t`` is scored from the hidden state at absolute position ``P + t − 1`` -- the state *before*
token ``t`` is chosen. Log-probs (:func:`policy_gradient.response_logprobs`) and values
(:func:`response_values`) use the same slice, so ``V[:, t]`` is the value of the state in which
the policy emitted ``y_t`` and ``old_logp[:, t]`` is that action's log-prob.

**Unscorable rows** (NaN score) place no reward token, get advantage 0, stay out of the whitening
statistics, and have no value target: :func:`prepare` returns NaN ``returns`` on their tokens and
the critic loss skips every token whose return is not finite (NaN never reaches arithmetic; all
ops select with ``where`` first). Their tokens stay in the actor's mask, as in the critic-free
family, so entropy / KL-in-loss terms still act on them.

**Parameters and the sampler.** ``critic="separate"``: ``state.actor.params`` is the decoder
params (give them to the sampler as is) and ``state.critic.params`` is a value-head model
``{"trunk", "head"}`` (:mod:`jaxrl_llm.models.heads`). ``critic="shared"``: one
``TrainState`` whose params are ``{"policy": <decoder params>, "value_head": {"kernel" [D],
"bias" []}}``; ``state.critic`` is None and the sampler gets ``state.actor.params["policy"]``.
:func:`policy_params` returns the right subtree in either mode.

**Critic warm-up.** The batch carries ``train_actor`` (bool scalar, traced: one compilation serves
both phases). While False the actor is frozen bitwise: separate mode keeps the whole actor
``TrainState`` (step and optimizer state included); shared mode trains only the value head on
stop-gradient trunk features and restores the policy subtree exactly (the shared optimizer's step
counter advances). :func:`actor_trains_at` gives the flag for a rollout step.

**On-policy first minibatch.** As in the critic-free family, at the first minibatch of the first
epoch the params are the rollout's, so ``old_logp = sg(logp)`` (ratio exactly 1) and likewise
``old_values = sg(values)`` for the value clip.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import ops
from jaxrl_llm.algorithms import policy_gradient
from jaxrl_llm.algorithms.common import (TrainState, guarded_apply, train_state_shardings,
                                         tree_all_finite, update_dtype)
from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.kernels import fused_linear_logprobs
from jaxrl_llm.models import heads
from jaxrl_llm.models.decoder import Decoder, lm_head_weight, logprob_kwargs
from jaxrl_llm.parallel import replicated

sg = jax.lax.stop_gradient

CRITIC_MODES = ("separate", "shared")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Static PPO hyperparameters (hashable: closed over by jitted functions).

  Actor fields have the meaning of :class:`policy_gradient.Config` (clip ranges, ``dual_clip``
  (0 = off), ``kl_*``, ``entropy_coef``, ``loss_aggregation``, batch geometry, ``temperature``).
  Defaults follow docs/algorithms.md §2 / verl's PPO: KL in the reward with k1 (β is passed to
  :func:`prepare` as ``kl_coef`` so a controller can move it; ``kl_coef`` here only switches the
  term on), dual clip 3, value clip 0.5, γ = λ = 1 (TRL / InstructGPT use λ = 0.95).

  Attributes:
    gae_lambda, gamma: GAE λ and discount.
    value_clip: ε_v of the clipped value loss; 0 = unclipped ``½(V − Ret)²``.
    vf_coef: c_v, weight of the value loss on a shared trunk (ignored with a separate critic).
    whiten_advantages: batch-wide whitening of A (verl always whitens GAE advantages).
    critic: ``"separate"`` (own network and optimizer) or ``"shared"`` (value head on the trunk).
    critic_warmup_steps: rollout steps during which only the critic trains (the loop passes
      ``train_actor = actor_trains_at(config, step)``).
  """

  # Actor (policy_gradient.Config fields).
  policy_loss: str = "ppo"
  loss_aggregation: str = "token-mean"
  norm_constant: float | None = None
  clip_low: float = 0.2
  clip_high: float = 0.2
  dual_clip: float = 3.0
  kl_coef: float = 0.001
  kl_placement: str = "reward"
  kl_estimator: str = "k1"
  entropy_coef: float = 0.0
  tis_cap: float = 0.0
  epochs: int = 1
  minibatches: int = 1
  micro_batches: int = 1
  shuffle_minibatches: bool = True
  temperature: float = 1.0
  # PPO.
  gae_lambda: float = 1.0
  gamma: float = 1.0
  value_clip: float = 0.5
  vf_coef: float = 0.1
  whiten_advantages: bool = True
  critic: str = "separate"
  critic_warmup_steps: int = 0

  def __post_init__(self):
    if self.critic not in CRITIC_MODES:
      raise ValueError(f"critic must be one of {CRITIC_MODES}, got {self.critic!r}")
    if self.kl_placement not in ("reward", "loss"):
      raise ValueError(f"kl_placement must be 'reward' or 'loss', got {self.kl_placement!r}")
    if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.gae_lambda <= 1.0):
      raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {self.gamma}, "
                       f"{self.gae_lambda}")
    if self.value_clip < 0 or self.vf_coef < 0 or self.critic_warmup_steps < 0:
      raise ValueError("value_clip, vf_coef and critic_warmup_steps must be >= 0")
    if self.dual_clip and not self.dual_clip > 1.0:
      raise ValueError(f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}")
    if min(self.epochs, self.minibatches, self.micro_batches) < 1:
      raise ValueError("epochs, minibatches and micro_batches must be >= 1")

  @property
  def shared(self) -> bool:
    return self.critic == "shared"

  @property
  def kl_in_reward(self) -> bool:
    return self.kl_coef > 0 and self.kl_placement == "reward"

  @property
  def pg(self) -> policy_gradient.Config:
    """The actor's :class:`policy_gradient.Config` (what :func:`policy_gradient.token_loss` reads).
    """
    return policy_gradient.Config(
        advantage="gae", policy_loss=self.policy_loss, loss_aggregation=self.loss_aggregation,
        norm_constant=self.norm_constant, clip_low=self.clip_low, clip_high=self.clip_high,
        dual_clip=self.dual_clip, kl_coef=self.kl_coef, kl_placement=self.kl_placement,
        kl_estimator=self.kl_estimator, entropy_coef=self.entropy_coef, gamma=self.gamma,
        tis_cap=self.tis_cap, epochs=self.epochs, minibatches=self.minibatches,
        micro_batches=self.micro_batches, shuffle_minibatches=self.shuffle_minibatches,
        temperature=self.temperature)


def config_from(algorithm, *, temperature: float, max_new_tokens: int, **overrides) -> Config:
  """A :class:`Config` from the run's ``AlgorithmConfig``: the actor fields it shares with the
  critic-free family, PPO fields read off it when present (``gae_lambda``, ``value_clip``,
  ``vf_coef``, ``whiten_advantages``, ``critic``, ``critic_warmup_steps``), then ``overrides``."""
  base = policy_gradient.config_from(algorithm, temperature=temperature,
                                     max_new_tokens=max_new_tokens)
  shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(Config)
            if hasattr(base, f.name)}
  for name in ("gae_lambda", "value_clip", "vf_coef", "whiten_advantages", "critic",
               "critic_warmup_steps"):
    if hasattr(algorithm, name):
      shared[name] = getattr(algorithm, name)
  shared.update(overrides)
  return Config(**shared)


def actor_trains_at(config: Config, rollout_step: int) -> bool:
  """The ``train_actor`` flag of rollout step ``rollout_step`` (0-based): False during warm-up."""
  return rollout_step >= config.critic_warmup_steps


# --------------------------------------------------------------------------------------------
# Values and log-probs, aligned with the response tokens.


def _response_slice(tokens: jax.Array, response_mask: jax.Array) -> tuple[int, int]:
  length, t = tokens.shape[1], response_mask.shape[1]
  p = length - t
  if p < 1:
    raise ValueError(f"tokens width {length} leaves no prompt before {t} response positions")
  return p - 1, length - 1


def _head(hidden: jax.Array, head: dict) -> jax.Array:
  """Scalar head ``h·w + b`` in float32: ``[..., D] -> [...]``."""
  return jnp.einsum("...D,D->...", hidden.astype(jnp.float32), head["kernel"]) + head["bias"]


def response_values(critic_params: dict, model_config: ModelConfig, tokens: jax.Array,
                    attention_mask: jax.Array, response_mask: jax.Array) -> jax.Array:
  """Separate critic's value of every response position.

  Args:
    critic_params: value-head model ``{"trunk": <Decoder params>, "head": {"kernel", "bias"}}``.
    tokens: int32 ``[N, P + T]``; attention_mask: bool ``[N, P + T]``;
    response_mask: bool ``[N, T]``.
  Returns:
    float32 ``[N, T]``: ``V[:, t]`` is the head at the hidden state of position ``P + t − 1`` (the
    state that predicts response token ``t``, as for log-probs); 0 off ``response_mask``.
  """
  chex.assert_rank([tokens, attention_mask, response_mask], 2)
  chex.assert_equal_shape([tokens, attention_mask])
  chex.assert_equal_shape_prefix([tokens, response_mask], 1)
  lo, hi = _response_slice(tokens, response_mask)
  trunk_config = dataclasses.replace(model_config, tie_embeddings=True)  # As models.heads.
  hidden = Decoder(trunk_config).apply({"params": critic_params["trunk"]}, tokens,
                                       attention_mask, deterministic=True, return_hidden=True)
  values = _head(hidden[:, lo:hi], critic_params["head"])
  return jnp.where(response_mask.astype(bool), values, 0.0)


def shared_logprobs_and_values(policy_apply: Callable, params: dict, model_config: ModelConfig,
                               tokens: jax.Array, attention_mask: jax.Array,
                               response_mask: jax.Array, *, temperature: float = 1.0,
                               value_grad_to_trunk: jax.Array | bool = True):
  """Shared trunk: one forward gives log-probs (fused kernel) and values (head, same hidden states).

  Args:
    params: ``{"policy": <Decoder params>, "value_head": {"kernel" [D], "bias" []}}``.
    tokens, attention_mask: ``[N, P + T]``; response_mask: bool ``[N, T]``.
    value_grad_to_trunk: bool (may be traced); False stops the value loss's gradient at the
      hidden states (critic warm-up: the trunk stays the policy's).
  Returns:
    (``kernels.LogProbs`` of float32 ``[N, T]`` as :func:`policy_gradient.response_logprobs`,
    values float32 ``[N, T]``), both 0 off ``response_mask``.
  """
  chex.assert_rank([tokens, attention_mask, response_mask], 2)
  chex.assert_equal_shape([tokens, attention_mask])
  lo, hi = _response_slice(tokens, response_mask)
  policy = params["policy"]
  hidden = policy_apply({"params": policy}, tokens, attention_mask, deterministic=True,
                        return_hidden=True)[:, lo:hi]
  out = fused_linear_logprobs(hidden, lm_head_weight(policy, model_config), tokens[:, lo + 1:],
                              temperature=temperature,
                              valid=response_mask, **logprob_kwargs(model_config))
  value_hidden = jnp.where(value_grad_to_trunk, hidden, sg(hidden))
  values = _head(value_hidden, params["value_head"])
  return out, jnp.where(response_mask.astype(bool), values, 0.0)


def rollout_logprobs_and_values(policy_apply: Callable, model_config: ModelConfig, state,
                                tokens: jax.Array, attention_mask: jax.Array,
                                response_mask: jax.Array, config: Config):
  """``old_logp`` and ``old_values`` of a rollout batch under ``state`` (the trainer's view).

  Returns:
    (old_logp float32 ``[N, T]``, old_values float32 ``[N, T]``), 0 off ``response_mask``.
    Shared mode does it in one forward; separate mode runs the actor and the critic.
  """
  if config.shared:
    out, values = shared_logprobs_and_values(policy_apply, state.actor.params, model_config,
                                             tokens, attention_mask, response_mask,
                                             temperature=config.temperature)
    return out.logp, values
  out = policy_gradient.response_logprobs(policy_apply, state.actor.params, model_config, tokens,
                                          attention_mask, response_mask,
                                          temperature=config.temperature)
  return out.logp, response_values(state.critic.params, model_config, tokens, attention_mask,
                                   response_mask)


# --------------------------------------------------------------------------------------------
# State.


@flax.struct.dataclass
class PPOState:
  """Actor and critic training states (a pytree; checkpoint it whole).

  Attributes:
    actor: ``TrainState``; params are the decoder's (separate critic) or
      ``{"policy", "value_head"}`` (shared trunk).
    critic: ``TrainState`` of the value-head model ``{"trunk", "head"}``, or None (shared).
  """

  actor: TrainState
  critic: TrainState | None


def init_state(policy_params, model_config: ModelConfig, config: Config,
               actor_tx: optax.GradientTransformation,
               critic_tx: optax.GradientTransformation | None, key: jax.Array) -> PPOState:
  """A fresh :class:`PPOState` from policy params.

  Separate: the critic copies the policy trunk (``heads.init_from_policy``) with a fresh head.
  Shared: a fresh ``value_head`` is added next to the policy params. ``key`` (``uint32[2]``) is
  split into the head init and the dropout streams of the two states. Jit it with
  ``out_shardings=`` :func:`state_shardings` to create it straight into its shardings.
  """
  k_head, k_actor, k_critic = jax.random.split(key, 3)
  if config.shared:
    params = {"policy": policy_params, "value_head": heads.init_head(model_config, k_head)}
    return PPOState(actor=TrainState.create(params, actor_tx, k_actor), critic=None)
  if critic_tx is None:
    raise ValueError("a separate critic needs its own optimizer (critic_tx)")
  critic = heads.init_from_policy(policy_params, model_config, k_head)
  return PPOState(actor=TrainState.create(policy_params, actor_tx, k_actor),
                  critic=TrainState.create(critic, critic_tx, k_critic))


def state_shardings(config: Config, model_config: ModelConfig,
                    actor_tx: optax.GradientTransformation,
                    critic_tx: optax.GradientTransformation | None, abstract_policy_params,
                    policy_param_shardings, mesh) -> PPOState:
  """``NamedSharding`` of every :class:`PPOState` leaf: trunks and their optimizer moments as the
  policy's param rules say, heads and scalars replicated.

  Args:
    abstract_policy_params, policy_param_shardings: the decoder's ``ShapeDtypeStruct`` and
      ``NamedSharding`` trees (``models.init.abstract_params``, ``parallel.tree_shardings``).
  """
  rep = replicated(mesh)
  head_shape = {"kernel": jax.ShapeDtypeStruct((model_config.d_model,), jnp.float32),
                "bias": jax.ShapeDtypeStruct((), jnp.float32)}
  head_shardings = {"kernel": rep, "bias": rep}
  if config.shared:
    abstract = {"policy": abstract_policy_params, "value_head": head_shape}
    shardings = {"policy": policy_param_shardings, "value_head": head_shardings}
    return PPOState(actor=train_state_shardings(actor_tx, abstract, shardings, mesh), critic=None)
  drop = lambda tree: {k: v for k, v in tree.items() if k != "lm_head"}
  critic_abstract = {"trunk": drop(abstract_policy_params), "head": head_shape}
  critic_shardings = {"trunk": drop(policy_param_shardings), "head": head_shardings}
  return PPOState(
      actor=train_state_shardings(actor_tx, abstract_policy_params, policy_param_shardings, mesh),
      critic=train_state_shardings(critic_tx, critic_abstract, critic_shardings, mesh))


def policy_params(state: PPOState, config: Config):
  """The decoder params the sampler (and the reference / old log-prob passes) should receive."""
  return state.actor.params["policy"] if config.shared else state.actor.params


# --------------------------------------------------------------------------------------------
# prepare: once per rollout batch.


def prepare(inputs: dict, config: Config):
  """Token rewards, GAE advantages and λ-returns of one rollout batch (docs/algorithms.md §2).

  Args:
    inputs: ``scores float32[N]`` (outcome score, NaN = unscorable), ``mask bool[N, T]``,
      ``old_logp``, ``ref_logp``, ``old_values`` float32 ``[N, T]`` (``ref_logp`` may be zeros
      when ``kl_coef == 0``), ``kl_coef float32[]`` (the current β); optionally
      ``step_rewards float32[N, S]`` and ``step_positions int32[N, S]`` (process-reward steps,
      added on their last tokens).
    config: static; ``kl_coef > 0`` with ``kl_placement="reward"`` puts ``−β·k(old, ref)`` on
      every valid token (``kl_estimator``, k1 by default).
  Returns:
    (advantages float32 ``[N, T]`` -- whitened when configured, 0 off the mask and on
    unscorable rows; returns float32 ``[N, T]`` -- ``A + V_old`` before whitening, 0 off the mask,
    NaN on the tokens of unscorable rows (no value target); diagnostics, float32 scalars:
    ``kl_ref_seq`` (batch mean of per-row mean ``k(old, ref)``, the family's definition, for the
    adaptive controller; only when ``kl_coef > 0``), ``adv/raw_mean``, ``adv/raw_std`` (before
    whitening), ``adv/mean``, ``adv/abs_mean``, ``adv/whiten_degenerate``, ``adv/unscorable_rows``,
    ``returns/mean``, ``returns/std``, ``values/mean``, ``values/explained_var``
    (``1 − Var(Ret − V_old)/Var(Ret)``), ``rewards/kl_penalty_mean`` (mean per-token ``β·k``)).
  """
  scores, mask = inputs["scores"], inputs["mask"]
  old_logp, ref_logp, old_values = inputs["old_logp"], inputs["ref_logp"], inputs["old_values"]
  chex.assert_rank([scores, mask, old_logp, ref_logp, old_values], [1, 2, 2, 2, 2])
  chex.assert_equal_shape([mask, old_logp, ref_logp, old_values])
  chex.assert_equal_shape_prefix([scores, mask], 1)
  m = mask.astype(bool)
  finite = jnp.isfinite(scores)
  scorable = m & finite[:, None]
  beta = jnp.asarray(inputs["kl_coef"], jnp.float32)
  diag = {}
  kl = None
  if config.kl_coef > 0:
    kl = ops.kl_penalty(old_logp, ref_logp, config.kl_estimator.rstrip("+"), mask=m)
    row_len = jnp.maximum(jnp.sum(m, -1), 1)
    diag["kl_ref_seq"] = ops.masked_mean(jnp.sum(kl, -1) / row_len, jnp.any(m, -1))
  if config.kl_in_reward:
    rewards = ops.scores_to_token_rewards(scores, m, kl=kl, kl_coef=beta)
    diag["rewards/kl_penalty_mean"] = ops.masked_mean(beta * kl, m)
  else:
    rewards = ops.scores_to_token_rewards(scores, m)
  if "step_rewards" in inputs:  # Math-Shepherd's step-by-step PPO: each step's reward on its
    # last token, next to the outcome (docs/algorithms.md §18).
    steps = ops.process.step_token_rewards(inputs["step_rewards"], inputs["step_positions"],
                                           m.shape[1])
    rewards = rewards + jnp.where(m, steps, 0.0)
    diag["rewards/step_mean"] = ops.masked_mean(jnp.sum(jnp.where(m, steps, 0.0), -1),
                                                jnp.any(m, -1))
  values = jnp.where(m, old_values, 0.0).astype(jnp.float32)
  raw, returns = ops.gae_advantages(rewards, values, scorable, gamma=config.gamma,
                                    lam=config.gae_lambda)
  adv = ops.masked_whiten(raw, scorable) if config.whiten_advantages else raw
  adv = jnp.where(scorable, adv, 0.0)
  returns = jnp.where(scorable, returns, jnp.where(m, jnp.nan, 0.0))

  ret = jnp.where(scorable, returns, 0.0)
  var_ret = ops.masked_var(ret, scorable)
  var_err = ops.masked_var(ret - values, scorable)
  diag.update({
      "adv/raw_mean": ops.masked_mean(raw, scorable),
      "adv/raw_std": jnp.sqrt(ops.masked_var(raw, scorable)),
      "adv/mean": ops.masked_mean(adv, scorable),
      "adv/abs_mean": ops.masked_mean(jnp.abs(adv), scorable),
      "adv/whiten_degenerate": (jnp.sum(scorable) < 2).astype(jnp.float32),
      "adv/unscorable_rows": jnp.sum((~finite).astype(jnp.float32)),
      "returns/mean": ops.masked_mean(ret, scorable),
      "returns/std": jnp.sqrt(var_ret),
      "values/mean": ops.masked_mean(values, m),
      "values/explained_var": _explained_variance(var_err, var_ret),
  })
  return adv, returns, diag


def _explained_variance(var_err, var_target):
  """``1 − Var(target − prediction) / Var(target)``; 0 when the target has no variance."""
  return jnp.where(var_target > 0, 1.0 - var_err / jnp.where(var_target > 0, var_target, 1.0),
                   0.0)


# --------------------------------------------------------------------------------------------
# update: epochs x minibatches (x micro-batches), one jitted call.

_ACTOR_DIAG = ("clipfrac", "clipfrac_lower", "approx_kl", "ratio_mean", "kl_loss", "pg_loss_mean",
               "is_weight_mean", "is_capped_fraction", "seq_ratio_mean")
_CRITIC_DIAG = ("vf_clipfrac", "value_mean", "value_error")
# Sufficient statistics of the explained variance: count, Σ Ret, Σ Ret², Σ e, Σ e² (e = Ret − V).
_EV_STATS = 5


def _ev_sums(values, returns, vmask):
  v, r = sg(values), jnp.where(vmask, returns, 0.0)
  e = jnp.where(vmask, r - v, 0.0)
  f = vmask.astype(jnp.float32)
  return jnp.stack([jnp.sum(f), jnp.sum(r), jnp.sum(r * r), jnp.sum(e), jnp.sum(e * e)])


def _ev_from_sums(s):
  n = s[0]
  var = lambda total, sq: (sq - total * total / jnp.maximum(n, 1.0)) / jnp.maximum(n - 1.0, 1.0)
  return jnp.where(n >= 2, _explained_variance(var(s[3], s[4]), var(s[1], s[2])), 0.0)


def _select(flag, new, old):
  return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


def make_update(policy_apply: Callable, model_config: ModelConfig,
                actor_tx: optax.GradientTransformation, actor_schedule: Callable,
                critic_tx: optax.GradientTransformation | None, critic_schedule: Callable | None,
                config: Config):
  """Builds the pure ``update(state: PPOState, batch) -> (state, metrics)``.

  Args:
    policy_apply: the decoder's ``apply`` (must accept ``return_hidden=True``).
    actor_tx, actor_schedule: the actor's optax chain and learning-rate schedule (shared mode:
      the one optimizer of policy + value head).
    critic_tx, critic_schedule: the separate critic's (unused, may be None, in shared mode).
  The batch (``N`` rows, response length ``T``, ``L = P + T``): ``tokens int32[N, L]``,
  ``attention_mask bool[N, L]``, ``mask bool[N, T]``, float32 ``[N, T]``: ``advantages``,
  ``returns`` (from :func:`prepare`; non-finite = no value target), ``old_logp``, ``ref_logp``,
  ``old_values``, ``sampler_logp`` (optional ``behaviour_logp`` for truncated IS), and
  ``train_actor`` (bool scalar; False = critic warm-up; default True). ``N`` must split into
  ``minibatches × micro_batches`` equal parts.

  Metrics (float32 scalars; means over the optimizer steps of this call unless noted; per-step
  token means are exact under micro-batching, each micro-batch weighted by its token share):
  ``train/loss`` (actor + critic loss, separate; ``L_π + c_v·L_v``, shared), ``actor/loss``,
  ``actor/pg_loss``, ``actor/clipfrac``, ``actor/clipfrac_lower``, ``actor/approx_kl``,
  ``actor/ratio_mean``, ``actor/entropy``, ``actor/kl_ref`` (KL in the loss only),
  ``actor/ratio_first_max_dev`` (first minibatch: 0 on-policy), ``actor/grad_norm``,
  ``actor/learning_rate`` (last step), ``actor/trained`` (the flag), ``critic/loss``,
  ``critic/vf_clipfrac``, ``critic/values_mean``, ``critic/value_error`` (mean (V − Ret)²),
  ``critic/explained_var``, ``critic/grad_norm``, ``critic/learning_rate``,
  ``train/grad_norm`` (shared: whole tree), ``train/sampler_gap_k1``,
  ``train/sampler_gap_abs_max``, ``train/skipped`` (non-finite steps skipped in this call, both
  models), ``actor/skipped``, ``critic/skipped``, ``train/skipped_total``.
  """
  if not config.shared and critic_tx is None:
    raise ValueError("a separate critic needs critic_tx and critic_schedule")
  pg_config = config.pg
  e_count, m_count, a_count = config.epochs, config.minibatches, config.micro_batches
  value_clip = config.value_clip or None

  def actor_terms(logp, entropy, micro, weights, on_policy, key):
    per_token, diag = policy_gradient.token_loss(pg_config, logp, entropy, micro,
                                                 on_policy=on_policy, key=key)
    loss = ops.masked_sum(per_token * weights, micro["mask"])
    ent = ops.masked_sum(sg(entropy) * weights, micro["mask"])
    old = jnp.where(on_policy, sg(logp), micro["old_logp"])
    dev = jnp.max(jnp.where(micro["mask"], jnp.abs(
        jnp.exp(jnp.clip(sg(logp) - old, -20.0, 20.0)) - 1.0), 0.0))
    diag = {k: jnp.asarray(diag.get(k, 0.0), jnp.float32) for k in _ACTOR_DIAG}
    return loss, (diag, ent, dev)

  def critic_terms(values, micro, weights, on_policy):
    vmask = micro["value_mask"]
    old_v = jnp.where(on_policy, sg(values), micro["old_values"])
    per_token, diag = ops.value_loss(values, old_v, micro["returns"], vmask, clip=value_clip)
    loss = ops.masked_sum(per_token * weights, vmask)
    diag = {k: jnp.asarray(diag[k], jnp.float32) for k in _CRITIC_DIAG}
    return loss, (diag, _ev_sums(values, micro["returns"], vmask))

  def separate_loss(params, micro, on_policy, train_actor, key):
    del train_actor  # The actor's step is discarded instead (its loss has no critic coupling).
    actor_params, critic_params = params
    out = policy_gradient.response_logprobs(policy_apply, actor_params, model_config,
                                            micro["tokens"], micro["attention_mask"],
                                            micro["mask"], temperature=config.temperature)
    a_loss, a_aux = actor_terms(out.logp, out.entropy, micro, micro["actor_w"], on_policy, key)
    values = response_values(critic_params, model_config, micro["tokens"],
                             micro["attention_mask"], micro["value_mask"])
    c_loss, c_aux = critic_terms(values, micro, micro["critic_w"], on_policy)
    return a_loss + c_loss, (a_loss, c_loss, a_aux, c_aux)

  def shared_loss(params, micro, on_policy, train_actor, key):
    out, values = shared_logprobs_and_values(
        policy_apply, params, model_config, micro["tokens"], micro["attention_mask"],
        micro["mask"], temperature=config.temperature, value_grad_to_trunk=train_actor)
    values = jnp.where(micro["value_mask"], values, 0.0)
    a_loss, a_aux = actor_terms(out.logp, out.entropy, micro, micro["actor_w"], on_policy, key)
    c_loss, c_aux = critic_terms(values, micro, micro["critic_w"], on_policy)
    total = jnp.where(train_actor, a_loss, 0.0) + config.vf_coef * c_loss
    return total, (a_loss, c_loss, a_aux, c_aux)

  grad_fn = jax.value_and_grad(shared_loss if config.shared else separate_loss, has_aux=True)

  def optimizer_step(state: PPOState, mb, on_policy, train_actor, key):
    n = mb["tokens"].shape[0]
    value_mask = mb["mask"] & jnp.isfinite(mb["returns"])
    fields = dict(mb, value_mask=value_mask,
                  actor_w=ops.aggregation_weights(mb["mask"], config.loss_aggregation,
                                                  norm_constant=config.norm_constant),
                  critic_w=ops.aggregation_weights(value_mask, config.loss_aggregation,
                                                   norm_constant=config.norm_constant))
    micro = jax.tree.map(lambda x: x.reshape((a_count, n // a_count) + x.shape[1:]), fields)
    params = (state.actor.params if config.shared
              else (state.actor.params, state.critic.params))

    # Token-mean diagnostics of a micro-batch weigh by its share of the minibatch's tokens, so
    # their sum is the minibatch's token mean whatever the micro-batching.
    a_tokens = jnp.maximum(jnp.sum(mb["mask"]), 1).astype(jnp.float32)
    c_tokens = jnp.maximum(jnp.sum(value_mask), 1).astype(jnp.float32)

    def micro_step(carry, xs):
      grads_acc, sums, a_diag_acc, c_diag_acc, ev_acc, dev_acc = carry
      mu, i = xs
      (_, (a_loss, c_loss, (a_diag, ent, dev), (c_diag, ev))), grads = grad_fn(
          params, mu, on_policy, train_actor, jax.random.fold_in(key, i))
      share = lambda acc, new, w: jax.tree.map(lambda a, b: a + b * w, acc, new)
      a_share = jnp.sum(mu["mask"]).astype(jnp.float32) / a_tokens
      c_share = jnp.sum(mu["value_mask"]).astype(jnp.float32) / c_tokens
      return (jax.tree.map(jnp.add, grads_acc, grads), sums + jnp.stack([a_loss, c_loss, ent]),
              share(a_diag_acc, a_diag, a_share), share(c_diag_acc, c_diag, c_share),
              ev_acc + ev, jnp.maximum(dev_acc, dev)), None

    zero = jnp.zeros((), jnp.float32)
    init = (jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
            jnp.zeros((3,), jnp.float32), {k: zero for k in _ACTOR_DIAG},
            {k: zero for k in _CRITIC_DIAG}, jnp.zeros((_EV_STATS,), jnp.float32), zero)
    (grads, sums, a_diag, c_diag, ev, dev), _ = jax.lax.scan(
        micro_step, init, (micro, jnp.arange(a_count)))
    grads = update_dtype(grads, params)
    a_loss, c_loss, ent = sums[0], sums[1], sums[2]
    metrics = dict({f"actor/{k}": v for k, v in a_diag.items()},
                   **{f"critic/{k}": v for k, v in c_diag.items()})
    metrics.update({"actor/loss": a_loss, "critic/loss": c_loss, "actor/entropy": ent,
                    "critic/explained_var": _ev_from_sums(ev), "actor/first_dev": dev})
    if config.shared:
      total = jnp.where(train_actor, a_loss, 0.0) + config.vf_coef * c_loss
      finite = jnp.isfinite(total) & tree_all_finite(grads)
      new = guarded_apply(state.actor, grads, actor_tx, finite)
      # Warm-up: only the value head moves; the policy subtree is restored bitwise (AdamW's
      # weight decay would otherwise move it even with zero gradients).
      new = new.replace(params=dict(new.params, policy=_select(
          train_actor, new.params["policy"], state.actor.params["policy"])))
      lr = jnp.asarray(actor_schedule(state.actor.step), jnp.float32)
      skipped = 1.0 - finite.astype(jnp.float32)
      metrics.update({
          "train/loss": a_loss + config.vf_coef * c_loss,
          "train/grad_norm": optax.tree_utils.tree_norm(grads),
          "actor/grad_norm": optax.tree_utils.tree_norm(grads["policy"]),
          "critic/grad_norm": optax.tree_utils.tree_norm(grads["value_head"]),
          "actor/learning_rate": lr, "critic/learning_rate": lr,
          "actor/skipped": skipped, "critic/skipped": skipped, "train/skipped": skipped})
      return PPOState(actor=new, critic=None), metrics
    a_grads, c_grads = grads
    a_finite = jnp.isfinite(a_loss) & tree_all_finite(a_grads)
    c_finite = jnp.isfinite(c_loss) & tree_all_finite(c_grads)
    actor = _select(train_actor, guarded_apply(state.actor, a_grads, actor_tx, a_finite),
                    state.actor)
    critic = guarded_apply(state.critic, c_grads, critic_tx, c_finite)
    a_skip = (train_actor & ~a_finite).astype(jnp.float32)
    c_skip = 1.0 - c_finite.astype(jnp.float32)
    metrics.update({
        "train/loss": a_loss + c_loss,
        "actor/grad_norm": optax.tree_utils.tree_norm(a_grads),
        "critic/grad_norm": optax.tree_utils.tree_norm(c_grads),
        "actor/learning_rate": jnp.asarray(actor_schedule(state.actor.step), jnp.float32),
        "critic/learning_rate": jnp.asarray(critic_schedule(state.critic.step), jnp.float32),
        "actor/skipped": a_skip, "critic/skipped": c_skip, "train/skipped": a_skip + c_skip})
    return PPOState(actor=actor, critic=critic), metrics

  def update(state: PPOState, batch: dict):
    batch = dict(batch)
    train_actor = jnp.asarray(batch.pop("train_actor", True), bool)
    chex.assert_rank([batch["tokens"], batch["attention_mask"], batch["mask"]], 2)
    chex.assert_equal_shape([batch["tokens"], batch["attention_mask"]])
    chex.assert_equal_shape([batch["mask"], batch["advantages"], batch["returns"],
                             batch["old_logp"], batch["ref_logp"], batch["old_values"],
                             batch["sampler_logp"]])
    chex.assert_shape(train_actor, ())
    batch["mask"] = batch["mask"].astype(bool)
    n = batch["tokens"].shape[0]
    if n % (m_count * a_count):
      raise ValueError(f"{n} rows do not split into {m_count} minibatches x {a_count} "
                       "micro-batches")
    # One shuffle for actor and critic, from the state that always steps.
    lead = state.actor if config.shared else state.critic
    key = jax.random.fold_in(lead.rng, lead.step)
    if config.shuffle_minibatches and m_count > 1:
      perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, e), n)
                         for e in range(e_count)])
    else:
      perms = jnp.tile(jnp.arange(n), (e_count, 1))
    order = perms.reshape(e_count * m_count, n // m_count)
    _, gap = ops.truncated_is_weights(batch["old_logp"], batch["sampler_logp"], batch["mask"],
                                      cap=max(config.tis_cap, 1.0))
    cov = ops.covariance_stats(batch["old_logp"], batch["advantages"], batch["mask"],
                               clip_cov_lb=pg_config.clip_cov_lb,
                               clip_cov_ub=pg_config.clip_cov_ub,
                               kl_cov_ratio=pg_config.kl_cov_ratio)

    def body(state, xs):
      rows, i = xs
      mb = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch)
      return optimizer_step(state, mb, i == 0, train_actor, jax.random.fold_in(key, 1000 + i))

    state, per_step = jax.lax.scan(body, state, (order, jnp.arange(e_count * m_count)))
    mean = lambda k: jnp.mean(per_step[k])
    metrics = {k: mean(k) for k in (
        "train/loss", "actor/loss", "actor/entropy", "actor/clipfrac", "actor/clipfrac_lower",
        "actor/approx_kl", "actor/ratio_mean", "actor/grad_norm", "critic/loss",
        "critic/vf_clipfrac", "critic/explained_var", "critic/grad_norm")}
    metrics.update({
        "actor/pg_loss": mean("actor/pg_loss_mean"),
        "critic/values_mean": mean("critic/value_mean"),
        "critic/value_error": mean("critic/value_error"),
        "actor/ratio_first_max_dev": per_step["actor/first_dev"][0],
        "actor/learning_rate": per_step["actor/learning_rate"][-1],
        "critic/learning_rate": per_step["critic/learning_rate"][-1],
        "actor/trained": train_actor.astype(jnp.float32),
        "actor/skipped": jnp.sum(per_step["actor/skipped"]),
        "critic/skipped": jnp.sum(per_step["critic/skipped"]),
        "train/skipped": jnp.sum(per_step["train/skipped"]),
        "train/skipped_total": (state.actor.skipped_steps if config.shared else
                                state.actor.skipped_steps + state.critic.skipped_steps
                                ).astype(jnp.float32),
        "train/sampler_gap_k1": gap["sampler_gap_k1"],
        "train/sampler_gap_abs_max": gap["sampler_gap_abs_max"],
        **{f"actor/{k}": v for k, v in cov.items()},
    })
    if config.shared:
      metrics["train/grad_norm"] = mean("train/grad_norm")
    if pg_config.kl_in_loss:
      metrics["actor/kl_ref"] = mean("actor/kl_loss")
    if config.tis_cap:
      metrics["actor/is_weight_mean"] = mean("actor/is_weight_mean")
      metrics["actor/is_capped_fraction"] = mean("actor/is_capped_fraction")
    if config.policy_loss == "gspo":
      metrics["actor/seq_ratio_mean"] = mean("actor/seq_ratio_mean")
    return state, metrics

  return update


__all__ = ["Config", "PPOState", "actor_trains_at", "config_from", "init_state", "make_update",
           "policy_params", "prepare", "response_values", "rollout_logprobs_and_values",
           "shared_logprobs_and_values", "state_shardings"]
