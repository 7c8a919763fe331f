"""Verifiable math rewards: GSM8K and MATH-style answer extraction, normalisation and checking.

docs/algorithms.md §22.1-22.2. The pipeline for one completion is

1. **clean**: strip whitespace and a trailing end-of-sequence string (``<|im_end|>``, ``</s>``);
2. **extract** the final answer from the *tail* of the text only (bounded regex cost): the last
   ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}`` with brace matching (last 2000 chars), the
   GSM8K strict ``#### x`` marker or the last number (last 300 characters), the DAPO-style last
   ``Answer: ...`` line (last 300 characters) or the last ``<answer>...</answer>`` tag;
3. **compare** with the gold answer: normalised string equality (Hendrycks-style
   :func:`normalize_answer`), then exact rational comparison with a relative tolerance when both
   sides are plain numbers (``\\frac{1}{2}`` = ``0.5`` = ``1/2``, ``1,000`` = ``1000``), then a
   symbolic check with ``math_verify`` for everything else.

The symbolic check runs in a separate worker *process* (:class:`SymbolicChecker`) with a wall-clock
time-out per comparison and a time budget per batch; a time-out or any failure counts as "not
equal" (reward 0), never as an exception. ``math_verify``'s own time-outs use ``signal.alarm`` and
only work on a main thread, while :class:`~jaxrl_llm.rewards.base.RewardRunner` calls reward
functions on a worker thread; inside the worker process they run on its main thread. The worker is
started with ``subprocess`` (fork+exec of a fresh interpreter; it imports only ``math_verify``), so
neither JAX's threads nor the caller's ``__main__`` module are involved.

A malformed *completion* never raises: it scores 0. A malformed *gold* column (dataset problem)
raises :class:`ValueError` naming the column and row.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from fractions import Fraction
from typing import Any, Iterable, Sequence

import numpy as np

EOS_STRINGS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>",
               "</s>", "<eos>", "<|end|>")
BOXED_TAIL_CHARS = 2000
NUMBER_TAIL_CHARS = 300
MAX_ANSWER_CHARS = 1000  # Longer extracted answers are compared by string only.
EXTRACT_MODES = ("auto", "boxed", "strict", "flexible", "answer_line", "answer_tag")

_STRICT = re.compile(r"####\s*(-?[0-9.,]+)")
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_ANSWER_LINE = re.compile(r"(?im)answer\**[^\S\n]*:\**[^\S\n]*(.+?)[^\S\n]*$")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"(-?)(\d+(?:\.\d+)?|\.\d+)")
_FRAC = re.compile(r"(-?)\\frac\{(-?)(\d+(?:\.\d+)?)\}\{(-?)(\d+(?:\.\d+)?)\}")
_SLASH = re.compile(r"(-?)(\d+)/(\d+)")
_WRAPPERS = ("\\text{", "\\textbf{", "\\mathrm{", "\\mathbf{", "\\mbox{")
_SPACING = ("\\,", "\\;", "\\:", "\\quad", "\\qquad", "\\displaystyle")


# --------------------------------------------------------------------------------------------------
# Extraction.


def strip_eos(text: str) -> str:
  """``text`` without surrounding whitespace and trailing end-of-sequence strings (repeated)."""
  text = text.strip()
  changed = True
  while changed:
    changed = False
    for eos in EOS_STRINGS:
      if text.endswith(eos):
        text = text[:-len(eos)].rstrip()
        changed = True
  return text


def _match_braces(text: str, start: int) -> int | None:
  """Index of the ``}`` closing the ``{`` at ``start`` (``\\{`` and ``\\}`` skipped), or None."""
  depth, i, n = 0, start, len(text)
  while i < n:
    c = text[i]
    if c == "\\":
      i += 2
      continue
    if c == "{":
      depth += 1
    elif c == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


def extract_boxed(text: str, *, tail_chars: int = BOXED_TAIL_CHARS) -> str | None:
  """Contents of the last ``\\boxed{...}``, ``\\boxed x`` or ``\\fbox{...}`` in the tail of text.

  Braces are matched (nested braces allowed); an unclosed last box gives None (a truncated answer
  is not an answer). ``\\boxed x`` takes the token up to the next whitespace or ``$``.
  """
  tail = text[-tail_chars:] if tail_chars else text
  best = -1
  for key in ("\\boxed", "\\fbox"):
    pos = len(tail)
    while True:
      pos = tail.rfind(key, 0, pos)
      if pos < 0:
        break
      after = pos + len(key)
      if after < len(tail) and (tail[after] == "{" or tail[after] == " "):
        best = max(best, pos)
        break
  if best < 0:
    return None
  key_len = len("\\boxed") if tail.startswith("\\boxed", best) else len("\\fbox")
  i = best + key_len
  if tail[i] == "{":
    end = _match_braces(tail, i)
    return None if end is None else tail[i + 1:end].strip()
  rest = tail[i:].lstrip(" ")
  if rest.startswith("{"):
    end = _match_braces(rest, 0)
    return None if end is None else rest[1:end].strip()
  token = re.match(r"[^\s$]+", rest)
  return token.group(0) if token else None


def _clean_number(s: str) -> str:
  s = s.replace(",", "").replace("$", "").strip()
  return s[:-1] if s.endswith(".") else s


def extract_gsm8k_strict(text: str, *, tail_chars: int = NUMBER_TAIL_CHARS) -> str | None:
  """The number after the last ``#### `` in the tail, with ``,`` ``$`` and a final ``.`` removed."""
  found = _STRICT.findall(text[-tail_chars:])
  for cand in reversed(found):
    cand = _clean_number(cand)
    if any(ch.isdigit() for ch in cand):
      return cand
  return None


def extract_last_number(text: str, *, tail_chars: int = NUMBER_TAIL_CHARS) -> str | None:
  """The last number in the tail (``1,234.5``, ``-3``, ``$7``, ``.5``); ``,``/``$`` removed."""
  found = _NUMBER.findall(text[-tail_chars:])
  return _clean_number(found[-1]) if found else None


def extract_answer_line(text: str, *, tail_chars: int = NUMBER_TAIL_CHARS) -> str | None:
  """The rest of the last ``Answer: ...`` line in the tail (DAPO style), box and ``$`` removed."""
  found = _ANSWER_LINE.findall(text[-tail_chars:])
  if not found:
    return None
  ans = found[-1].strip()
  boxed = extract_boxed(ans, tail_chars=0)
  if boxed is not None:
    ans = boxed
  ans = ans.strip().rstrip(".").strip().strip("$").strip()
  return ans or None


def extract_answer_tag(text: str, *, tail_chars: int = BOXED_TAIL_CHARS) -> str | None:
  """Contents of the last ``<answer>...</answer>`` pair in the tail (a box inside is unwrapped)."""
  tail = text[-tail_chars:]
  close = tail.rfind("</answer>")
  if close < 0:
    return None
  open_ = tail.rfind("<answer>", 0, close)
  if open_ < 0:
    return None
  ans = tail[open_ + len("<answer>"):close].strip()
  boxed = extract_boxed(ans, tail_chars=0)
  return (boxed if boxed is not None else ans) or None


def extract_answer(text: str, mode: str = "auto") -> str | None:
  """The final answer of a completion, or None when there is none.

  Args:
    text: the decoded response (special tokens removed; a trailing EOS string is stripped here).
    mode: ``"boxed"``, ``"strict"`` (GSM8K ``####``), ``"flexible"`` (last number),
      ``"answer_line"`` (DAPO ``Answer:``), ``"answer_tag"`` (``<answer>``) or ``"auto"``: boxed,
      then answer tag, then ``Answer:`` line, then ``####`` (no last-number fallback).
  Returns:
    the answer string (not normalised) or None. Never raises on any string.
  """
  if mode not in EXTRACT_MODES:
    raise ValueError(f"extract mode must be one of {EXTRACT_MODES}, got {mode!r}")
  if not isinstance(text, str):
    return None
  text = strip_eos(text)
  if mode == "boxed":
    return extract_boxed(text)
  if mode == "strict":
    return extract_gsm8k_strict(text)
  if mode == "flexible":
    return extract_last_number(text)
  if mode == "answer_line":
    return extract_answer_line(text)
  if mode == "answer_tag":
    return extract_answer_tag(text)
  for fn in (extract_boxed, extract_answer_tag, extract_answer_line, extract_gsm8k_strict):
    ans = fn(text)
    if ans:
      return ans
  return None


def gold_answer(text: str) -> str:
  """The final answer of a reference: text after the last ``####``, else the last box, else all."""
  text = text.strip()
  if "####" in text:
    return text.rsplit("####", 1)[1].strip()
  boxed = extract_boxed(text, tail_chars=0)
  return boxed if boxed is not None else text


# --------------------------------------------------------------------------------------------------
# Normalisation and comparison.


def _fix_sqrt(s: str) -> str:
  return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _fix_fracs(s: str) -> str:
  """``\\frac12`` -> ``\\frac{1}{2}``; likewise ``\\frac1{2}`` and ``\\frac{1}2``."""
  parts = s.split("\\frac")
  out = parts[0]
  for part in parts[1:]:
    out += "\\frac"
    if not part:
      continue
    if part[0] == "{":
      end = _match_braces(part, 0)
      if end is None:
        out += part
        continue
      num, rest = part[:end + 1], part[end + 1:]
    else:
      num, rest = "{" + part[0] + "}", part[1:]
    if rest and rest[0] != "{":
      rest = "{" + rest[0] + "}" + rest[1:]
    out += num + rest
  return out


def _unwrap(s: str) -> str:
  for w in _WRAPPERS:
    if s.startswith(w) and _match_braces(s, len(w) - 1) == len(s) - 1:
      return s[len(w):-1]
  return s


def normalize_answer(answer: str) -> str:
  """Hendrycks-style canonical form of a final answer (docs/algorithms.md §22.2), used for equality.

  Removes line breaks, ``\\!``, spacing commands, ``\\left``/``\\right``, degree marks, dollar
  signs, a right-hand ``\\text{ unit}``, percent signs and spaces; maps ``\\\\``->``\\``,
  ``tfrac``/``dfrac``->``frac``; adds a leading zero (``.5``); drops a short (<= 2 character)
  left-hand side ``x =``; repairs ``\\sqrt2`` and ``\\frac12``; maps ``0.5``->``\\frac{1}{2}`` and
  integer ``a/b``->``\\frac{a}{b}``. Additions to the classic list: a whole-answer ``\\text{..}``
  (and ``\\mathrm``/``\\textbf``/``\\mbox``) wrapper is unwrapped, ``{,}`` and thousands separators
  in a plain number are removed, and a trailing ``.`` is dropped.
  """
  s = str(answer).strip()
  s = s.replace("\n", "").replace("\r", "").replace("\\!", "")
  s = s.replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  for sp in _SPACING:
    s = s.replace(sp, " ")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "")
  s = s.replace("\\$", "").replace("$", "")
  if "\\text{ " in s:
    s = s.split("\\text{ ")[0]
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace("{,}", ",")
  s = s.strip()
  s = _unwrap(s).strip()
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  if s.startswith("-."):
    s = "-0" + s[1:]
  if s.count("=") == 1:
    lhs, rhs = s.split("=")
    if len(lhs.strip()) <= 2:
      s = rhs
  s = _fix_sqrt(s)
  s = s.replace(" ", "")
  s = _fix_fracs(s)
  if s.endswith(".") and not s.endswith("\\."):
    s = s[:-1]
  if _THOUSANDS.fullmatch(s):
    s = s.replace(",", "")
  if s == "0.5":
    s = "\\frac{1}{2}"
  m = _SLASH.fullmatch(s)
  if m:
    s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
  return s


