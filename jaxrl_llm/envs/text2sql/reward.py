"""Text2SQL rewards: SQL extraction, execution match against the gold query, and a format term.

``make_text2sql_reward(db)`` returns a reward function in the repo's interface
(:mod:`jaxrl_llm.rewards.base`), ``fn(prompts, completions, *, db_id, answer, **_) -> float32 [B]``:

* ``1.0`` if the extracted prediction executes and its result matches the gold result
  (:func:`~jaxrl_llm.envs.text2sql.compare.results_match`; ordered iff the gold has a top-level
  ``ORDER BY``);
* ``executable_credit`` (default 0) if it executes but does not match;
* ``0.0`` otherwise (syntax error, forbidden statement, time-out, too many rows, no SQL).

Both queries run through :func:`~jaxrl_llm.envs.text2sql.execution.execute_readonly` with the
same limits, in killable worker processes (:mod:`jaxrl_llm.envs.text2sql.worker`). A gold query
that fails is a dataset error: ``on_gold_error="raise"`` (default) raises a ``ValueError`` naming
the row, ``"nan"`` marks only that row unscorable. Gold results are computed once per (database
file, gold SQL, limits) for the whole process (bounded, thread-safe).

A malformed completion never raises; databases are only ever opened read-only.
"""

from __future__ import annotations

import collections
import os
import re
import threading
from typing import Any, Callable, Sequence

import numpy as np

from jaxrl_llm.envs.text2sql.compare import has_top_level_order_by, results_match
from jaxrl_llm.envs.text2sql.dataset import as_resolver
from jaxrl_llm.envs.text2sql.execution import ExecutionResult, split_statements
from jaxrl_llm.envs.text2sql.worker import QueryLimits, SQLWorkerPool, shared_pool

_CLOSED_FENCE = re.compile(r"```[ \t]*sql\b(.*?)```", re.IGNORECASE | re.DOTALL)
_OPEN_FENCE = re.compile(r"```[ \t]*sql\b", re.IGNORECASE)
_FORMAT_MAX_CHARS = 10_000


def extract_sql(completion: str) -> str:
  """The SQL in a completion.

  The body of the last closed Markdown code fence marked ``sql``; else, if such a fence was opened
  and never closed (a truncated generation), everything after it; else the whole completion.
  Surrounding whitespace and trailing semicolons are removed. Never raises (non-strings give "").

  Args:
    completion: the generated text.
  Returns:
    str (possibly empty).
  """
  if not isinstance(completion, str):
    return ""
  blocks = _CLOSED_FENCE.findall(completion)
  if blocks:
    text = blocks[-1]
  else:
    opened = list(_OPEN_FENCE.finditer(completion))
    text = completion[opened[-1].end():] if opened else completion
  text = text.strip()
  while text.endswith(";"):
    text = text[:-1].rstrip()
  return text


def is_single_select(sql: str, *, max_chars: int = _FORMAT_MAX_CHARS) -> bool:
  """Whether ``sql`` is exactly one statement that sqlglot (SQLite dialect) parses as a query
  (``SELECT``, a compound such as ``UNION``, a ``WITH`` query or a parenthesised one).

  Never raises.
  """
  try:
    if not isinstance(sql, str) or not sql.strip() or len(sql) > max_chars:
      return False
    if len(split_statements(sql)) != 1:
      return False
    import sqlglot
    from sqlglot import exp

    trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
    return len(trees) == 1 and isinstance(trees[0], exp.Query)
  except Exception:  # noqa: BLE001 -- parser errors of any kind mean "not valid".
    return False


def sql_format(prompts: list[str], completions: list[str], **_: Any) -> np.ndarray:
  """1.0 where the extracted SQL parses as a single SELECT query (see :func:`is_single_select`).

  Args:
    prompts, completions: ``B`` strings.
  Returns:
    float32 ``[B]`` in {0, 1}.
  """
  return np.asarray([float(is_single_select(extract_sql(c))) for c in completions], np.float32)


_GOLD_CACHE: collections.OrderedDict = collections.OrderedDict()
_GOLD_LOCK = threading.Lock()
_GOLD_CACHE_SIZE = 65536


def _gold_key(path: str, gold_sql: str, limits: QueryLimits) -> tuple:
  st = os.stat(path)  # a rewritten database file is a new key.
  return (os.path.realpath(path), st.st_mtime_ns, st.st_size, gold_sql, limits)


