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
  """One solution: ``prompt``, ``steps`` (non-empty texts), ``labels`` (float in [0, 1] or
  None per step) and ``outcome`` (is the final answer right: 1 / 0, None = unknown; an outcome
  reward model's label)."""

  prompt: str
  steps: tuple[str, ...]
  labels: tuple[float | None, ...]
  outcome: float | None = None

  @property
  def resolved_outcome(self) -> float | None:
    """``outcome``, or the last step's label when the row gives none (a hard label: > 0)."""
    if self.outcome is not None:
      return self.outcome
    last = self.labels[-1]
    return None if last is None else float(last > 0)


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
  outcome = row.get("outcome")
  if outcome is not None:
    if isinstance(outcome, bool) or outcome in (0, 1):
      outcome = float(outcome)
    else:
      raise BadRowError(f"{split} row {index} field 'outcome': expected true / false / 1 / 0 or "
                        f"null, got {outcome!r}")
  return StepSolution(prompt, tuple(texts), tuple(values), outcome)


def step_end_chars(steps: Sequence[str], delimiter: str, *, final_delimiter: bool = True
                   ) -> tuple[str, list[int]]:
  """The solution text (each step followed by ``delimiter``; the last one too unless
  ``final_delimiter`` is false, as in traces like ``"a;b;Answer: 3"``) and the character index
  just past each step (its delimiter included)."""
  text, ends = "", []
  for k, step in enumerate(steps):
    text += step + (delimiter if final_delimiter or k < len(steps) - 1 else "")
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
                 max_tokens: int | None = None, final_delimiter: bool = True) -> EncodedSteps:
  """Tokenises a solution and places each step's label on the token that contains the step's
  last character (its delimiter), by character offsets.

  A step whose label token lies beyond ``max_tokens`` (a truncated solution) is unlabelled
  (position −1). A token that merges the delimiter with what follows still carries the step's
  label: its hidden state has read the whole step.
  """
  text, ends = step_end_chars(solution.steps, delimiter, final_delimiter=final_delimiter)
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


def read_step_jsonl(path: str, split: str, *, ratings: bool = False, neutral: str = "positive",
                    on_bad_row: str = "raise") -> tuple[list[StepSolution], int]:
  """Step-labelled rows of one JSONL file (:func:`parse_step_row` each).

  Returns:
    (solutions, rows skipped) -- ``on_bad_row="skip"`` counts bad rows instead of raising.
  """
  import json

  out, skipped = [], 0
  with open(path, encoding="utf-8") as f:
    for index, line in enumerate(f):
      if not line.strip():
        continue
      try:
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise BadRowError(f"{split} row {index}: not valid JSON ({e.msg})") from None
        out.append(parse_step_row(row, index, split, ratings=ratings, neutral=neutral))
      except BadRowError:
        if on_bad_row != "skip":
          raise
        skipped += 1
  return out, skipped


@dataclasses.dataclass
class EncodedStepSplit:
  """A tokenised split of step-labelled solutions, one sequence ``BOS prompt solution EOS`` per
  row.

  Attributes:
    tokens: per row, int32 token ids (EOS dropped when the row was cut at the length limit).
    prompt_lengths: int ``[N]`` tokens before the solution (BOS + prompt).
    positions: per row, int ``[S_i]`` absolute index of each step's label token (−1: cut off).
    labels: per row, float32 ``[S_i]`` (NaN = unlabelled).
    outcome: float32 ``[N]`` solution correctness (NaN = unknown, or the row was cut off).
    prompts: per row, the prompt text (rows with the same prompt form a best-of-N group).
    skipped: rows dropped as malformed (``data.on_bad_row="skip"``).
  """

  tokens: list
  prompt_lengths: np.ndarray
  positions: list
  labels: list
  outcome: np.ndarray
  prompts: list
  skipped: int = 0

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def max_steps(self) -> int:
    return max((len(p) for p in self.positions), default=1)

  def length(self, i: int) -> int:
    return len(self.tokens[i])

  @property
  def needed(self) -> list[int]:
    """Tokens each row takes (for ``data.length_buckets="auto"``)."""
    return [len(t) for t in self.tokens]