def parse_number(answer: str) -> Fraction | None:
  """Exact value of a plain numeric answer (after :func:`normalize_answer`), else None.

  Accepts integers, decimals, ``\\frac{a}{b}`` and ``a/b`` with optional signs; anything else
  (variables, radicals, tuples) gives None, as do numbers longer than 40 characters.
  """
  s = normalize_answer(answer) if isinstance(answer, str) else None
  if not s or len(s) > 40:
    return None
  try:
    m = _DECIMAL.fullmatch(s)
    if m:
      return Fraction(s)
    m = _FRAC.fullmatch(s)
    if m:
      num, den = Fraction(m.group(3)), Fraction(m.group(5))
      if den == 0:
        return None
      sign = -1 if (m.group(1) == "-") ^ (m.group(2) == "-") ^ (m.group(4) == "-") else 1
      return sign * num / den
  except (ValueError, ZeroDivisionError):
    return None
  return None


def numbers_close(a: Fraction, b: Fraction, *, rel_tol: float = 1e-6) -> bool:
  """Exact equality when either number is an integer, else ``|a − b| ≤ rel_tol · max(1, |b|)``
  (exact arithmetic).

  An integer is never "close" to another number (``1000001`` is not ``1000000``, nor is
  ``5000004.5`` or ``4.9999999``); the tolerance only admits rounded decimals of a non-integer,
  such as ``0.333333`` for ``1/3``.
  """
  if a.denominator == 1 or b.denominator == 1:
    return a == b
  return abs(a - b) <= Fraction(rel_tol) * max(Fraction(1), abs(b))


