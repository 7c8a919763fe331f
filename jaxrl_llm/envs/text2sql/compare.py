"""Comparing execution results: Spider test-suite bag semantics and BIRD set semantics.

Facts followed (docs/algorithms.md §22.5):

* **bag** (Spider test-suite execution, Zhong et al. 2020): the same rows with the same
  multiplicities; order matters only when the gold query has a top-level ``ORDER BY``.
* **set** (BIRD's execution accuracy): ``set(pred) == set(gold)``; row order and duplicate rows
  are ignored, always.
* Values are compared with Python equality: ``1 == 1.0``, strings are case-sensitive,
  ``None == None``. Nothing is normalised.
* Two empty results are equal (whatever their column counts).
* Column order matters by default (as in BIRD). ``column_permutations=True`` accepts a
  prediction whose columns are a permutation of the gold's (as Spider's test-suite evaluation
  does); candidates are pruned by comparing whole columns first, so this stays cheap.

Differences from the official scripts: Spider's script also strips ``DISTINCT`` from both queries
(not done here: we compare what the queries return), and decides ordering with a plain substring
test on the gold; we look for a *top-level* ``ORDER BY`` with sqlglot (an ``ORDER BY`` inside a
subquery does not order the result).
"""

from __future__ import annotations

import collections
import re
from typing import Any, Iterable, Sequence

_MAX_PERMUTATIONS = 5000


def has_top_level_order_by(sql: str) -> bool:
  """Whether the outermost query of ``sql`` has an ``ORDER BY`` (so its row order is meaningful).

  Parsed with sqlglot (SQLite dialect); an ``ORDER BY`` inside a subquery or CTE does not count,
  one on a compound (``UNION``) does. If sqlglot cannot parse the text, a fallback removes quoted
  text and parenthesised groups and searches the rest for ``ORDER BY``.

  Args:
    sql: one query.
  Returns:
    bool.
  """
  try:
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="sqlite")
    while isinstance(tree, (exp.Subquery, exp.Paren)) and tree.args.get("order") is None:
      tree = tree.this  # "(SELECT ... ORDER BY x)" orders the outer result too.
    if isinstance(tree, (exp.Select, exp.SetOperation, exp.Subquery)):
      return tree.args.get("order") is not None
  except Exception:  # noqa: BLE001 -- any parser failure falls back to the text heuristic.
    pass
  return _order_by_fallback(sql)


_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]")
_PARENS = re.compile(r"\([^()]*\)")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


def _order_by_fallback(sql: str) -> bool:
  text = _QUOTED.sub("''", sql)
  for _ in range(100):  # Innermost groups first; 100 levels is plenty for real queries.
    text, count = _PARENS.subn(" ", text)
    if not count:
      break
  return bool(_ORDER_BY.search(text))


def _canonical(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
  return [tuple(r) for r in rows]


def _same(pred: list[tuple], gold: list[tuple], ordered: bool, semantics: str) -> bool:
  if semantics == "set":
    return set(pred) == set(gold)
  if ordered:
    return pred == gold
  return len(pred) == len(gold) and collections.Counter(pred) == collections.Counter(gold)


def _column_key(rows: list[tuple], j: int, ordered: bool, semantics: str):
  column = [r[j] for r in rows]
  if semantics == "set":
    return frozenset(column)
  if ordered:
    return tuple(column)
  return frozenset(collections.Counter(column).items())


def results_match(pred_rows: Iterable[Sequence[Any]], gold_rows: Iterable[Sequence[Any]], *,
                  ordered: bool = False, semantics: str = "bag",
                  column_permutations: bool = False) -> bool:
  """Whether a predicted result denotes the same answer as the gold result.

  Args:
    pred_rows, gold_rows: rows as sequences of SQLite values (int, float, str, bytes, None).
    ordered: compare row order too (use ``has_top_level_order_by(gold_sql)``). Only meaningful
      with ``semantics="bag"``; set semantics ignore order.
    semantics: ``"bag"`` (multiset, Spider test-suite) or ``"set"`` (BIRD).
    column_permutations: also accept the prediction's columns in another order.
  Returns:
    bool.
  """
  if semantics not in ("bag", "set"):
    raise ValueError(f"semantics must be 'bag' or 'set', got {semantics!r}")
  pred, gold = _canonical(pred_rows), _canonical(gold_rows)
  if not pred and not gold:
    return True
  if not pred or not gold:
    return False
  width = len(gold[0])
  if any(len(r) != width for r in gold) or any(len(r) != width for r in pred):
    return False
  if _same(pred, gold, ordered, semantics):
    return True
  if not column_permutations or width < 2:
    return False
  # Gold column j may come from prediction column i only if the whole columns agree.
  pred_keys = [_column_key(pred, i, ordered, semantics) for i in range(width)]
  gold_keys = [_column_key(gold, j, ordered, semantics) for j in range(width)]
  candidates = [[i for i in range(width) if pred_keys[i] == gold_keys[j]] for j in range(width)]
  if any(not c for c in candidates):
    return False
  tried = 0

  def search(j: int, used: tuple[int, ...]) -> bool:
    nonlocal tried
    if j == width:
      tried += 1
      permuted = [tuple(r[i] for i in used) for r in pred]
      return _same(permuted, gold, ordered, semantics)
    for i in candidates[j]:
      if i not in used and tried < _MAX_PERMUTATIONS and search(j + 1, used + (i,)):
        return True
    return False

  return search(0, ())
