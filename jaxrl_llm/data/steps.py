"""Step-labelled solutions for process reward models (docs/algorithms.md §18).

A solution is a list of steps joined by a delimiter; each step may carry a label: hard (1 / 0) or
soft (a probability that the step is right, e.g. Math-Shepherd's fraction of completions from the
prefix that reach the answer), or none (unlabelled: not trained on). The label of a step sits on
the token that holds the step's **last character, its delimiter included**, found through the
tokenizer's character offsets -- never by counting token ids, so a token that merges the end of a
step with the delimiter (``".\\n"``) still gets the step's label, and the next step's label is not
shifted.

Rows (user JSONL, PRM800K-like): ``{"prompt": str, "steps": [str, ...], "labels": [...]}`` with
labels ``1`` / ``true`` (right), ``0`` / ``false`` or ``-1`` (wrong), a float in ``[0, 1]`` (soft),
or ``null`` (unlabelled). PRM800K's three-way ratings map ``1 → 1``, ``-1 → 0`` and the neutral
``0`` as ``neutral`` says (``"positive"``, ``"negative"`` or ``"drop"``) when ``ratings=True``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from jaxrl_llm.data.pipeline import BadRowError


@dataclasses.dataclass(frozen=True)
class StepSolution:
  """One solution: ``prompt``, ``steps`` (non-empty texts) and ``labels`` (float in [0, 1] or
  None per step)."""

  prompt: str
  steps: tuple[str, ...]
  labels: tuple[float | None, ...]


def _label(value: Any, where: str, *, ratings: bool, neutral: str) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float)) and math.isfinite(value):
    if ratings:
      if value not in (-1, 0, 1):
        raise BadRowError(f"{where}: a rating must be -1, 0 or 1, got {value!r}")
      if value == 0:
        return {"positive": 1.0, "negative": 0.0, "drop": None}[neutral]
      return 1.0 if value == 1 else 0.0
    if value == -1:
      return 0.0
    if 0.0 <= value <= 1.0:
      return float(value)
  raise BadRowError(f"{where}: expected 1 / 0 / -1, true / false, a probability in [0, 1] or "
                    f"null, got {value!r}")


def parse_step_row(row: Any, index: int, split: str, *, ratings: bool = False,
                   neutral: str = "positive") -> StepSolution:
  """Validates one ``{"prompt", "steps", "labels"}`` row.

  Empty or whitespace-only steps (consecutive delimiters) are merged into the step before them,
  whose label becomes the smaller of the two (a wrong part makes the merged step wrong).

  Raises:
    BadRowError: naming the split, row index and field.
  """
  if neutral not in ("positive", "negative", "drop"):
    raise ValueError(f"neutral must be 'positive', 'negative' or 'drop', got {neutral!r}")
  if not isinstance(row, dict):
    raise BadRowError(f"{split} row {index}: expected a mapping with fields prompt, steps, labels")
  for field in ("prompt", "steps", "labels"):
    if field not in row:
      raise BadRowError(f"{split} row {index} field '{field}': missing")
  prompt, steps, labels = row["prompt"], row["steps"], row["labels"]
  if not isinstance(prompt, str) or not prompt:
    raise BadRowError(f"{split} row {index} field 'prompt': expected a non-empty string")
  if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
    raise BadRowError(f"{split} row {index} field 'steps': expected a non-empty list of strings")
  if not isinstance(labels, list) or len(labels) != len(steps):
    raise BadRowError(f"{split} row {index} field 'labels': expected a list with one label per "
                      f"step ({len(steps)}), got "
                      f"{len(labels) if isinstance(labels, list) else type(labels).__name__}")
  texts: list[str] = []
  values: list[float | None] = []
  for k, (text, value) in enumerate(zip(steps, labels)):
    label = _label(value, f"{split} row {index} field 'labels'[{k}]", ratings=ratings,
                   neutral=neutral)
    if not text.strip() and texts:
      texts[-1] = texts[-1] + text
      if label is not None:
        values[-1] = label if values[-1] is None else min(values[-1], label)
      continue
    texts.append(text)
    values.append(label)
  if not texts[0].strip():
    raise BadRowError(f"{split} row {index} field 'steps': every step is empty")
  return StepSolution(prompt, tuple(texts), tuple(values))


def step_end_chars(steps: Sequence[str], delimiter: str) -> tuple[str, list[int]]:
  """The solution text (each step followed by ``delimiter``) and the character index just past
  each step's delimiter."""
  text, ends = "", []
  for step in steps:
    text += step + delimiter
    ends.append(len(text))
  return text, ends


