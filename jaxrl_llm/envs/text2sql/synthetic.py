"""A small synthetic Text2SQL task: five tiny SQLite databases and templated questions.

Every database has the same shape, a main table with a foreign key to a parent table::

    company: emp(id,name,role,salary,age,dept_id)       dept(id,name,city)
    shop:    item(id,name,cat,price,stock,brand_id)     brand(id,name,country)
    school:  student(id,name,major,score,age,club_id)   club(id,name,room)
    library: book(id,title,genre,pages,year,author_id)  author(id,name,country)
    zoo:     animal(id,name,species,weight,age,keeper_id) keeper(id,name,shift)

Names are short and lowercase so that a compact prompt (``emp(id,name,...) dept(...) Question:
... SQL:``) stays around 100-150 characters, within a character-level model's context; all text
is printable ASCII with no newline.

Question templates, by difficulty:

* ``easy``: look up a value of a named row; list rows by category; list rows above/below a value;
* ``medium``: ``COUNT(*)`` with a filter; ``MAX``/``MIN``/``AVG`` over all rows or one category;
* ``hard``: arg-max/arg-min (``ORDER BY ... LIMIT 1``) and top-k lists (ordered results);
* ``extra``: ``GROUP BY`` counts/aggregates, and ``JOIN`` with the parent table (look-ups, lists,
  per-parent counts).

Every gold query is executed while generating; only those that return a non-empty,
well-defined result are kept (a top-k question is dropped if a tie makes its answer ambiguous).
Questions are drawn without replacement with equal total weight per template and database, so
(question, database) pairs never repeat across splits.

Determinism: the databases and rows depend only on ``seed`` (and ``rows_per_table``); the same
seed gives byte-identical ``.sqlite`` files with the same SQLite library (the file header records
the library version). Existing files with identical bytes are left untouched; a file with
different bytes (another seed) is replaced atomically (write to a temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import tempfile
from typing import Any, Sequence

import numpy as np

from jaxrl_llm.envs.text2sql.dataset import DbResolver, directory_resolver
from jaxrl_llm.envs.text2sql.execution import execute_readonly
from jaxrl_llm.envs.text2sql.schema import read_schema, render_prompt

DIFFICULTIES = ("easy", "medium", "hard", "extra")


@dataclasses.dataclass(frozen=True)
class _Numeric:
  column: str
  phrase: str
  low: int
  high: int


@dataclasses.dataclass(frozen=True)
class _Domain:
  db_id: str
  main: str
  noun: str
  plural: str
  label: str
  cat: str
  cat_phrase: str
  cat_values: tuple[str, ...]
  nums: tuple[_Numeric, _Numeric]
  fk: str
  parent: str
  parent_noun: str
  parent_attr: str
  parent_names: tuple[str, ...]
  parent_attr_values: tuple[str, ...]


DOMAINS = (
    _Domain("company", "emp", "employee", "employees", "name", "role", "role",
            ("dev", "ops", "hr", "qa", "sales"),
            (_Numeric("salary", "salary", 2000, 9000), _Numeric("age", "age", 20, 65)),
            "dept_id", "dept", "department", "city",
            ("north", "south", "east", "west", "core"), ("rome", "oslo", "lima", "kyiv", "pune")),
    _Domain("shop", "item", "item", "items", "name", "cat", "category",
            ("toy", "food", "tool", "book"),
            (_Numeric("price", "price", 1, 300), _Numeric("stock", "stock", 0, 500)),
            "brand_id", "brand", "brand", "country",
            ("acme", "zeta", "nova", "orbit", "pixel"), ("peru", "chad", "fiji", "mali", "laos")),
    _Domain("school", "student", "student", "students", "name", "major", "major",
            ("math", "art", "bio", "cs", "law"),
            (_Numeric("score", "score", 40, 100), _Numeric("age", "age", 17, 30)),
            "club_id", "club", "club", "room",
            ("chess", "drama", "choir", "robot", "debate"),
            ("hall", "gym", "lab", "attic", "barn")),
    _Domain("library", "book", "book", "books", "title", "genre", "genre",
            ("scifi", "poem", "drama", "crime"),
            (_Numeric("pages", "page count", 80, 900), _Numeric("year", "year", 1900, 2020)),
            "author_id", "author", "author", "country",
            ("ines", "omar", "yuki", "ravi", "ada"), ("spain", "chile", "egypt", "nepal", "cuba")),
    _Domain("zoo", "animal", "animal", "animals", "name", "species", "species",
            ("lion", "bear", "wolf", "seal", "owl"),
            (_Numeric("weight", "weight", 1, 400), _Numeric("age", "age", 1, 30)),
            "keeper_id", "keeper", "keeper", "shift",
            ("tom", "eva", "max", "lin", "ned"), ("day", "night", "dawn", "dusk", "noon")),
)
DB_IDS = tuple(d.db_id for d in DOMAINS)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_AGGS = (("MAX", "highest"), ("MIN", "lowest"), ("AVG", "average"))


@dataclasses.dataclass(frozen=True)
class SyntheticQuestion:
  """One templated question with its gold SQL (``template`` and ``difficulty`` as in the module
  docstring)."""

  db_id: str
  template: str
  difficulty: str
  question: str
  sql: str


def _names(rng: np.random.Generator, n: int) -> list[str]:
  """``n`` distinct two-syllable lowercase names (``bako``, ``milu``, ...)."""
  syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
  codes = rng.choice(len(syllables) ** 2, size=n, replace=False)
  return [syllables[int(c) // len(syllables)] + syllables[int(c) % len(syllables)] for c in codes]


def _build_database(domain: _Domain, rng: np.random.Generator, rows: int) -> sqlite3.Connection:
  """An in-memory database for ``domain`` with ``rows`` main-table rows."""
  conn = sqlite3.connect(":memory:")
  n1, n2 = domain.nums
  conn.execute(f"CREATE TABLE {domain.parent} (id INTEGER PRIMARY KEY, name TEXT, "
               f"{domain.parent_attr} TEXT)")
  conn.execute(f"CREATE TABLE {domain.main} (id INTEGER PRIMARY KEY, {domain.label} TEXT, "
               f"{domain.cat} TEXT, {n1.column} INTEGER, {n2.column} INTEGER, "
               f"{domain.fk} INTEGER REFERENCES {domain.parent}(id))")
  conn.executemany(f"INSERT INTO {domain.parent} VALUES (?, ?, ?)",
                   [(i + 1, name, attr) for i, (name, attr) in
                    enumerate(zip(domain.parent_names, domain.parent_attr_values))])
  labels = _names(rng, rows)
  main_rows = []
  for i, label in enumerate(labels):
    main_rows.append((
        i + 1, label, domain.cat_values[int(rng.integers(len(domain.cat_values)))],
        int(rng.integers(n1.low, n1.high + 1)), int(rng.integers(n2.low, n2.high + 1)),
        int(rng.integers(len(domain.parent_names))) + 1))
  conn.executemany(f"INSERT INTO {domain.main} VALUES (?, ?, ?, ?, ?, ?)", main_rows)
  conn.commit()
  return conn


def _thresholds(values: list[int]) -> list[int]:
  """A few thresholds strictly inside the range of ``values`` (so filters are non-empty)."""
  ordered = sorted(values)
  out = []
  for q in (0.2, 0.4, 0.6, 0.8):
    v = ordered[int(q * (len(ordered) - 1))]
    if ordered[0] < v < ordered[-1] and v not in out:
      out.append(v)
  return out


def _candidates(domain: _Domain, conn: sqlite3.Connection) -> list[SyntheticQuestion]:
  """Every templated (question, SQL) pair for one database."""
  d = domain
  m, p = d.main, d.parent
  join = f"FROM {m} JOIN {p} ON {m}.{d.fk} = {p}.id"
  data = conn.execute(f"SELECT {d.label}, {d.cat}, {d.nums[0].column}, {d.nums[1].column}, "
                      f"{d.fk} FROM {m} ORDER BY id").fetchall()
  labels = [r[0] for r in data]
  cats = sorted({r[1] for r in data}, key=d.cat_values.index)
  used_parents = sorted({r[4] for r in data})
  out: list[SyntheticQuestion] = []

  def add(template: str, difficulty: str, question: str, sql: str) -> None:
    out.append(SyntheticQuestion(d.db_id, template, difficulty, question, sql))

  for x in labels:
    for num in d.nums:
      add("lookup_num", "easy", f"What is the {num.phrase} of {d.noun} {x}?",
          f"SELECT {num.column} FROM {m} WHERE {d.label} = '{x}'")
    add("lookup_cat", "easy", f"What is the {d.cat_phrase} of {d.noun} {x}?",
        f"SELECT {d.cat} FROM {m} WHERE {d.label} = '{x}'")
    add("join_attr", "extra",
        f"What is the {d.parent_attr} of the {d.parent_noun} of {d.noun} {x}?",
        f"SELECT {p}.{d.parent_attr} {join} WHERE {m}.{d.label} = '{x}'")
    add("join_name", "extra", f"Which {d.parent_noun} does {d.noun} {x} belong to?",
        f"SELECT {p}.name {join} WHERE {m}.{d.label} = '{x}'")
  for v in cats:
    add("filter_cat", "easy", f"List the {d.plural} with {d.cat_phrase} {v}.",
        f"SELECT {d.label} FROM {m} WHERE {d.cat} = '{v}'")
    add("count_cat", "medium", f"How many {d.plural} have {d.cat_phrase} {v}?",
        f"SELECT COUNT(*) FROM {m} WHERE {d.cat} = '{v}'")
  for j, num in enumerate(d.nums):
    values = [r[2 + j] for r in data]
    for k in _thresholds(values):
      for word, op in (("above", ">"), ("below", "<")):
        add("filter_num", "easy", f"List the {d.plural} with {num.phrase} {word} {k}.",
            f"SELECT {d.label} FROM {m} WHERE {num.column} {op} {k}")
        add("count_num", "medium", f"How many {d.plural} have {num.phrase} {word} {k}?",
            f"SELECT COUNT(*) FROM {m} WHERE {num.column} {op} {k}")
    for fn, word in _AGGS:
      add("agg", "medium", f"What is the {word} {num.phrase} of all {d.plural}?",
          f"SELECT {fn}({num.column}) FROM {m}")
      add("group_agg", "extra", f"What is the {word} {num.phrase} for each {d.cat_phrase}?",
          f"SELECT {d.cat}, {fn}({num.column}) FROM {m} GROUP BY {d.cat}")
      for v in cats:
        add("agg_cat", "medium",
            f"What is the {word} {num.phrase} of {d.plural} with {d.cat_phrase} {v}?",
            f"SELECT {fn}({num.column}) FROM {m} WHERE {d.cat} = '{v}'")
    for direction, word in (("DESC", "highest"), ("ASC", "lowest")):
      ranked = sorted(values, reverse=direction == "DESC")
      if ranked[0] != ranked[1]:  # A unique arg-max/arg-min only.
        add("argmax", "hard", f"Which {d.noun} has the {word} {num.phrase}?",
            f"SELECT {d.label} FROM {m} ORDER BY {num.column} {direction} LIMIT 1")
      for k in (2, 3, 4, 5):
        if len(set(ranked[:k + 1])) == k + 1:  # No tie inside the top k or at its boundary.
          add("topk", "hard", f"List the {k} {d.plural} with the {word} {num.phrase}.",
              f"SELECT {d.label} FROM {m} ORDER BY {num.column} {direction} LIMIT {k}")
  add("group_count", "extra", f"How many {d.plural} are there for each {d.cat_phrase}?",
      f"SELECT {d.cat}, COUNT(*) FROM {m} GROUP BY {d.cat}")
  add("join_count", "extra", f"How many {d.plural} does each {d.parent_noun} have?",
      f"SELECT {p}.name, COUNT(*) {join} GROUP BY {p}.name")
  for pid in used_parents:
    name = d.parent_names[pid - 1]
    add("join_list", "extra", f"List the {d.plural} of {d.parent_noun} {name}.",
        f"SELECT {m}.{d.label} {join} WHERE {p}.name = '{name}'")
  return out


def _serialize(conn: sqlite3.Connection) -> bytes:
  """The database image of an in-memory connection."""
  if hasattr(conn, "serialize"):
    return bytes(conn.serialize())
  with tempfile.TemporaryDirectory() as tmp:  # Python builds without sqlite3_serialize.
    path = os.path.join(tmp, "db.sqlite")
    target = sqlite3.connect(path)
    try:
      conn.backup(target)
    finally:
      target.close()
    with open(path, "rb") as f:
      return f.read()


def _write_if_changed(path: str, data: bytes) -> bool:
  """Writes ``data`` to ``path`` atomically unless the file already holds exactly ``data``.

  Returns:
    True if the file was (re)written.
  """
  if os.path.isfile(path):
    with open(path, "rb") as f:
      if f.read() == data:
        return False
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".sqlite", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return True


def synthetic_db_resolver(out_dir: str | os.PathLike) -> DbResolver:
  """``db_id -> <out_dir>/<db_id>.sqlite`` for the databases of :func:`generate_text2sql`."""
  return directory_resolver(out_dir)


def build_synthetic_databases(out_dir: str | os.PathLike, *, seed: int, rows_per_table: int = 30,
                              db_ids: Sequence[str] | None = None
                              ) -> dict[str, list[SyntheticQuestion]]:
  """Writes the databases and returns every valid templated pair per database.

  Args:
    out_dir: where ``<db_id>.sqlite`` files go (created if needed).
    seed: the generation seed.
    rows_per_table: rows of each main table (at least 8).
    db_ids: a subset of :data:`DB_IDS` (default: all).
  Returns:
    ``{db_id: [candidate, ...]}``; every candidate's gold SQL returned a non-empty result.
  """
  if rows_per_table < 8:
    raise ValueError(f"rows_per_table must be >= 8, got {rows_per_table}")
  wanted = list(db_ids) if db_ids is not None else list(DB_IDS)
  unknown = sorted(set(wanted) - set(DB_IDS))
  if unknown or not wanted:
    raise ValueError(f"unknown synthetic db_ids {unknown}; known: {list(DB_IDS)}")
  os.makedirs(out_dir, exist_ok=True)
  out = {}
  for index, domain in enumerate(DOMAINS):
    if domain.db_id not in wanted:
      continue
    rng = np.random.default_rng([seed, index])  # Independent of which other DBs are built.
    conn = _build_database(domain, rng, rows_per_table)
    try:
      data = _serialize(conn)
      candidates = _candidates(domain, conn)
    finally:
      conn.close()
    path = os.path.join(os.fspath(out_dir), f"{domain.db_id}.sqlite")
    _write_if_changed(path, data)
    kept = []
    for c in candidates:
      result = execute_readonly(path, c.sql, timeout_s=5.0, max_rows=10_000)
      if result.ok and result.rows and any(v is not None for v in result.rows[0]):
        kept.append(c)
    out[domain.db_id] = kept
  return out


def generate_text2sql(out_dir: str | os.PathLike, *, seed: int = 0, train_size: int = 1000,
                      validation_size: int = 100, test_size: int = 100,
                      rows_per_table: int = 30, db_ids: Sequence[str] | None = None,
                      schema_style: str = "compact", separator: str = " ", sample_rows: int = 0
                      ) -> dict[str, list[dict[str, str]]]:
  """Builds the synthetic databases under ``out_dir`` and returns disjoint question splits.

  Args:
    out_dir: directory for ``<db_id>.sqlite`` (see :func:`synthetic_db_resolver`).
    seed: generation seed; same seed (and arguments) => same databases and rows.
    train_size, validation_size, test_size: rows per split.
    rows_per_table: rows of each main table (more rows => more look-up questions).
    db_ids: a subset of :data:`DB_IDS` (default all five).
    schema_style, separator, sample_rows: prompt rendering (see
      :func:`~jaxrl_llm.envs.text2sql.schema.render_prompt`); the defaults give a one-line prompt
      for the character-level tokenizer.
  Returns:
    ``{"train", "validation", "test"}`` -> rows ``{"prompt", "answer" (gold SQL), "db_id",
    "question", "evidence" (""), "difficulty", "template"}``.
  Raises:
    ValueError: more rows requested than distinct questions exist (the message gives the count).
  """
  pools = build_synthetic_databases(out_dir, seed=seed, rows_per_table=rows_per_table,
                                    db_ids=db_ids)
  candidates = [c for db in sorted(pools) for c in pools[db]]
  seen: set[tuple[str, str]] = set()
  unique = []
  for c in candidates:
    if (c.db_id, c.question) not in seen:
      seen.add((c.db_id, c.question))
      unique.append(c)
  wanted = train_size + validation_size + test_size
  if min(train_size, validation_size, test_size) < 0:
    raise ValueError("split sizes must be >= 0")
  if wanted > len(unique):
    raise ValueError(f"text2sql synthetic: {wanted} questions requested (train_size + "
                     f"validation_size + test_size) but seed={seed} with rows_per_table="
                     f"{rows_per_table} has only {len(unique)} distinct ones; raise "
                     f"rows_per_table or lower the sizes")
  # Equal total weight per (database, template): look-ups (one per row) do not crowd out the
  # rarer templates.
  group_sizes: dict[tuple[str, str], int] = {}
  for c in unique:
    group_sizes[(c.db_id, c.template)] = group_sizes.get((c.db_id, c.template), 0) + 1
  weights = np.asarray([1.0 / group_sizes[(c.db_id, c.template)] for c in unique])
  rng = np.random.default_rng([seed, 1_000_003])
  order = rng.choice(len(unique), size=wanted, replace=False, p=weights / weights.sum())
  schemas = {db: read_schema(os.path.join(os.fspath(out_dir), f"{db}.sqlite"),
                             sample_rows=sample_rows) for db in pools}
  rows = []
  for index in order.tolist():
    c = unique[index]
    prompt = render_prompt(c.question, schemas[c.db_id], separator=separator,
                           sample_rows=sample_rows, style=schema_style)
    rows.append({"prompt": prompt, "answer": c.sql, "db_id": c.db_id, "question": c.question,
                 "evidence": "", "difficulty": c.difficulty, "template": c.template})
  n1, n2 = train_size, train_size + validation_size
  return {"train": rows[:n1], "validation": rows[n1:n2], "test": rows[n2:]}


def template_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
  """``{template: count}`` of synthetic rows (for reporting the task's mix)."""
  counts: dict[str, int] = {}
  for row in rows:
    counts[row.get("template", "")] = counts.get(row.get("template", ""), 0) + 1
  return dict(sorted(counts.items()))
