"""The hidden property of the synthetic ``sorted_digits`` preference task, as pure functions.

Kept apart from :mod:`jaxrl_llm.data.preference` (which builds the TFDS datasets and imports jax)
so that the task's reward functions import in milliseconds: a reward worker process loads them
without the training stack.
"""

from __future__ import annotations

import numpy as np

_DIGITS = frozenset("0123456789")


def prompt_digits(prompt: str) -> int | None:
  """``n`` of a ``"n=<n>:"`` prompt, or None when the prompt is not of that form."""
  if not isinstance(prompt, str) or not (prompt.startswith("n=") and prompt.endswith(":")):
    return None
  body = prompt[2:-1]
  if not body or not set(body) <= _DIGITS:
    return None
  return int(body)


def hidden_score(response: str, prompt: str | None = None) -> float:
  """Fraction of adjacent digit pairs that are non-decreasing, in ``[0, 1]``; never raises.

  1.0 iff the digits are sorted ascending. Malformed responses score 0.0: not a str, any
  character other than ASCII ``0-9`` (whitespace included), fewer than 2 digits, or (when
  ``prompt`` is given) a length other than the prompt's ``n`` or a malformed prompt.
  """
  if not isinstance(response, str) or len(response) < 2 or not set(response) <= _DIGITS:
    return 0.0
  if prompt is not None and prompt_digits(prompt) != len(response):
    return 0.0
  ok = sum(a <= b for a, b in zip(response, response[1:]))
  return ok / (len(response) - 1)


def has_hidden_property(response: str, prompt: str | None = None) -> bool:
  """True iff ``response`` is well-formed digits and sorted ascending.

  With ``prompt`` (``"n=<n>:"``) it must also have exactly ``n`` digits; pass the prompt whenever
  it is known (the RLHF reward does). Never raises.
  """
  return hidden_score(response, prompt) == 1.0


def synthetic_prompt(n: int) -> str:
  """The prompt asking for ``n`` digits, e.g. ``"n=4:"``."""
  return f"n={n}:"


def _check_digits(min_digits: int, max_digits: int) -> None:
  if not 2 <= min_digits <= max_digits:
    raise ValueError(f"need 2 <= min_digits <= max_digits, got {min_digits}, {max_digits}")


def generate_sft_demos(n: int, *, seed: int, sorted_fraction: float = 0.2, min_digits: int = 3,
                       max_digits: int = 6) -> list[dict[str, str]]:
  """``n`` SFT rows ``{"prompt": "n=4:", "answer": "<4 digits>"}``, deterministic in ``seed``.

  Exactly ``round(n * sorted_fraction)`` answers (at random positions) are sorted; the others are
  uniform random digit strings conditioned on *not* being sorted, so the property rate of the
  demos is ``sorted_fraction``: an SFT policy mostly lacks the hidden property.
  """
  _check_digits(min_digits, max_digits)
  rng = np.random.default_rng(seed)
  is_sorted = np.zeros(n, bool)
  is_sorted[rng.permutation(n)[: int(round(n * sorted_fraction))]] = True
  rows = []
  for s in is_sorted:
    k = int(rng.integers(min_digits, max_digits + 1))
    while True:
      digits = rng.integers(0, 10, size=k)
      if s:
        digits = np.sort(digits)
      answer = "".join(map(str, digits))
      if s or not has_hidden_property(answer):
        break
    rows.append({"prompt": synthetic_prompt(k), "answer": answer})
  return rows
