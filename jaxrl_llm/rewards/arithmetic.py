"""Rewards for the synthetic arithmetic task (and any task whose rows carry an ``answer``)."""

from __future__ import annotations

import re

import numpy as np

_INT = re.compile(r"^[+-]?\d+$")


def exact_match(prompts: list[str], completions: list[str], *, answer: list[str],
                **_: object) -> np.ndarray:
  """1.0 where the completion, stripped of surrounding whitespace, equals the answer; else 0.

  Args:
    prompts, completions: ``B`` strings; answer: ``B`` reference answers.
  Returns:
    float32 ``[B]``.
  """
  return np.asarray([float(c.strip() == str(a).strip()) for c, a in zip(completions, answer)],
                    np.float32)


def integer_format(prompts: list[str], completions: list[str], **_: object) -> np.ndarray:
  """1.0 where the completion is a bare (optionally signed) integer; a small format reward."""
  return np.asarray([float(bool(_INT.match(c.strip()))) for c in completions], np.float32)


def digit_match(prompts: list[str], completions: list[str], *, answer: list[str],
                **_: object) -> np.ndarray:
  """Fraction of answer characters matched position by position (partial credit in [0, 1])."""
  out = []
  for c, a in zip(completions, answer):
    c, a = c.strip(), str(a).strip()
    n = max(len(a), len(c), 1)
    out.append(sum(x == y for x, y in zip(c, a)) / n)
  return np.asarray(out, np.float32)


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _last_number(text: str) -> float | None:
  found = _NUMBER.findall(text)
  if not found:
    return None
  try:
    return float(found[-1].replace(",", ""))
  except ValueError:
    return None


def last_number_match(prompts: list[str], completions: list[str], *, answer: list[str],
                      **_: object) -> np.ndarray:
  """1.0 where the last number in the completion equals the reference number.

  The reference is the text after ``####`` when present (GSM8K style), else the whole answer;
  thousands separators are ignored. A completion without a number scores 0. (Full math answer
  checking -- ``\\boxed{}``, fractions, LaTeX -- is the math reward module's job.)
  """
  out = []
  for c, a in zip(completions, answer):
    ref_text = str(a).split("####")[-1]
    ref, got = _last_number(ref_text), _last_number(c)
    out.append(float(ref is not None and got is not None and abs(ref - got) < 1e-6))
  return np.asarray(out, np.float32)
