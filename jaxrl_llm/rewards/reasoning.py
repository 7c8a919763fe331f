"""Verifier rewards for tasks whose traces end in ``Answer: <integer>`` (the reasoning task of
:mod:`jaxrl_llm.data.reasoning`, or any task with that answer line).

* ``final_answer``: 1.0 when the integer after the last ``Answer:`` equals the row's answer,
  else 0.
* ``final_answer_partial``: ReFT's terminal reward (docs/algorithms.md §14): 1.0 correct, 0.1 when
  an answer can be extracted but is wrong, 0 when none can.
"""

from __future__ import annotations

import numpy as np

from jaxrl_llm.data.reasoning import final_answer


def _gold(answer) -> int | None:
  try:
    return int(str(answer).strip())
  except ValueError:
    return final_answer(str(answer))


def final_answer_match(prompts: list[str], completions: list[str], *, answer: list[str],
                       **_: object) -> np.ndarray:
  """1.0 where the completion's final ``Answer:`` integer equals ``answer`` (an integer, or a
  trace ending in one); else 0.

  Args:
    prompts, completions: ``B`` strings; answer: ``B`` gold answers.
  Returns:
    float32 ``[B]``.
  """
  out = []
  for c, a in zip(completions, answer):
    pred, gold = final_answer(c), _gold(a)
    out.append(float(pred is not None and gold is not None and pred == gold))
  return np.asarray(out, np.float32)


def final_answer_partial(prompts: list[str], completions: list[str], *, answer: list[str],
                         partial: float = 0.1, **_: object) -> np.ndarray:
  """ReFT's reward: 1.0 correct, ``partial`` (0.1) when an answer is extracted but wrong, 0 when
  nothing can be extracted (docs/algorithms.md §14). float32 ``[B]``."""
  out = []
  for c, a in zip(completions, answer):
    pred, gold = final_answer(c), _gold(a)
    out.append(0.0 if pred is None else 1.0 if pred == gold else partial)
  return np.asarray(out, np.float32)