def gold_result(pool: SQLWorkerPool, path: str, gold_sql: str,
                limits: QueryLimits) -> tuple[ExecutionResult, bool]:
  """The gold query's result and whether it is ordered, computed once per (database file, SQL,
  limits) for the whole process (bounded LRU; failed gold queries are not cached)."""
  key = _gold_key(path, gold_sql, limits)
  with _GOLD_LOCK:
    if key in _GOLD_CACHE:
      _GOLD_CACHE.move_to_end(key)
      return _GOLD_CACHE[key]
  result = pool.execute(path, extract_sql(gold_sql), limits)
  entry = (result, has_top_level_order_by(gold_sql))
  if result.ok:
    with _GOLD_LOCK:
      _GOLD_CACHE[key] = entry
      while len(_GOLD_CACHE) > _GOLD_CACHE_SIZE:
        _GOLD_CACHE.popitem(last=False)
  return entry


def make_text2sql_reward(db: str | os.PathLike | Callable[[str], Any], *, timeout_s: float = 2.0,
                         max_rows: int = 10_000, max_sql_chars: int = 4_000,
                         executable_credit: float = 0.0, semantics: str = "bag",
                         column_permutations: bool = False, on_gold_error: str = "raise",
                         immutable: bool = False, max_result_bytes: int = 4 << 20,
                         pool: SQLWorkerPool | None = None) -> Callable[..., np.ndarray]:
  """Builds the execution-match reward.

  Every query (prediction and gold) runs in a killable worker process of ``pool``
  (:class:`~jaxrl_llm.envs.text2sql.worker.SQLWorkerPool`; default: the process-wide shared pool)
  under the limits below: a hostile query costs its own row only (reward 0), never the batch.

  Args:
    db: a directory holding ``<db_id>.sqlite`` or ``<db_id>/<db_id>.sqlite``, or a callable
      ``db_id -> path`` (e.g. :func:`~jaxrl_llm.envs.text2sql.dataset.spider_db_resolver`).
    timeout_s, max_rows, max_sql_chars, immutable, max_result_bytes: limits for every execution,
      see :func:`~jaxrl_llm.envs.text2sql.execution.execute_readonly`.
    executable_credit: reward for a prediction that executes but does not match (e.g. 0.1).
    semantics: ``"bag"`` (Spider test-suite) or ``"set"`` (BIRD).
    column_permutations: accept a permutation of the gold's columns.
    on_gold_error: ``"raise"`` (ValueError naming the row) or ``"nan"`` (that row unscorable).
    pool: the worker pool.
  Returns:
    ``fn(prompts, completions, *, db_id, answer, **_) -> float32 [B]``: values in
    ``{0, executable_credit, 1}`` (NaN only for failed gold rows under ``"nan"``).
  """
  if semantics not in ("bag", "set"):
    raise ValueError(f"semantics must be 'bag' or 'set', got {semantics!r}")
  if on_gold_error not in ("raise", "nan"):
    raise ValueError(f"on_gold_error must be 'raise' or 'nan', got {on_gold_error!r}")
  if not 0.0 <= executable_credit <= 1.0:
    raise ValueError(f"executable_credit must be in [0, 1], got {executable_credit}")
  resolve = as_resolver(db)
  limits = QueryLimits(timeout_s=timeout_s, max_rows=max_rows, max_sql_chars=max_sql_chars,
                       immutable=immutable, max_result_bytes=max_result_bytes)

  def score(pred: ExecutionResult, gold: ExecutionResult, ordered: bool) -> float:
    if not pred.ok:
      return 0.0
    try:
      if results_match(pred.rows, gold.rows, ordered=ordered, semantics=semantics,
                       column_permutations=column_permutations):
        return 1.0
    except Exception:  # noqa: BLE001 -- a completion must never crash the reward.
      return 0.0
    return float(executable_credit)

  def text2sql_reward(prompts: Sequence[str], completions: Sequence[str], *,
                      db_id: Sequence[str], answer: Sequence[str], **_: Any) -> np.ndarray:
    """Execution match of each completion against its row's gold SQL; float32 ``[B]``."""
    b = len(completions)
    if len(db_id) != b or len(answer) != b:
      raise ValueError(f"text2sql reward: {b} completions but {len(db_id)} db_id and "
                       f"{len(answer)} answer values")
    workers = pool or shared_pool()
    out = np.zeros((b,), np.float32)
    paths = [resolve(d) for d in db_id]
    golds = [gold_result(workers, paths[i], str(answer[i]), limits) for i in range(b)]
    todo = []
    for i in range(b):
      gold = golds[i][0]
      if not gold.ok:
        message = (f"text2sql reward: row {i} (db_id={db_id[i]!r}): the gold SQL failed with "
                   f"{gold.kind}: {gold.error}; gold SQL: {str(answer[i])[:200]!r}")
        if on_gold_error == "raise":
          raise ValueError(message)
        out[i] = np.nan
        continue
      sql = extract_sql(completions[i])
      if sql:
        todo.append((i, sql))
    preds = workers.execute_many([(paths[i], sql) for i, sql in todo], limits)
    for (i, _), pred in zip(todo, preds):
      out[i] = score(pred, *golds[i])
    return out

  return text2sql_reward
