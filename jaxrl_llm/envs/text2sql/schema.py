"""Reading a SQLite schema (read-only) and rendering it, with the question, into a prompt.

Two schema styles:

* ``"create"``: the ``CREATE TABLE`` statements exactly as stored in ``sqlite_master`` (what most
  Text2SQL prompts use), each optionally followed by ``/* rows of t: (..), (..) */``;
* ``"compact"``: ``t(a,b,c)`` per table, optionally followed by ``[(..),(..)]`` sample rows; a
  few dozen characters per table, for models with a context of a few hundred characters.

The prompt is ``Schema:<sep><tables joined by sep><sep>[Evidence: ..<sep>]Question: ..<sep>SQL:``.
The character-level tokenizer of the tiny models has no newline, so the synthetic task uses
``separator=" "``; the default ``"\\n"`` suits subword tokenizers. Statements stored with internal
newlines are collapsed to single spaces whenever the separator has no newline.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from jaxrl_llm.envs.text2sql.execution import open_readonly

SCHEMA_STYLES = ("create", "compact")
_MAX_VALUE_CHARS = 30


@dataclasses.dataclass(frozen=True)
class TableSchema:
  """One table of a database.

  Attributes:
    name: the table name.
    create_sql: its ``CREATE TABLE`` statement from ``sqlite_master``.
    columns: column names in declaration order.
    sample_rows: the first rows of the table (as many as were asked for when reading).
  """

  name: str
  create_sql: str
  columns: tuple[str, ...]
  sample_rows: tuple[tuple[Any, ...], ...] = ()


def _quote_identifier(name: str) -> str:
  return '"' + name.replace('"', '""') + '"'


def read_schema(db_path: str | os.PathLike, *, sample_rows: int = 0,
                include_views: bool = False) -> list[TableSchema]:
  """The user tables of a database (``sqlite_*`` internals excluded), in creation order.

  Opens the file read-only (``mode=ro``); the file is not modified.

  Args:
    db_path: the ``.sqlite`` file.
    sample_rows: read the first ``k`` rows of each table (``SELECT * ... LIMIT k``).
    include_views: also list views.
  Returns:
    list of :class:`TableSchema`.
  Raises:
    FileNotFoundError: the file does not exist.
  """
  kinds = ("table", "view") if include_views else ("table",)
  conn = open_readonly(db_path)
  try:
    entries = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type IN (%s) AND name NOT LIKE 'sqlite_%%' "
        "AND sql IS NOT NULL ORDER BY rowid" % ",".join("?" * len(kinds)), kinds).fetchall()
    tables = []
    for name, create_sql in entries:
      columns = tuple(r[0] for r in conn.execute(
          "SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,)))
      rows: tuple[tuple[Any, ...], ...] = ()
      if sample_rows > 0:
        cursor = conn.execute(f"SELECT * FROM {_quote_identifier(name)} LIMIT ?", (sample_rows,))
        rows = tuple(tuple(r) for r in cursor.fetchall())
      tables.append(TableSchema(name=name, create_sql=create_sql.strip(), columns=columns,
                                sample_rows=rows))
    return tables
  finally:
    conn.close()


def render_value(value: Any) -> str:
  """A SQL-literal rendering of one value for prompts (long text is cut to 30 characters)."""
  if value is None:
    return "NULL"
  if isinstance(value, bytes):
    return f"X'{value[:16].hex()}'"
  if isinstance(value, str):
    text = value if len(value) <= _MAX_VALUE_CHARS else value[:_MAX_VALUE_CHARS] + "..."
    text = " ".join(text.split())
    return "'" + text.replace("'", "''") + "'"
  return repr(value) if isinstance(value, float) else str(value)


def render_table(table: TableSchema, *, style: str = "create", sample_rows: int = 0,
                 separator: str = "\n") -> str:
  """One table in ``style`` with up to ``sample_rows`` of its (already read) rows."""
  if style not in SCHEMA_STYLES:
    raise ValueError(f"schema style must be one of {SCHEMA_STYLES}, got {style!r}")
  rows = table.sample_rows[:max(sample_rows, 0)]
  rendered_rows = ["(" + ",".join(render_value(v) for v in r) + ")" for r in rows]
  if style == "compact":
    text = f"{table.name}({','.join(table.columns)})"
    return text + ("[" + ",".join(rendered_rows) + "]" if rendered_rows else "")
  create = table.create_sql if "\n" in separator else " ".join(table.create_sql.split())
  if rendered_rows:
    create += f"{separator}/* rows of {table.name}: {', '.join(rendered_rows)} */"
  return create


def render_schema(tables: Sequence[TableSchema], *, style: str = "create", sample_rows: int = 0,
                  separator: str = "\n") -> str:
  """All tables rendered with :func:`render_table`, joined by ``separator``."""
  return separator.join(render_table(t, style=style, sample_rows=sample_rows, separator=separator)
                        for t in tables)


def render_prompt(question: str, schema: Sequence[TableSchema] | str, evidence: str = "", *,
                  separator: str = "\n", sample_rows: int = 0, style: str = "create") -> str:
  """The prompt text for one question.

  Args:
    question: the natural-language question.
    schema: tables from :func:`read_schema`, or an already rendered schema string (used as is).
    evidence: BIRD's external-knowledge hint; left out when empty.
    separator: between the schema's tables and between the prompt's parts.
    sample_rows: sample rows shown per table (at most as many as were read).
    style: ``"create"`` or ``"compact"`` (ignored when ``schema`` is a string).
  Returns:
    ``"Schema:{sep}{schema}{sep}[Evidence: {evidence}{sep}]Question: {question}{sep}SQL:"``.
  """
  if isinstance(schema, str):
    schema_text = schema
  else:
    schema_text = render_schema(schema, style=style, sample_rows=sample_rows, separator=separator)
  if "\n" not in separator:  # Keep the prompt on one line when the separator is.
    question, evidence = " ".join(question.split()), " ".join(evidence.split())
  parts = [f"Schema:{separator}{schema_text}"]
  if evidence.strip():
    parts.append(f"Evidence: {evidence.strip()}")
  parts.append(f"Question: {question.strip()}")
  parts.append("SQL:")
  return separator.join(parts)