def quick_equal(pred: str | None, gold: str | None, *, rel_tol: float = 1e-6) -> bool | None:
  """True/False when string or numeric comparison decides; None when a symbolic check is needed."""
  if pred is None or gold is None:
    return False
  p, g = normalize_answer(pred), normalize_answer(gold)
  if not p or not g:
    return False
  if p == g:
    return True
  pn, gn = parse_number(pred), parse_number(gold)
  if pn is not None and gn is not None:
    return numbers_close(pn, gn, rel_tol=rel_tol)
  if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
    return False
  return None


# --------------------------------------------------------------------------------------------------
# Symbolic checks in a worker process.

_WORKER_SOURCE = r"""
import json, os, sys
try:
  import resource
  resource.setrlimit(resource.RLIMIT_AS, (%(mem)d, %(mem)d))
except Exception:
  pass
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
import logging
logging.disable(logging.CRITICAL)
from math_verify import parse, verify
out.write("ready\n"); out.flush()
for line in sys.stdin:
  ok = False
  try:
    gold, pred = json.loads(line)
    g = parse("\\boxed{" + gold + "}", parsing_timeout=%(inner)d)
    p = parse("\\boxed{" + pred + "}", parsing_timeout=%(inner)d)
    ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=%(inner)d))
  except BaseException:
    ok = False
  out.write("1\n" if ok else "0\n"); out.flush()
"""


