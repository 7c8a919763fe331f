"""Layer 0: the fused log-softmax / entropy / KL core. Knows nothing of models or algorithms.

``fused_linear_logprobs(h, W, targets)`` never materialises ``[N, V]`` logits;
``fused_logits_logprobs(logits, targets)`` is the row-wise fused variant for callers that already
have logits. See :mod:`jaxrl_llm.kernels.core` for the paths and the sharding scheme.
``linear_token_loss(h, W, targets, loss_fn, aux)`` (:mod:`jaxrl_llm.kernels.onepass`) is the
one-pass variant for token-local losses: value and gradient in three matmuls.
"""

from jaxrl_llm.kernels.blocks import BlockSizes
from jaxrl_llm.kernels.core import (DEFAULT_IMPL, IMPLS, LogProbs, default_impl,
                                    fused_linear_logprobs, fused_logits_logprobs)
from jaxrl_llm.kernels.onepass import linear_token_loss, linear_token_loss_reference
from jaxrl_llm.kernels.reference import reference_from_logits, reference_linear, transform_logits

__all__ = ["BlockSizes", "DEFAULT_IMPL", "IMPLS", "LogProbs", "default_impl",
           "fused_linear_logprobs", "fused_logits_logprobs", "linear_token_loss",
           "linear_token_loss_reference", "reference_from_logits",
           "reference_linear", "transform_logits"]