@dataclasses.dataclass
class EncodedSteps:
  """One tokenised solution: ``ids`` (response token ids, EOS not added), ``positions`` int
  ``[S]`` (the token of each step's last character; −1 when the step was cut off by the length
  limit), ``labels`` float ``[S]`` (NaN = unlabelled)."""

  ids: list[int]
  positions: np.ndarray
  labels: np.ndarray


def encode_steps(tokenizer, solution: StepSolution, *, delimiter: str = "\n",
                 max_tokens: int | None = None) -> EncodedSteps:
  """Tokenises a solution and places each step's label on the token that contains the step's
  last character (its delimiter), by character offsets.

  A step whose label token lies beyond ``max_tokens`` (a truncated solution) is unlabelled
  (position −1). A token that merges the delimiter with what follows still carries the step's
  label: its hidden state has read the whole step.
  """
  text, ends = step_end_chars(solution.steps, delimiter)
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
  if max_tokens is not None:
    ids, offsets = ids[:max_tokens], offsets[:max_tokens]
  positions = np.full(len(ends), -1, np.int64)
  labels = np.full(len(ends), np.nan, np.float32)
  # Each step's last character is ends[k] - 1; find the token whose span holds it.
  starts = np.asarray([s for s, _ in offsets], np.int64) if offsets else np.zeros(0, np.int64)
  stops = np.asarray([e for _, e in offsets], np.int64) if offsets else np.zeros(0, np.int64)
  for k, end in enumerate(ends):
    hit = np.nonzero((starts <= end - 1) & (stops >= end))[0]
    if not len(hit):
      continue
    t = int(hit[0])
    positions[k] = t
    if solution.labels[k] is not None:
      labels[k] = solution.labels[k]
  return EncodedSteps(ids, positions, labels)


def chain_step_labels(prompt: str, trace: str) -> StepSolution:
  """Exact step labels for a trace of the reasoning task (:mod:`jaxrl_llm.data.reasoning`): a step
  ``a<op>b=c`` is right when the arithmetic holds, it continues from the previous result and it
  uses the next operand and operator of the problem; the final ``Answer:`` step is right when it
  states the problem's value. Steps after the first wrong one are wrong too (they build on it).
  """
  from jaxrl_llm.data.reasoning import _STEP, solve

  body = prompt.rstrip("=").strip()
  tokens, num, ops_ = [], "", []
  for ch in body:
    if ch.isdigit():
      num += ch
    else:
      tokens.append(int(num) if num else 0)
      num = ""
      ops_.append(ch)
  tokens.append(int(num) if num else 0)
  want_steps, value = solve(tokens, ops_)
  parts = trace.split(";")
  labels: list[float | None] = []
  ok = True
  for k, part in enumerate(parts):
    m = _STEP.fullmatch(part.strip())
    if m is not None:
      ok = ok and k < len(want_steps) and part.strip() == want_steps[k]
    else:
      from jaxrl_llm.data.reasoning import final_answer

      ok = ok and final_answer(part) == value and k == len(want_steps)
    labels.append(1.0 if ok else 0.0)
  return StepSolution(prompt, tuple(p for p in parts), tuple(labels))


__all__ = ["EncodedSteps", "StepSolution", "chain_step_labels", "encode_steps", "parse_step_row",
           "step_end_chars"]