class SymbolicChecker:
  """Symbolic equivalence (``math_verify``) in a worker process with wall-clock time-outs.

  The worker starts lazily on the first check and is restarted after a time-out (the hung one is
  killed). Use as a context manager or call :meth:`close`; one checker may be kept for many batches
  (pass it to :func:`math_answer` as ``checker=``) to avoid the ~0.5 s start per batch. Calls from
  several threads are serialised by a lock.

  Args:
    timeout_s: wall-clock limit of one comparison (parse both sides + verify).
    budget_s: total time for one :meth:`equal_many` call; pairs after it is spent are unchecked
      (None: the reward marks those rows unscorable, NaN).
    startup_timeout_s: limit for starting the worker and importing ``math_verify``.
    memory_bytes: address-space limit of the worker (best effort, POSIX ``RLIMIT_AS``).
  """

  def __init__(self, *, timeout_s: float = 3.0, budget_s: float = 20.0,
               startup_timeout_s: float = 30.0, memory_bytes: int = 4 << 30):
    self.timeout_s = float(timeout_s)
    self.budget_s = float(budget_s)
    self.startup_timeout_s = float(startup_timeout_s)
    self.memory_bytes = int(memory_bytes)
    self._proc: subprocess.Popen | None = None
    self._buf = bytearray()
    self._broken = False
    self._lock = threading.Lock()
    self.timeouts = 0
    self.skipped = 0

  def __enter__(self) -> "SymbolicChecker":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # noqa: BLE001 -- interpreter shutdown.
      pass

  def close(self) -> None:
    """Stops the worker process (if running)."""
    proc, self._proc = self._proc, None
    self._buf = bytearray()
    if proc is None:
      return
    try:
      proc.stdin.close()
    except OSError:
      pass
    try:
      proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()

  def _kill(self) -> None:
    proc, self._proc = self._proc, None
    self._buf = bytearray()
    if proc is not None:
      proc.kill()
      proc.wait()

  def _readline(self, deadline: float) -> bytes | None:
    proc = self._proc
    fd = proc.stdout.fileno()
    while b"\n" not in self._buf:
      left = deadline - time.monotonic()
      if left <= 0:
        return None
      ready, _, _ = select.select([fd], [], [], left)
      if not ready:
        return None
      chunk = os.read(fd, 4096)
      if not chunk:
        return None
      self._buf += chunk
    line, _, rest = bytes(self._buf).partition(b"\n")
    self._buf = bytearray(rest)
    return line

  def _start(self) -> bool:
    if self._broken:
      return False
    src = _WORKER_SOURCE % {"mem": self.memory_bytes, "inner": max(1, int(self.timeout_s / 3))}
    try:
      self._proc = subprocess.Popen([sys.executable, "-c", src], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    close_fds=True)
    except (OSError, ValueError) as e:
      self._broken = True
      warnings.warn(f"math symbolic checker could not start ({e}); symbolic checks count as "
                    "unequal", RuntimeWarning, stacklevel=3)
      return False
    if self._readline(time.monotonic() + self.startup_timeout_s) != b"ready":
      self._kill()
      self._broken = True
      warnings.warn("math symbolic checker did not start (is math-verify installed?); symbolic "
                    "checks count as unequal", RuntimeWarning, stacklevel=3)
      return False
    return True

  def _check(self, pred: str, gold: str, deadline: float) -> bool:
    if self._proc is None and not self._start():
      return False
    line = (json.dumps([gold, pred]) + "\n").encode()
    try:
      self._proc.stdin.write(line)
      self._proc.stdin.flush()
      reply = self._readline(min(deadline, time.monotonic() + self.timeout_s))
    except (OSError, ValueError, AttributeError):  # Worker died or was closed meanwhile.
      self._kill()
      return False
    if reply is None:
      self.timeouts += 1
      self._kill()
      return False
    return reply == b"1"

  def equal_many(self, pairs: Iterable[tuple[str, str]]) -> list[bool | None]:
    """``[equivalent(pred, gold) for (pred, gold) in pairs]``: time-outs and errors give False;
    pairs left unchecked because this call's ``budget_s`` ran out give None (unscorable, not
    wrong: a row must not lose its reward because other rows were slow to check)."""
    with self._lock:
      deadline = time.monotonic() + self.budget_s
      out: list[bool | None] = []
      for pred, gold in pairs:
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
          out.append(False)
        elif time.monotonic() >= deadline:
          self.skipped += 1
          out.append(None)
        else:
          out.append(self._check(pred, gold, deadline))
      return out

  def equal(self, pred: str, gold: str) -> bool:
    """Whether ``pred`` and ``gold`` are symbolically equivalent (False on time-out or error)."""
    return bool(self.equal_many([(pred, gold)])[0])


