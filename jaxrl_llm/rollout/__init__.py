"""The rollout engine (layer 3): jitted KV-cache sampling with exact log-probs."""

from jaxrl_llm.rollout.sampler import (Rollout, Sampler, SamplingConfig, generate, pad_prompts,
                                       sample_tokens, truncate_logits, validate_request)

__all__ = ["Rollout", "Sampler", "SamplingConfig", "generate", "pad_prompts", "sample_tokens",
           "truncate_logits", "validate_request"]
