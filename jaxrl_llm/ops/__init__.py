"""Pure loss maths (layer 1): arrays in, arrays out; no models, configs or state.

Semantics follow docs/algorithms.md. Token data is ``[B, T]`` with a mask; padded slots may hold
garbage (even NaN) and never leak into a value or a gradient. Per-token functions return
``(per_token, diagnostics)``; reduction is a separate, named call (:func:`aggregate_loss`).

Compose a loss in plain code::

  adv, _ = ops.grpo_advantages(scores, group_ids, mask, num_groups=B)
  pg, diag = ops.ppo_clip_loss(logp, old_logp, adv, mask, clip_low=0.2, clip_high=0.28)
  kl = ops.kl_penalty(logp, ref_logp, "k3", mask=mask)
  loss = ops.aggregate_loss(pg + 0.001 * kl, mask, "token-mean")
"""

from jaxrl_llm.ops.advantages import (SINGLETON_POLICIES, GroupStats, discounted_returns,
                                      drgrpo_advantages, gae_advantages, group_stats,
                                      grpo_advantages, last_token_index, pass_at_k,
                                      prime_advantages, reinforce_pp_advantages,
                                      reinforce_pp_baseline_advantages, remax_advantages,
                                      rloo_advantages, scores_to_token_rewards)
from jaxrl_llm.ops import process  # step-level (process-reward) maths: ops.process.prm_loss, ...
from jaxrl_llm.ops.basic import (AGGREGATION_MODES, aggregate_loss, aggregation_weights,
                                 entropy_from_logits, full_kl_from_logits, logprobs_from_logits,
                                 masked_mean, masked_sum, masked_var, masked_whiten, sft_loss,
                                 sft_token_nll, token_logprobs)
from jaxrl_llm.ops.kl import (KL_KINDS, AdaptiveKLController, FixedKLController, KLController,
                              KLControllerState, kl_penalty)
from jaxrl_llm.ops.policy import (clip_cov_loss, covariance_stats, gspo_loss, kl_cov_loss,
                                  luffy_loss, ppo_clip_loss, srft_loss, token_covariance,
                                  truncated_is_weights, value_loss)
from jaxrl_llm.ops.preference import (DPO_KINDS, bradley_terry_loss, dpo_loss,
                                      plackett_luce_loss, pointwise_reward_loss)

__all__ = [
    "AGGREGATION_MODES", "AdaptiveKLController", "DPO_KINDS", "FixedKLController", "GroupStats",
    "process",
    "KLController", "KLControllerState", "KL_KINDS", "SINGLETON_POLICIES", "aggregate_loss",
    "aggregation_weights", "bradley_terry_loss", "clip_cov_loss", "discounted_returns",
    "dpo_loss", "drgrpo_advantages", "entropy_from_logits", "full_kl_from_logits",
    "gae_advantages", "group_stats", "grpo_advantages", "gspo_loss", "kl_cov_loss",
    "kl_penalty", "last_token_index", "logprobs_from_logits", "luffy_loss", "masked_mean",
    "masked_sum", "srft_loss", "masked_var", "masked_whiten", "pass_at_k", "plackett_luce_loss",
    "pointwise_reward_loss", "ppo_clip_loss", "prime_advantages", "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages", "remax_advantages", "rloo_advantages",
    "scores_to_token_rewards", "sft_loss", "sft_token_nll", "token_covariance", "covariance_stats",
    "token_logprobs", "truncated_is_weights", "value_loss",
]
