"""Models (layer 2): one configurable decoder for the Llama / Qwen / Mistral / Gemma / GPT-2
families, KV-cache decoding, value and reward heads, sharded init, and Hugging Face interop
(:mod:`jaxrl_llm.models.hf`: ``load_hf`` / ``save_hf``)."""

from jaxrl_llm.models.decoder import (Decoder, apply_rope, decode_step, init_cache, lm_head,
                                      lm_head_weight, logprob_kwargs, positions_from_mask, prefill,
                                      rope_inv_freq)
from jaxrl_llm.models.heads import (init_from_policy, init_head, last_token_rewards, rewards_at,
                                    token_values)
from jaxrl_llm.models.init import abstract_params, init_params, param_logical_axes
from jaxrl_llm.models.presets import tiny
from jaxrl_llm.models import lora  # noqa: E402  (needs init, imported above)

__all__ = ["init_from_policy", "init_head", "last_token_rewards", "rewards_at", "tiny",
           "token_values", "Decoder", "abstract_params", "apply_rope", "decode_step", "init_cache",
           "init_params",
           "lm_head", "lm_head_weight", "logprob_kwargs", "param_logical_axes", "positions_from_mask", "prefill",
           "rope_inv_freq", "lora"]
