"""Reward functions of the synthetic ``sorted_digits`` preference task (docs/algorithms.md §17 demos).

The hidden property -- an answer's digits are sorted ascending and there are as many as the prompt
``"n=<n>:"`` asks for -- is what human-like comparisons in the task prefer. The RLHF pipeline never
trains on it: it is the *metric* (``reward.accuracy`` with weight 0) that shows whether a policy
optimised against a learned reward model really moved towards what the comparisons meant.
"""

from __future__ import annotations

import numpy as np

from jaxrl_llm.data.sorted_digits import has_hidden_property, hidden_score


def sorted_digits_property(prompts: list[str], completions: list[str], **_: object) -> np.ndarray:
  """1.0 where the completion has the hidden property for its prompt, else 0. float32 ``[B]``."""
  return np.asarray([float(has_hidden_property(c.strip(), p.strip()))
                     for p, c in zip(prompts, completions)], np.float32)


def sorted_digits_score(prompts: list[str], completions: list[str], **_: object) -> np.ndarray:
  """The graded hidden score in [0, 1] (fraction of non-decreasing adjacent digits). ``[B]``."""
  return np.asarray([hidden_score(c.strip(), p.strip()) for p, c in zip(prompts, completions)],
                    np.float32)
