"""Countdown (TinyZero-style) reward and a synthetic problem generator (docs/algorithms.md §22.3).

A problem is a list of integers ``nums`` and a ``target``; the model answers with an arithmetic
expression in ``<answer>…</answer>`` that uses the numbers and evaluates to the target.

* **Extraction**: the last complete ``<answer>…</answer>`` pair in the response text itself (no
  assistant marker is required, unlike the verl/TinyZero port); ``last_line_only=True`` restores
  their "search only the last line" behaviour.
* **Parsing**: an own recursive-descent parser over integer and decimal literals, ``+ - * /``,
  unary minus, parentheses and whitespace. Nothing is ``eval``-ed; any other character (``**``,
  names, ``^``) makes the expression invalid. Input length (200 characters) and nesting depth (32)
  are bounded, so every check is fast and small.
* **Evaluation**: exact rational arithmetic with :class:`fractions.Fraction`; division by zero
  makes the expression invalid.
* **Numbers**: by default the multiset of literals must equal ``nums`` (each number exactly once,
  the TinyZero rule); ``allow_subset=True`` accepts each number at most once.
* **Reward**: 1.0 if ``|value − target| < 1e-5``; ``format_score`` (0.1) if an answer tag was found
  but the expression is invalid, uses the wrong numbers or misses the target; 0 without a tag.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 32
MAX_LITERAL_CHARS = 30
TOLERANCE = Fraction(1, 100_000)
_EOS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "</s>",
        "<eos>", "<|end|>")

DEFAULT_PROMPT = ("Using the numbers {nums}, write an arithmetic expression that equals {target}. "
                  "You may use +, -, * and / and parentheses, and must use each number exactly "
                  "once. Think in <think> </think> tags, then give only the expression in "
                  "<answer> </answer> tags, for example <answer> (1 + 2) * 3 </answer>.")


class ExpressionError(ValueError):
  """Not a valid countdown expression (bad character, syntax, depth, division by zero)."""


# --------------------------------------------------------------------------------------------------
# Parsing and exact evaluation.


def _tokenize(text: str) -> list[tuple[str, Any]]:
  tokens: list[tuple[str, Any]] = []
  i, n = 0, len(text)
  while i < n:
    c = text[i]
    if c in " \t\n\r":
      i += 1
    elif c in "+-*/()":
      tokens.append(("op", c))
      i += 1
    elif c.isascii() and (c.isdigit() or c == "."):
      j = i
      while j < n and text[j].isascii() and (text[j].isdigit() or text[j] == "."):
        j += 1
      lit = text[i:j]
      if len(lit) > MAX_LITERAL_CHARS or lit.count(".") > 1 or lit == "." or lit.endswith("."):
        raise ExpressionError(f"bad number {lit[:20]!r}")
      tokens.append(("num", Fraction(lit)))
      i = j
    else:
      raise ExpressionError(f"character {c!r} is not allowed")
  return tokens


class _Parser:
  """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
  unary := '-' unary | primary; primary := NUMBER | '(' expr ')'."""

  def __init__(self, tokens: list[tuple[str, Any]], max_depth: int):
    self.tokens = tokens
    self.pos = 0
    self.depth = 0
    self.max_depth = max_depth
    self.numbers: list[Fraction] = []

  def _peek(self) -> tuple[str, Any] | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def _enter(self) -> None:
    self.depth += 1
    if self.depth > self.max_depth:
      raise ExpressionError(f"nesting deeper than {self.max_depth}")

  def expr(self) -> Fraction:
    value = self.term()
    while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in "+-":
      self.pos += 1
      rhs = self.term()
      value = value + rhs if tok[1] == "+" else value - rhs
    return value

  def term(self) -> Fraction:
    value = self.unary()
    while (tok := self._peek()) is not None and tok[0] == "op" and tok[1] in "*/":
      self.pos += 1
      rhs = self.unary()
      if tok[1] == "*":
        value = value * rhs
      else:
        if rhs == 0:
          raise ExpressionError("division by zero")
        value = value / rhs
    return value

  def unary(self) -> Fraction:
    tok = self._peek()
    if tok == ("op", "-"):
      self.pos += 1
      self._enter()
      value = -self.unary()
      self.depth -= 1
      return value
    return self.primary()

  def primary(self) -> Fraction:
    tok = self._peek()
    if tok is None:
      raise ExpressionError("unexpected end of expression")
    self.pos += 1
    if tok[0] == "num":
      self.numbers.append(tok[1])
      return tok[1]
    if tok[1] == "(":
      self._enter()
      value = self.expr()
      if self._peek() != ("op", ")"):
        raise ExpressionError("missing ')'")
      self.pos += 1
      self.depth -= 1
      return value
    raise ExpressionError(f"unexpected {tok[1]!r}")


def evaluate_expression(text: str, *, max_chars: int = MAX_EXPRESSION_CHARS,
                        max_depth: int = MAX_DEPTH) -> tuple[Fraction, list[Fraction]]:
  """Exact value of an arithmetic expression and the literals it uses (in order).

  Grammar: integer/decimal literals, binary ``+ - * /``, unary minus, parentheses, whitespace.

  Raises:
    ExpressionError: too long, a disallowed character, a syntax error, nesting deeper than
      ``max_depth``, or division by zero.
  """
  if not isinstance(text, str):
    raise ExpressionError("not a string")
  text = text.strip()
  if not text:
    raise ExpressionError("empty expression")
  if len(text) > max_chars:
    raise ExpressionError(f"longer than {max_chars} characters")
  parser = _Parser(_tokenize(text), max_depth)
  value = parser.expr()
  if parser.pos != len(parser.tokens):
    raise ExpressionError(f"unexpected {parser.tokens[parser.pos][1]!r}")
  return value, parser.numbers


# --------------------------------------------------------------------------------------------------
# Reward.


def extract_countdown_answer(text: str, *, last_line_only: bool = False) -> str | None:
  """Contents of the last ``<answer>…</answer>`` pair (None if none); EOS strings are stripped."""
  if not isinstance(text, str):
    return None
  text = text.strip()
  changed = True
  while changed:
    changed = False
    for eos in _EOS:
      if text.endswith(eos):
        text, changed = text[:-len(eos)].rstrip(), True
  if last_line_only:
    text = text.rsplit("\n", 1)[-1]
  close = text.rfind("</answer>")
  if close < 0:
    return None
  open_ = text.rfind("<answer>", 0, close)
  if open_ < 0:
    return None
  return text[open_ + len("<answer>"):close]


def parse_nums(value: Any, *, row: int = 0, column: str = "nums") -> list[int]:
  """A row's numbers from a list of ints or a JSON / comma- or space-separated string.

  Raises:
    ValueError: naming the column and row, when the value is not a non-empty list of integers.
  """
  where = f"column {column!r} row {row}"
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if isinstance(value, str):
    s = value.strip()
    if s.startswith("["):
      try:
        value = json.loads(s)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON list {value[:50]!r} ({e.msg})") from None
    else:
      value = [p for p in s.replace(",", " ").split()]
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if not isinstance(value, (list, tuple)) or not value:
    raise ValueError(f"{where}: expected a non-empty list of integers, got {value!r}")
  out = []
  for v in value:
    if isinstance(v, str):
      try:
        v = int(v.strip())
      except ValueError:
        raise ValueError(f"{where}: {v!r} is not an integer") from None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)):
      raise ValueError(f"{where}: {v!r} is not an integer")
    if isinstance(v, (float, np.floating)):
      if not float(v).is_integer():
        raise ValueError(f"{where}: {v!r} is not an integer")
    out.append(int(v))
  return out


def parse_target(value: Any, *, row: int = 0, column: str = "target") -> Fraction:
  """A row's target (int, finite float, or a numeric string) as an exact Fraction."""
  where = f"column {column!r} row {row}"
  if isinstance(value, bytes):
    value = value.decode("utf-8", errors="replace")
  if isinstance(value, (bool, np.bool_)) or value is None:
    raise ValueError(f"{where}: expected a number, got {value!r}")
  try:
    if isinstance(value, (float, np.floating)):
      if not np.isfinite(value):
        raise ValueError
      return Fraction(float(value))
    if isinstance(value, (int, np.integer)):
      return Fraction(int(value))
    if isinstance(value, str) and len(value) <= 64:
      return Fraction(value.strip())
  except (ValueError, ZeroDivisionError):
    pass
  raise ValueError(f"{where}: expected a number, got {value!r}")


