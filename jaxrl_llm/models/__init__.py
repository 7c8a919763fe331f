"""Models (layer 2): the decoder and helpers to build sharded parameters."""

from jaxrl_llm.models.decoder import (Decoder, apply_rope, decode_step, init_cache, lm_head_weight,
                                      positions_from_mask, prefill, rope_inv_freq)
from jaxrl_llm.models.init import abstract_params, init_params, param_logical_axes

__all__ = ["Decoder", "abstract_params", "apply_rope", "decode_step", "init_cache", "init_params",
           "lm_head_weight", "param_logical_axes", "positions_from_mask", "prefill",
           "rope_inv_freq"]