def is_equiv(pred: str | None, gold: str | None, *, symbolic: bool = True,
             checker: SymbolicChecker | None = None, rel_tol: float = 1e-6) -> bool:
  """Whether two final answers are equal: normalised strings, then numbers, then ``math_verify``.

  Args:
    pred, gold: extracted answers (None counts as wrong).
    symbolic: run the symbolic check when string/number comparison does not decide.
    checker: a :class:`SymbolicChecker` to reuse; by default one is started for this call.
  """
  quick = quick_equal(pred, gold, rel_tol=rel_tol)
  if quick is not None or not symbolic:
    return bool(quick)
  if checker is not None:
    return checker.equal(pred, gold)
  with SymbolicChecker() as own:
    return own.equal(pred, gold)


# --------------------------------------------------------------------------------------------------
# Reward functions.


def _column(values: Any, name: str, b: int) -> list[str]:
  """A per-row text column as strings; ValueError naming the column and row when malformed."""
  if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
    raise ValueError(f"column {name!r} must be a sequence of {b} values, "
                     f"got {type(values).__name__}")
  if len(values) != b:
    raise ValueError(f"column {name!r} has {len(values)} values for {b} completions")
  out = []
  for i, v in enumerate(values):
    if isinstance(v, bytes):
      try:
        v = v.decode("utf-8")
      except UnicodeDecodeError:
        raise ValueError(f"column {name!r} row {i}: undecodable bytes") from None
    if isinstance(v, (bool, np.bool_)) or v is None:
      raise ValueError(f"column {name!r} row {i}: expected a string or number, got {v!r}")
    if isinstance(v, (int, float, np.integer, np.floating)):
      if not np.isfinite(float(v)):
        raise ValueError(f"column {name!r} row {i}: non-finite value {v!r}")
      v = str(v)
    if not isinstance(v, str):
      raise ValueError(f"column {name!r} row {i}: expected a string, got {type(v).__name__}")
    if not v.strip():
      raise ValueError(f"column {name!r} row {i}: empty")
    out.append(v)
  return out


def _completions(completions: Sequence[Any]) -> list[str]:
  return [c if isinstance(c, str) else "" for c in completions]


