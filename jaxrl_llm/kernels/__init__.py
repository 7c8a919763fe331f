"""Layer 0: the fused log-softmax / entropy / KL core. Knows nothing of models or algorithms.

``fused_linear_logprobs(h, W, targets)`` never materialises ``[N, V]`` logits;
``fused_logits_logprobs(logits, targets)`` is the row-wise fused variant for callers that already
have logits. See :mod:`jaxrl_llm.kernels.core` for the paths and the sharding scheme.
"""

from jaxrl_llm.kernels.blocks import BlockSizes
from jaxrl_llm.kernels.core import (DEFAULT_IMPL, IMPLS, LogProbs, default_impl,
                                    fused_linear_logprobs, fused_logits_logprobs)
from jaxrl_llm.kernels.reference import reference_from_logits, reference_linear, transform_logits

__all__ = ["BlockSizes", "DEFAULT_IMPL", "IMPLS", "LogProbs", "default_impl",
           "fused_linear_logprobs", "fused_logits_logprobs", "reference_from_logits",
           "reference_linear", "transform_logits"]