def score_countdown(completion: str, nums: Sequence[int], target: Fraction | int, *,
                    format_score: float = 0.1, allow_subset: bool = False,
                    last_line_only: bool = False) -> float:
  """The countdown reward of one completion (see :func:`countdown`); never raises on it."""
  expr = extract_countdown_answer(completion, last_line_only=last_line_only)
  if expr is None:
    return 0.0
  try:
    value, used = evaluate_expression(expr)
  except ExpressionError:
    return float(format_score)
  if any(u.denominator != 1 for u in used):
    return float(format_score)
  have, want = Counter(int(u) for u in used), Counter(int(n) for n in nums)
  ok_numbers = (not (have - want)) if allow_subset else have == want
  if not ok_numbers:
    return float(format_score)
  return 1.0 if abs(value - Fraction(target)) < TOLERANCE else float(format_score)


def countdown(prompts: list[str], completions: list[str], *, nums: Sequence[Any],
              target: Sequence[Any], format_score: float = 0.1, allow_subset: bool = False,
              last_line_only: bool = False, **_: object) -> np.ndarray:
  """Countdown reward (docs/algorithms.md §22.3): exact value of the last ``<answer>`` expression.

  Args:
    prompts, completions: ``B`` strings.
    nums: ``B`` lists of integers, or JSON / comma-separated strings of them.
    target: ``B`` targets (int, float or numeric string).
    format_score: reward for a tag whose expression is invalid, uses the wrong numbers or misses.
    allow_subset: accept each number *at most* once (default: exactly once, the TinyZero rule).
    last_line_only: search only the last line (the verl/TinyZero quirk; off by default).
  Returns:
    float32 ``[B]`` in {0, format_score, 1}.
  Raises:
    ValueError: a malformed ``nums``/``target`` entry (names column and row) or wrong lengths.
  """
  b = len(completions)
  for name, col in (("nums", nums), ("target", target)):
    if isinstance(col, (str, bytes)) or not hasattr(col, "__len__") or len(col) != b:
      raise ValueError(f"column {name!r} must have one value per completion ({b})")
  all_nums = [parse_nums(v, row=i) for i, v in enumerate(nums)]
  all_targets = [parse_target(v, row=i) for i, v in enumerate(target)]
  return np.asarray([
      score_countdown(c, n, t, format_score=format_score, allow_subset=allow_subset,
                      last_line_only=last_line_only)
      for c, n, t in zip(completions, all_nums, all_targets)], np.float32)