def math_answer_details(completions: Sequence[str], answer: Sequence[Any], *,
                        extract_mode: str = "auto", symbolic: bool = True,
                        checker: SymbolicChecker | None = None,
                        rel_tol: float = 1e-6) -> list[dict[str, Any]]:
  """Per-row diagnostics of :func:`math_answer`: ``{"score", "acc", "pred", "formatted"}``.

  ``pred`` is the extracted answer (None if none), ``formatted`` whether one was extracted,
  ``acc`` whether it matches the gold, ``score`` = float(acc). A row whose symbolic check the
  checker's per-call budget left undone has ``acc`` None and ``score`` NaN (unscorable, handled by
  the reward runner's ``on_error``), never 0.
  """
  comps = _completions(completions)
  golds = [gold_answer(g) for g in _column(answer, "answer", len(comps))]
  preds = [extract_answer(c, extract_mode) for c in comps]
  acc: list[bool | None] = [quick_equal(p, g, rel_tol=rel_tol) for p, g in zip(preds, golds)]
  pending = [i for i, a in enumerate(acc) if a is None]
  if pending and symbolic:
    own = checker is None
    chk = SymbolicChecker() if own else checker
    try:
      results = chk.equal_many([(preds[i], golds[i]) for i in pending])
    finally:
      if own:
        chk.close()
    for i, r in zip(pending, results):
      acc[i] = r
  elif pending:
    for i in pending:
      acc[i] = False
  return [{"score": np.nan if a is None else float(a), "acc": None if a is None else bool(a),
           "pred": p, "formatted": p is not None} for a, p in zip(acc, preds)]


def math_answer(prompts: list[str], completions: list[str], *, answer: Sequence[Any],
                extract_mode: str = "auto", symbolic: bool = True,
                checker: SymbolicChecker | None = None, **_: object) -> np.ndarray:
  """MATH-style correctness reward: 1.0 where the completion's final answer equals the gold.

  The gold is taken from ``answer`` (text after ``####`` if present, else the last ``\\boxed{}``,
  else the whole string). The prediction is extracted with :func:`extract_answer` (``auto``: boxed,
  ``<answer>`` tag, ``Answer:`` line, ``####``) and compared by :func:`is_equiv`; symbolic checks
  of the batch share one worker process (started only if some row needs it; ``checker=`` reuses
  one across calls).

  Args:
    prompts, completions: ``B`` strings. answer: ``B`` reference answers or solutions.
  Returns:
    float32 ``[B]`` in {0, 1}; NaN for a row whose symbolic check the budget left undone.
  Raises:
    ValueError: a malformed ``answer`` entry (names the row).
  """
  rows = math_answer_details(completions, answer, extract_mode=extract_mode, symbolic=symbolic,
                             checker=checker)
  return np.asarray([r["score"] for r in rows], np.float32)


def gsm8k_answer(prompts: list[str], completions: list[str], *, answer: Sequence[Any],
                 strict_only: bool = False, format_score: float = 0.0, tolerance: float = 1e-2,
                 **_: object) -> np.ndarray:
  """GSM8K correctness reward (docs/algorithms.md §22.1).

  Prediction: the last ``#### x`` in the tail (strict); if none and not ``strict_only``, the last
  number in the tail (flexible). Gold: the number after the last ``####`` in ``answer`` (or the
  whole answer). Both have ``,`` and ``$`` removed. Correct if the strings are equal or both are
  numbers with ``|pred − gold| ≤ tolerance`` (ReFT's rule, default 1e-2).

  Args:
    prompts, completions: ``B`` strings. answer: ``B`` GSM8K solutions or final numbers.
  Returns:
    float32 ``[B]``: 1.0 correct, ``format_score`` extracted but wrong, 0 nothing extracted.
  """
  comps = _completions(completions)
  golds = [_clean_number(gold_answer(g)) for g in _column(answer, "answer", len(comps))]
  out = []
  for c, g in zip(comps, golds):
    text = strip_eos(c)
    pred = extract_gsm8k_strict(text)
    if pred is None and not strict_only:
      pred = extract_last_number(text)
    if pred is None:
      out.append(0.0)
      continue
    ok = pred == g
    if not ok:
      pn, gn = parse_number(pred), parse_number(g)
      ok = pn is not None and gn is not None and abs(pn - gn) <= Fraction(tolerance)
    out.append(1.0 if ok else float(format_score))
  return np.asarray(out, np.float32)


_NOT_TAG = r"(?:(?!</?think>|</?answer>).)*"
_THINK_ANSWER = re.compile(rf"\s*<think>{_NOT_TAG}</think>\s*<answer>{_NOT_TAG}</answer>\s*",
                           re.DOTALL)
