"""Models (layer 2): the decoder and helpers to build sharded parameters."""

from jaxrl_llm.models.decoder import Decoder, apply_rope, lm_head_weight, positions_from_mask
from jaxrl_llm.models.init import abstract_params, init_params, param_logical_axes

__all__ = ["Decoder", "abstract_params", "apply_rope", "init_params", "lm_head_weight",
           "param_logical_axes", "positions_from_mask"]