# --------------------------------------------------------------------------------------------------
# Synthetic problems.


def _combine(a: tuple[int, str], b: tuple[int, str], op: str) -> tuple[int, str] | None:
  """``a op b`` over (value, text) pairs, or None if it leaves the non-negative integers."""
  (x, sx), (y, sy) = a, b
  if op == "+":
    v = x + y
  elif op == "-":
    v = x - y
  elif op == "*":
    v = x * y
  else:
    if y == 0 or x % y:
      return None
    v = x // y
  if v < 0:
    return None
  return v, f"({sx} {op} {sy})"


def generate_countdown(n: int, *, seed: int, num_count: int = 4, min_number: int = 1,
                       max_number: int = 99, operators: str = "+-*/", min_target: int = 1,
                       max_target: int = 1000,
                       prompt_template: str = DEFAULT_PROMPT) -> list[dict[str, str]]:
  """``n`` solvable countdown problems, a pure function of the arguments.

  Each row draws ``num_count`` integers in ``[min_number, max_number]``, builds a random expression
  tree over all of them (intermediate values stay non-negative integers, divisions are exact) and
  takes its value as the target, retrying until it lies in ``[min_target, max_target]``. The
  numbers are then shuffled, so their order does not reveal the solution.

  Args:
    n: number of rows. seed: the generator seed. operators: a subset of ``"+-*/"``.
    prompt_template: formatted with ``nums`` (e.g. ``[3, 7, 25]``) and ``target``.
  Returns:
    rows ``{"prompt", "answer" (one valid expression), "nums" (JSON list), "target" (str)}``.
  """
  if num_count < 2:
    raise ValueError(f"num_count must be at least 2, got {num_count}")
  if not operators or set(operators) - set("+-*/"):
    raise ValueError(f"operators must be a non-empty subset of '+-*/', got {operators!r}")
  if not 0 <= min_number <= max_number:
    raise ValueError(f"need 0 <= min_number <= max_number, got {min_number}, {max_number}")
  if min_target > max_target:
    raise ValueError(f"min_target {min_target} > max_target {max_target}")
  rng = random.Random(seed)
  rows = []
  attempts = 0
  while len(rows) < n:
    attempts += 1
    if attempts > 1000 * max(n, 1):
      raise ValueError("could not generate problems with targets in "
                       f"[{min_target}, {max_target}]; widen the ranges")
    numbers = [rng.randint(min_number, max_number) for _ in range(num_count)]
    pool = [(v, str(v)) for v in numbers]
    while len(pool) > 1:
      i, j = rng.sample(range(len(pool)), 2)
      ops = list(operators)
      rng.shuffle(ops)
      node = None
      for op in ops:
        node = _combine(pool[i], pool[j], op)
        if node is not None:
          break
      if node is None:  # No allowed operator keeps a non-negative integer: start over.
        break
      pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [node]
    if len(pool) != 1:
      continue
    value, text = pool[0]
    if not min_target <= value <= max_target:
      continue
    expr = text[1:-1] if text.startswith("(") else text
    shown = list(numbers)
    rng.shuffle(shown)
    rows.append({"prompt": prompt_template.format(nums=json.dumps(shown), target=value),
                 "answer": expr, "nums": json.dumps(shown), "target": str(value)})
  return rows
