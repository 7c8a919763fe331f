"""Read-only, time- and size-limited execution of untrusted SQL on a SQLite database.

The SQL comes from a policy being trained, so it is treated as hostile. :func:`execute_readonly`
stacks independent layers; any one of them is enough to stop a write:

1. **Text checks** (before SQLite sees anything): a length cap, exactly one statement (a small
   scanner that understands quotes and comments finds top-level ``;``), and the first keyword must
   be ``SELECT``, ``WITH`` or ``VALUES``.
2. **Read-only open**: ``file:<path>?mode=ro`` with ``uri=True``; SQLite itself refuses every
   write (``attempt to write a readonly database``). ``immutable=1`` is optional (off by
   default): it also skips file locking, which is faster and works on read-only media, but it is
   only correct while no other process writes the file -- a concurrent writer could make a query
   read inconsistent pages.
3. **Authorizer** (``Connection.set_authorizer``), default-deny: only ``SELECT``, ``READ``,
   ``FUNCTION`` (minus a deny-list such as ``load_extension``, ``readfile``, ``writefile``) and
   ``RECURSIVE`` (recursive CTEs) are allowed. Everything else -- INSERT/UPDATE/DELETE, CREATE/DROP/
   ALTER, ATTACH/DETACH (and hence ``VACUUM INTO``), every PRAGMA (also the ``pragma_*``
   table-valued functions), transactions and savepoints -- is denied at prepare time.
4. **Connection hardening**: ``PRAGMA query_only=ON`` (issued before the authorizer is
   installed), extension loading disabled where the build supports it, and SQLite limits: no
   attached databases, a cap on string/blob length (``SELECT zeroblob(1e9)`` fails) and on SQL
   length.
5. **Deadline**: a progress handler aborts the virtual machine once the wall-clock deadline
   passes, during ``execute`` and during fetching.
6. **Row and byte caps**: at most ``max_rows + 1`` rows are fetched; one more than ``max_rows``,
   or more than ``max_result_bytes`` of data, is an error.

Between VM instructions the deadline holds, but one call of a built-in function (a huge
``printf`` width, ``instr`` over a huge string, ``zeroblob``) runs to its end: SQLite's limits
(value length, expression depth, compound selects, program size) bound what such a call can be
asked to do, and untrusted SQL runs in a killable worker process with a memory cap
(:mod:`jaxrl_llm.envs.text2sql.worker`) so that nothing it does can hold or grow the trainer.

The database file is never written (tests hash it before and after an adversarial suite).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from typing import Any, Callable

# Result kinds.
OK, SYNTAX, FORBIDDEN, TIMEOUT, ROW_LIMIT, RUNTIME = (
    "ok", "syntax", "forbidden", "timeout", "row_limit", "runtime")
ERROR_KINDS = (SYNTAX, FORBIDDEN, TIMEOUT, ROW_LIMIT, RUNTIME)

# SQL functions a query may never call, even where the SQLite build provides them.
DENIED_FUNCTIONS = frozenset({
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "sqlite_dbpage",
    "sqlar_compress", "sqlar_uncompress", "zipfile", "fsdir", "lsdir",
})

_ALLOWED_FIRST_KEYWORDS = ("select", "with", "values")
# The largest string or blob a query may build (bytes); SQLite's default is 1e9. One built-in
# function call runs to its end without reaching the progress handler, so this (with the
# expression, compound-select and program-size limits below) is what bounds a single call's work.
_MAX_VALUE_BYTES = 1_000_000
# SQLite's own limits, set on every connection before the query is prepared.
_SQLITE_LIMITS = (("SQLITE_LIMIT_ATTACHED", 0), ("SQLITE_LIMIT_LENGTH", _MAX_VALUE_BYTES),
                  ("SQLITE_LIMIT_EXPR_DEPTH", 100), ("SQLITE_LIMIT_COMPOUND_SELECT", 50),
                  ("SQLITE_LIMIT_VDBE_OP", 50_000), ("SQLITE_LIMIT_FUNCTION_ARG", 32),
                  ("SQLITE_LIMIT_LIKE_PATTERN_LENGTH", 1000),
                  ("SQLITE_LIMIT_VARIABLE_NUMBER", 16), ("SQLITE_LIMIT_TRIGGER_DEPTH", 1),
                  ("SQLITE_LIMIT_WORKER_THREADS", 0))


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  """The outcome of one query.

  Attributes:
    kind: ``"ok"`` or one of ``"syntax"``, ``"forbidden"``, ``"timeout"``, ``"row_limit"``,
      ``"runtime"``.
    rows: the result rows as tuples (empty unless ``kind == "ok"``).
    columns: the result column names (empty unless ``kind == "ok"``).
    error: a human-readable message for failures ("" when ok).
    elapsed_s: wall-clock seconds spent, open and fetch included.
  """

  kind: str
  rows: tuple[tuple[Any, ...], ...] = ()
  columns: tuple[str, ...] = ()
  error: str = ""
  elapsed_s: float = 0.0

  @property
  def ok(self) -> bool:
    """True when the query ran to completion within every limit."""
    return self.kind == OK


def split_statements(sql: str) -> list[str]:
  """Splits ``sql`` at top-level semicolons, respecting quotes and comments.

  Quotes are ``'...'``, ``"..."``, ```...``` and ``[...]`` (SQLite's identifier brackets);
  comments are ``-- ...`` to end of line and ``/* ... */``. An unterminated quote or comment runs
  to the end of the text (SQLite then reports the syntax error).

  Args:
    sql: the text.
  Returns:
    the statements, stripped, with empty ones (only whitespace/comments or nothing between two
    ``;``) left out.
  """
  pieces, start, i, n = [], 0, 0, len(sql)
  while i < n:
    ch = sql[i]
    if ch in "'\"`[":
      close = "]" if ch == "[" else ch
      j = i + 1
      while j < n:
        if sql[j] == close:
          if close != "]" and j + 1 < n and sql[j + 1] == close:  # Doubled quote escapes.
            j += 2
            continue
          break
        j += 1
      i = j + 1
    elif sql.startswith("--", i):
      j = sql.find("\n", i)
      i = n if j < 0 else j + 1
    elif sql.startswith("/*", i):
      j = sql.find("*/", i + 2)
      i = n if j < 0 else j + 2
    elif ch == ";":
      pieces.append(sql[start:i])
      start = i = i + 1
    else:
      i += 1
  pieces.append(sql[start:])
  return [p.strip() for p in pieces if _strip_comments(p).strip()]


def _strip_comments(sql: str) -> str:
  """``sql`` with leading comments and whitespace removed (only the leading ones)."""
  text = sql
  while True:
    text = text.lstrip()
    if text.startswith("--"):
      j = text.find("\n")
      text = "" if j < 0 else text[j + 1:]
    elif text.startswith("/*"):
      j = text.find("*/")
      text = "" if j < 0 else text[j + 2:]
    else:
      return text


def _first_keyword(sql: str) -> str:
  text = _strip_comments(sql).lstrip("( \t\r\n")
  word = []
  for ch in text:
    if not (ch.isalpha() or ch == "_"):
      break
    word.append(ch)
  return "".join(word).lower()


def _authorizer(action: int, arg1: Any, arg2: Any, db_name: Any, trigger: Any) -> int:
  """Default-deny SQLite authorizer for read-only queries."""
  del arg1, db_name, trigger
  if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
    return sqlite3.SQLITE_OK
  if action == sqlite3.SQLITE_FUNCTION:
    name = str(arg2 or "").lower()
    return sqlite3.SQLITE_DENY if name in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
  return sqlite3.SQLITE_DENY


def _progress(deadline: float) -> Callable[[], int]:
  def handler() -> int:
    return 1 if time.monotonic() > deadline else 0  # Non-zero aborts the statement.
  return handler


def open_readonly(db_path: str | os.PathLike, *, immutable: bool = False) -> sqlite3.Connection:
  """Opens an existing database read-only through a ``file:`` URI (no file is ever created).

  Args:
    db_path: the ``.sqlite`` file; it must exist.
    immutable: add ``immutable=1`` (no locking; only safe when nobody writes the file meanwhile).
  Returns:
    a ``sqlite3.Connection`` in read-only mode (no authorizer; see :func:`execute_readonly`).
  Raises:
    FileNotFoundError: the file does not exist.
  """
  path = os.path.abspath(os.fspath(db_path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"SQLite database not found: {path}")
  # Percent-encode what a URI path may not contain verbatim.
  quoted = path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")
  uri = f"file:{quoted}?mode=ro" + ("&immutable=1" if immutable else "")
  return sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)


def _classify(err: BaseException, timed_out: bool) -> str:
  if timed_out:
    return TIMEOUT
  msg = str(err).lower()
  if "not authorized" in msg or "readonly" in msg or "read-only" in msg or "prohibited" in msg:
    return FORBIDDEN
  if "syntax error" in msg or "incomplete input" in msg or "unrecognized token" in msg:
    return SYNTAX
  if isinstance(err, sqlite3.ProgrammingError) and "one statement" in msg:
    return FORBIDDEN
  return RUNTIME


def execute_readonly(db_path: str | os.PathLike, sql: str, *, timeout_s: float = 2.0,
                     max_rows: int = 10_000, max_sql_chars: int = 10_000,
                     immutable: bool = False, max_result_bytes: int = 4 << 20,
                     heap_limit_bytes: int = 0) -> ExecutionResult:
  """Runs one untrusted SELECT on ``db_path`` under every safety layer of this module.

  Never raises for a bad query (the outcome is in the result); a missing database file does raise,
  since that is a configuration error, not a policy error.

  Args:
    db_path: the ``.sqlite`` file.
    sql: one statement; a trailing ``;`` is fine, a second statement is ``"forbidden"``.
    timeout_s: wall-clock budget for opening, running and fetching.
    max_rows: more result rows than this is a ``"row_limit"`` error.
    max_sql_chars: longer SQL text is ``"forbidden"`` without being parsed.
    immutable: open with ``immutable=1`` (see the module docstring).
    max_result_bytes: more result data than this (text and blobs by length, 8 bytes per other
      value) is a ``"row_limit"`` error.
    heap_limit_bytes: if > 0, ``PRAGMA hard_heap_limit`` (process-wide: for a worker process of
      its own, :class:`~jaxrl_llm.envs.text2sql.worker.SQLWorkerPool`); SQLite fails the query
      with "out of memory" instead of growing past it.
  Returns:
    :class:`ExecutionResult`.
  Raises:
    FileNotFoundError: ``db_path`` does not exist.
  """
  start = time.monotonic()
  deadline = start + timeout_s

  def fail(kind: str, error: str) -> ExecutionResult:
    return ExecutionResult(kind=kind, error=error, elapsed_s=time.monotonic() - start)

  if not isinstance(sql, str):
    return fail(SYNTAX, f"SQL must be a string, got {type(sql).__name__}")
  if len(sql) > max_sql_chars:
    return fail(FORBIDDEN,
                f"SQL has {len(sql)} characters, more than max_sql_chars={max_sql_chars}")
  if "\x00" in sql:
    return fail(SYNTAX, "SQL contains a NUL character")
  statements = split_statements(sql)
  if not statements:
    return fail(SYNTAX, "empty SQL")
  if len(statements) > 1:
    return fail(FORBIDDEN, f"only one statement is allowed, found {len(statements)}")
  statement = statements[0]
  keyword = _first_keyword(statement)
  if keyword not in _ALLOWED_FIRST_KEYWORDS:
    return fail(FORBIDDEN, f"only SELECT/WITH/VALUES queries are allowed, got {keyword!r}")

  conn = open_readonly(db_path, immutable=immutable)
  timed_out = False
  try:
    conn.execute("PRAGMA query_only = ON")
    if hasattr(conn, "enable_load_extension"):
      conn.enable_load_extension(False)
    if heap_limit_bytes > 0:
      conn.execute(f"PRAGMA hard_heap_limit = {int(heap_limit_bytes)}")
    for name, value in _SQLITE_LIMITS:
      if hasattr(sqlite3, name):  # Python 3.11 has them all; older SQLite builds may not.
        conn.setlimit(getattr(sqlite3, name), value)
    conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, 4 * max(max_sql_chars, 1000))  # UTF-8 bytes.
    conn.set_authorizer(_authorizer)
    handler = _progress(deadline)
    conn.set_progress_handler(handler, 1000)
    try:
      cursor = conn.execute(statement)
      rows, size = [], 0
      while len(rows) <= max_rows:
        row = cursor.fetchone()
        if row is None:
          break
        size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)
        if size > max_result_bytes:
          return fail(ROW_LIMIT, f"result limit: the query returns more than "
                      f"max_result_bytes={max_result_bytes} bytes")
        rows.append(row)
      columns = tuple(d[0] for d in (cursor.description or ()))
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as e:
      timed_out = time.monotonic() > deadline
      return fail(_classify(e, timed_out), f"{type(e).__name__}: {e}")
    if len(rows) > max_rows:
      return fail(ROW_LIMIT, f"row limit: the query returns more than max_rows={max_rows} rows")
    if time.monotonic() > deadline:
      return fail(TIMEOUT, f"took longer than timeout_s={timeout_s}")
    return ExecutionResult(kind=OK, rows=tuple(tuple(r) for r in rows), columns=columns,
                           elapsed_s=time.monotonic() - start)
  finally:
    conn.close()
