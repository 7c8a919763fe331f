"""A reasoning task with step-by-step teacher traces: multi-operand integer arithmetic.

A problem is a left-to-right chain of ``+`` / ``-`` (and, if asked, ``*``) over small integers,
e.g. ``"17+25-9="``. The programmatic teacher writes one intermediate equation per step and then
the answer, in the policy's own alphabet (no newlines, so the character tokenizer covers it)::

    17+25-9=      ->     17+25=42;42-9=33;Answer: 33

``*`` binds tighter than ``+`` / ``-``: the teacher first writes every product (left to right),
then folds the sums, so every line is a single two-operand equation the model can check.

Two levels share one generator: **easy** problems have ``easy_operands`` operands and **hard**
ones ``hard_operands`` (longer chains of the same steps, which a policy warm-started on easy
traces rarely finishes correctly). Every split of every level holds distinct problems, and no
problem appears in two splits (problems are drawn without replacement from one seeded stream).

Rows: ``{"prompt", "answer" (the final integer as text), "demonstration" (the teacher trace),
"level"}``. :func:`final_answer` is the verifier: the integer after the last ``Answer:``; the
teacher's traces pass it on every row (tested).
"""

from __future__ import annotations

import random
import re
from typing import Sequence

SPLITS = ("train", "validation", "test")
ANSWER_TAG = "Answer:"
_ANSWER = re.compile(r"Answer:\s*([+-]?\d+)\s*$")
_STEP = re.compile(r"([+-]?\d+)([+\-*])(\d+)=([+-]?\d+)")


def solve(operands: Sequence[int], operators: Sequence[str]) -> tuple[list[str], int]:
  """The teacher: ``(steps, value)`` of ``operands[0] op operators[0] operands[1] ...``.

  Products first (left to right), then sums and differences left to right; each step is one
  ``"a<op>b=c"`` equation.
  """
  if len(operators) != len(operands) - 1 or not operands:
    raise ValueError("need one operator between each pair of operands")
  steps: list[str] = []
  values, ops = [int(operands[0])], []
  for op, x in zip(operators, operands[1:]):
    if op == "*":
      product = values[-1] * int(x)
      steps.append(f"{values[-1]}*{x}={product}")
      values[-1] = product
    else:
      ops.append(op)
      values.append(int(x))
  total = values[0]
  for op, x in zip(ops, values[1:]):
    new = total + x if op == "+" else total - x
    steps.append(f"{total}{op}{x}={new}")
    total = new
  return steps, total


def demonstration(operands: Sequence[int], operators: Sequence[str]) -> str:
  """The teacher trace: the steps joined by ``;`` and ``Answer: <value>``."""
  steps, value = solve(operands, operators)
  return ";".join(steps + [f"{ANSWER_TAG} {value}"])


def prompt_text(operands: Sequence[int], operators: Sequence[str]) -> str:
  """``"17+25-9="``."""
  out = str(operands[0])
  for op, x in zip(operators, operands[1:]):
    out += f"{op}{x}"
  return out + "="


def final_answer(text: str) -> int | None:
  """The verifier's extraction: the integer after the last ``Answer:`` (at the end of the text,
  surrounding whitespace allowed), or None when there is none. Never raises."""
  if not isinstance(text, str):
    return None
  m = _ANSWER.search(text[-200:])
  if m is None:
    return None
  try:
    return int(m.group(1))
  except ValueError:
    return None


def trace_steps(text: str) -> tuple[str, ...]:
  """The equations of a trace, normalised (``"a+b=c"`` strings in order): RFT's identity of a
  reasoning path (docs/algorithms.md §15: two paths are the same when they hold the same list of
  equations)."""
  if not isinstance(text, str):
    return ()
  return tuple("".join(m) for m in ((a, o, b, "=", c) for a, o, b, c in _STEP.findall(text)))


def generate(sizes: dict[str, dict[str, int]], *, seed: int, easy_operands: int = 3,
             hard_operands: int = 5, max_operand: int = 20, operators: str = "+-",
             hard_max_operand: int = 0) -> dict[str, list[dict[str, str]]]:
  """Rows per split and level: ``sizes = {"easy": {"train": n, ...}, "hard": {...}}``.

  Operands are drawn from ``[0, max_operand]`` (the hard level: ``[0, hard_max_operand]`` when
  that is set), so a hard problem can be longer and use larger numbers than any easy one.

  Returns ``{"train": [...], "validation": [...], "test": [...], "train_hard": [...], ...}``
  (the hard level's splits carry a ``_hard`` suffix). Deterministic in ``seed``.
  """
  if not operators or set(operators) - set("+-*"):
    raise ValueError(f"operators must be a non-empty subset of '+-*', got {operators!r}")
  if not 2 <= easy_operands <= hard_operands:
    raise ValueError(f"need 2 <= easy_operands <= hard_operands, got {easy_operands}, "
                     f"{hard_operands}")
  rng = random.Random(seed)
  seen: set[str] = set()
  out: dict[str, list[dict[str, str]]] = {}
  for level, k in (("easy", easy_operands), ("hard", hard_operands)):
    top = hard_max_operand if level == "hard" and hard_max_operand else max_operand
    space = (top + 1) ** k * len(operators) ** (k - 1)
    wanted = sum(sizes.get(level, {}).values())
    if wanted > space // 2:
      raise ValueError(f"{wanted} distinct {level} problems asked of a space of {space}; raise "
                       "the operand count or max_operand")
    for split in SPLITS:
      rows = []
      while len(rows) < sizes.get(level, {}).get(split, 0):
        operands = [rng.randint(0, top) for _ in range(k)]
        ops = [rng.choice(operators) for _ in range(k - 1)]
        prompt = prompt_text(operands, ops)
        if prompt in seen:
          continue
        seen.add(prompt)
        steps, value = solve(operands, ops)
        rows.append({"prompt": prompt, "answer": str(value),
                     "demonstration": ";".join(steps + [f"{ANSWER_TAG} {value}"]),
                     "level": level})
      out[split if level == "easy" else f"{split}_hard"] = rows
  return out


__all__ = ["ANSWER_TAG", "demonstration", "final_answer", "generate", "prompt_text", "solve",
           "trace_steps"]
