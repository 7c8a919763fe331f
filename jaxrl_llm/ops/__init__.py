"""Pure loss maths (layer 1): arrays in, arrays out, no models or configs.

This foundation ships what SFT needs; the ops-library issue fills in the RL family.
"""

from jaxrl_llm.ops.basic import (aggregate_loss, aggregation_weights, masked_mean, masked_sum,
                                 sft_token_nll, token_logprobs)

__all__ = ["aggregate_loss", "aggregation_weights", "masked_mean", "masked_sum", "sft_token_nll", "token_logprobs"]