def encode_step_split(solutions: Sequence[StepSolution], tokenizer, *, split: str, max_len: int,
                      delimiter: str = "\n", final_delimiter: bool = True,
                      on_bad_row: str = "raise", skipped: int = 0) -> EncodedStepSplit:
  """Tokenises solutions as ``BOS prompt solution EOS`` within ``max_len`` tokens.

  A solution longer than the room left is cut: steps whose label token falls beyond it are
  unlabelled, and the row's outcome is unknown (its answer was never read). A prompt that leaves
  no room for a solution token is a bad row (raised, or skipped and counted).
  """
  tokens, plens, positions, labels, outcome, prompts = [], [], [], [], [], []
  for index, sol in enumerate(solutions):
    prompt_ids = [tokenizer.bos_token_id] + list(
        tokenizer(sol.prompt, add_special_tokens=False)["input_ids"])
    room = max_len - len(prompt_ids) - 1  # EOS
    if room < 1:
      if on_bad_row == "skip":
        skipped += 1
        continue
      raise BadRowError(f"{split} row {index} field 'prompt': {len(prompt_ids)} tokens leave no "
                        f"room for a solution within {max_len} (raise model.max_seq_len or the "
                        "data.length_buckets, or set data.on_bad_row=skip)")
    enc = encode_steps(tokenizer, sol, delimiter=delimiter, final_delimiter=final_delimiter)
    cut = len(enc.ids) > room
    if cut:  # a step whose label token lies past the room is unlabelled (as max_tokens does)
      enc = EncodedSteps(enc.ids[:room], np.where(enc.positions < room, enc.positions, -1),
                         np.where(enc.positions < room, enc.labels, np.nan).astype(np.float32))
    ids = prompt_ids + enc.ids + ([] if cut else [tokenizer.eos_token_id])
    pos = np.where(enc.positions >= 0, enc.positions + len(prompt_ids), -1)
    tokens.append(np.asarray(ids, np.int32))
    plens.append(len(prompt_ids))
    positions.append(pos.astype(np.int32))
    labels.append(enc.labels)
    o = sol.resolved_outcome
    outcome.append(np.nan if (o is None or cut) else o)
    prompts.append(sol.prompt)
  return EncodedStepSplit(tokens, np.asarray(plens, np.int32), positions, labels,
                          np.asarray(outcome, np.float32), prompts, skipped)


def step_batch(split: EncodedStepSplit, idx: Sequence[int], length: int, num_steps: int,
               pad_id: int) -> dict[str, np.ndarray]:
  """Right-padded arrays of rows ``idx``: ``tokens int32[B, L]``, ``attention_mask bool[B, L]``,
  ``response_mask bool[B, L]`` (solution tokens, EOS included), ``last_index int32[B]``,
  ``positions int32[B, S]`` (−1 pad), ``labels float32[B, S]`` (NaN pad), ``outcome
  float32[B]``."""
  b = len(idx)
  tokens = np.full((b, length), pad_id, np.int32)
  attention = np.zeros((b, length), bool)
  response = np.zeros((b, length), bool)
  positions = np.full((b, num_steps), -1, np.int32)
  labels = np.full((b, num_steps), np.nan, np.float32)
  last = np.zeros(b, np.int32)
  for r, i in enumerate(idx):
    ids = split.tokens[i]
    n = len(ids)
    tokens[r, :n] = ids
    attention[r, :n] = True
    response[r, split.prompt_lengths[i]:n] = True
    last[r] = n - 1
    s = len(split.positions[i])
    positions[r, :s] = split.positions[i]
    labels[r, :s] = split.labels[i]
  return {"tokens": tokens, "attention_mask": attention, "response_mask": response,
          "last_index": last, "positions": positions, "labels": labels,
          "outcome": split.outcome[np.asarray(idx)]}


def chain_step_labels(prompt: str, trace: str) -> StepSolution:
  """Exact step labels for a trace of the reasoning task (:mod:`jaxrl_llm.data.reasoning`): a step
  ``a<op>b=c`` is right when the arithmetic holds, it continues from the previous result and it
  uses the next operand and operator of the problem; the final ``Answer:`` step is right when it
  states the problem's value. Steps after the first wrong one are wrong too (they build on it).
  The outcome is whether the final answer is right (it may be, by luck, after a wrong step).
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
  from jaxrl_llm.data.reasoning import final_answer

  outcome = 1.0 if final_answer(trace) == value else 0.0
  return StepSolution(prompt, tuple(p for p in parts), tuple(labels), outcome)


__all__ = ["EncodedStepSplit", "EncodedSteps", "StepSolution", "chain_step_labels",
           "encode_step_split", "encode_steps", "parse_step_row", "read_step_jsonl",
           "step_batch", "step_end_chars"]