_THINK_ANSWER_OPEN = re.compile(
    rf"\s*(?:<think>)?{_NOT_TAG}</think>\s*<answer>{_NOT_TAG}</answer>\s*", re.DOTALL)


def think_answer_format(prompts: list[str], completions: list[str], *,
                        think_open_in_prompt: bool = False, **_: object) -> np.ndarray:
  """1.0 where the completion is exactly ``<think>…</think>`` then ``<answer>…</answer>``.

  Whitespace around and between the blocks is allowed; nothing else, and no nested or repeated
  tags. With ``think_open_in_prompt`` (chat templates that end the prompt with ``<think>``) the
  opening ``<think>`` may be missing.

  Returns:
    float32 ``[B]`` in {0, 1}.
  """
  pattern = _THINK_ANSWER_OPEN if think_open_in_prompt else _THINK_ANSWER
  return np.asarray(
      [float(bool(pattern.fullmatch(strip_eos(c)))) for c in _completions(completions)], np.float32)


def boxed_format(prompts: list[str], completions: list[str], **_: object) -> np.ndarray:
  """1.0 where the tail of the completion has a complete, non-empty ``\\boxed{}``; else 0.

  Returns:
    float32 ``[B]`` in {0, 1}.
  """
  return np.asarray([float(bool(extract_boxed(strip_eos(c)))) for c in _completions(completions)],
                    np.float32)


# --------------------------------------------------------------------------------------------------
# Loading user-supplied JSONL.

_QUESTION_FIELDS = ("question", "problem", "prompt")
_ANSWER_FIELDS = ("answer", "solution")


def _pick(row: dict, requested: str, candidates: Sequence[str]) -> str:
  if requested != "auto":
    return requested
  for name in candidates:
    if name in row:
      return name
  return candidates[0]


def _row_text(row: dict, field: str, where: str) -> str:
  if field not in row:
    raise ValueError(f"{where} field {field!r}: missing")
  v = row[field]
  if isinstance(v, bool) or not isinstance(v, (str, int, float)):
    raise ValueError(f"{where} field {field!r}: expected a string, got {type(v).__name__}")
  if isinstance(v, float) and not math.isfinite(v):
    raise ValueError(f"{where} field {field!r}: non-finite number {v!r} (NaN / Infinity are not "
                     "answers)")
  v = str(v)
  if not v.strip():
    raise ValueError(f"{where} field {field!r}: empty")
  return v


def load_math_jsonl(path: str, *, question_field: str = "auto", answer_field: str = "auto",
                    on_bad_row: str = "raise") -> tuple[list[dict[str, str]], int]:
  """Reads GSM8K- or MATH-style JSONL into ``{"prompt", "answer"}`` rows.

  ``auto`` fields: the question is ``question``, else ``problem``, else ``prompt``; the answer is
  ``answer`` (GSM8K solutions with ``#### n`` are reduced to ``n``; a box is unwrapped), else
  ``solution`` (its last ``\\boxed{}`` is required). Blank lines are ignored.

  Args:
    path: the JSONL file.
    question_field, answer_field: field names, or ``"auto"``.
    on_bad_row: ``"raise"`` (ValueError naming file, line and field) or ``"skip"`` (counted).
  Returns:
    ``(rows, skipped)``: the rows and the number of malformed lines skipped.
  """
  if on_bad_row not in ("raise", "skip"):
    raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
  rows, skipped = [], 0
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path} line {lineno}"
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"{where}: undecodable bytes at byte {e.start}") from None
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        qf = _pick(row, question_field, _QUESTION_FIELDS)
        af = _pick(row, answer_field, _ANSWER_FIELDS)
        prompt = _row_text(row, qf, where)
        ref = _row_text(row, af, where)
        if af == "solution":
          boxed = extract_boxed(ref, tail_chars=0)
          if not boxed:
            raise ValueError(f"{where} field {af!r}: no \\boxed{{}} final answer")
          final = boxed
        else:
          final = gold_answer(ref)
        final = final.strip()
        if _THOUSANDS.fullmatch(final):
          final = final.replace(",", "")
        if not final:
          raise ValueError(f"{where} field {af!r}: empty final answer")
        if final.lower().lstrip("+-") == "nan":
          raise ValueError(f"{where} field {af!r}: final answer {final!r} is not a number")
        rows.append({"prompt": prompt, "answer": final})
      except ValueError:
        if on_bad_row == "raise":
          raise
        skipped += 1
  return rows, skipped
