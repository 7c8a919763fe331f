"""Text2SQL examples, dataset rows, database-path resolution and the Spider / BIRD loaders.

A row (what the data pipeline and the reward see) is a dict of strings::

    {"prompt": <rendered schema + question>, "answer": <gold SQL>, "db_id": <database id>,
     "question": <question>, "evidence": <BIRD hint or "">, "difficulty": <label or "">}

The reward resolves ``db_id`` to a ``.sqlite`` file with a :class:`DbResolver`; ``db_id`` must be
a plain name (no path separators, no ``..``) so a dataset row can never point outside its root.

Assumed on-disk layouts (the official releases, as we know them; nothing is downloaded here):

* **Spider** (Yu et al. 2018): ``<root>/train_spider.json``, ``<root>/train_others.json``,
  ``<root>/dev.json`` (and, for the 2023 test release, ``<root>/test.json``); every entry has
  ``question``, ``query`` (the gold SQL) and ``db_id``. Databases are
  ``<root>/database/<db_id>/<db_id>.sqlite`` (test: ``<root>/test_database/...``).
* **BIRD** (Li et al. 2023): ``<root>/train/train.json`` and ``<root>/dev/dev.json``; every entry
  has ``question``, ``SQL``, ``db_id`` and ``evidence`` (dev entries also ``difficulty``).
  Databases are ``<root>/<split>/<split>_databases/<db_id>/<db_id>.sqlite``. ``root`` may also be
  the split directory itself (the one holding ``<split>.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxrl_llm.envs.text2sql.schema import read_schema, render_prompt


class DatasetFormatError(ValueError):
  """A Text2SQL dataset file or row is malformed; the message names the file/row and field."""


def check_db_id(db_id: Any, where: str = "db_id") -> str:
  """Returns ``db_id`` if it is a safe plain name, else raises :class:`DatasetFormatError`.

  Args:
    db_id: the database id from a row.
    where: the location to name in the error (e.g. ``"train row 3 field 'db_id'"``).
  """
  if not isinstance(db_id, str) or not db_id.strip():
    raise DatasetFormatError(f"{where}: expected a non-empty string, got {db_id!r}")
  if "/" in db_id or "\\" in db_id or "\x00" in db_id or db_id in (".", "..") or (
      db_id != db_id.strip()):
    raise DatasetFormatError(f"{where}: {db_id!r} is not a plain database name")
  return db_id


@dataclasses.dataclass(frozen=True)
class Text2SQLExample:
  """One question over one database.

  Attributes:
    question: the natural-language question.
    db_id: the database id (a plain name; see :func:`check_db_id`).
    gold_sql: the reference SQL.
    evidence: BIRD's external-knowledge hint ("" when absent).
    difficulty: a difficulty label when the dataset has one ("" otherwise).
  """

  question: str
  db_id: str
  gold_sql: str
  evidence: str = ""
  difficulty: str = ""

  def __post_init__(self):
    for name in ("question", "gold_sql"):
      value = getattr(self, name)
      if not isinstance(value, str) or not value.strip():
        raise DatasetFormatError(f"Text2SQLExample.{name}: expected a non-empty string, got "
                                 f"{value!r}")
    for name in ("evidence", "difficulty"):
      if not isinstance(getattr(self, name), str):
        raise DatasetFormatError(f"Text2SQLExample.{name}: expected a string, got "
                                 f"{getattr(self, name)!r}")
    check_db_id(self.db_id, "Text2SQLExample.db_id")


@dataclasses.dataclass(frozen=True)
class DbResolver:
  """Maps a ``db_id`` to its ``.sqlite`` file by trying path patterns in order.

  Attributes:
    patterns: paths containing ``{db_id}`` (substituted literally, not with ``str.format``).
  """

  patterns: tuple[str, ...]

  def candidates(self, db_id: str) -> list[str]:
    """The paths tried for ``db_id``, in order."""
    check_db_id(db_id)
    return [p.replace("{db_id}", db_id) for p in self.patterns]

  def __call__(self, db_id: str) -> str:
    """The first existing candidate path.

    Raises:
      FileNotFoundError: none exists (the message lists the paths tried).
      DatasetFormatError: ``db_id`` is not a plain name.
    """
    tried = self.candidates(db_id)
    for path in tried:
      if os.path.isfile(path):
        return path
    raise FileNotFoundError(f"database {db_id!r} not found; tried {tried}")


def directory_resolver(root: str | os.PathLike) -> DbResolver:
  """Resolves ``<root>/<db_id>.sqlite`` (the synthetic task) or ``<root>/<db_id>/<db_id>.sqlite``
  (Spider/BIRD database folders)."""
  root = os.fspath(root)
  return DbResolver((os.path.join(root, "{db_id}.sqlite"),
                     os.path.join(root, "{db_id}", "{db_id}.sqlite")))


def as_resolver(db: str | os.PathLike | Callable[[str], Any]) -> Callable[[str], str]:
  """A callable ``db_id -> path`` from a directory (see :func:`directory_resolver`) or a callable
  (wrapped so that ``db_id`` is always checked to be a plain name first)."""
  if isinstance(db, (str, os.PathLike)):
    return directory_resolver(db)
  if not callable(db):
    raise TypeError(f"expected a directory or a callable db_id -> path, got {type(db).__name__}")

  def resolve(db_id: str) -> str:
    return os.fspath(db(check_db_id(db_id)))

  return resolve


def _read_json_list(path: str, layout: str) -> list[Any]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found. Expected layout: {layout}")
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise DatasetFormatError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, list):
    raise DatasetFormatError(f"{path}: expected a JSON list of examples, got "
                             f"{type(data).__name__}")
  return data


def _examples_from(entries: list[Any], path: str, *, sql_key: str) -> list[Text2SQLExample]:
  out = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, Mapping):
      raise DatasetFormatError(f"{path} entry {i}: expected an object, got {type(entry).__name__}")
    fields = {}
    for key in ("question", sql_key, "db_id"):
      if key not in entry:
        raise DatasetFormatError(f"{path} entry {i}: missing field {key!r}")
      fields[key] = entry[key]
    try:
      out.append(Text2SQLExample(
          question=fields["question"], db_id=fields["db_id"], gold_sql=fields[sql_key],
          evidence=entry.get("evidence") or "", difficulty=str(entry.get("difficulty") or "")))
    except DatasetFormatError as e:
      raise DatasetFormatError(f"{path} entry {i}: {e}") from e
  return out


SPIDER_LAYOUT = ("<root>/{train_spider,train_others,dev,test}.json with entries {question, query, "
                 "db_id}; databases at <root>/database/<db_id>/<db_id>.sqlite "
                 "(test: <root>/test_database/<db_id>/<db_id>.sqlite)")
_SPIDER_FILES = {"train": "train_spider.json", "train_others": "train_others.json",
                 "dev": "dev.json", "test": "test.json"}

BIRD_LAYOUT = ("<root>/<split>/<split>.json (split: train or dev) with entries {question, SQL, "
               "db_id, evidence}; databases at "
               "<root>/<split>/<split>_databases/<db_id>/<db_id>.sqlite")
_BIRD_SPLITS = ("train", "dev")


def load_spider(root: str | os.PathLike, split: str = "dev") -> list[Text2SQLExample]:
  """Spider examples of ``split`` (``train``, ``train_others``, ``dev`` or ``test``).

  Raises:
    FileNotFoundError: the split file is missing (the message gives the expected layout).
    DatasetFormatError: an entry is malformed (the message names the file, entry and field).
  """
  if split not in _SPIDER_FILES:
    raise ValueError(f"Spider split must be one of {sorted(_SPIDER_FILES)}, got {split!r}")
  path = os.path.join(os.fspath(root), _SPIDER_FILES[split])
  return _examples_from(_read_json_list(path, SPIDER_LAYOUT), path, sql_key="query")


def spider_db_resolver(root: str | os.PathLike, split: str = "dev") -> DbResolver:
  """``<root>/database/<db_id>/<db_id>.sqlite`` (``test_database`` for the test split)."""
  folder = "test_database" if split == "test" else "database"
  return DbResolver((os.path.join(os.fspath(root), folder, "{db_id}", "{db_id}.sqlite"),))


def _bird_split_dir(root: str | os.PathLike, split: str) -> str:
  if split not in _BIRD_SPLITS:
    raise ValueError(f"BIRD split must be one of {_BIRD_SPLITS}, got {split!r}")
  root = os.fspath(root)
  nested = os.path.join(root, split)
  if not os.path.isfile(os.path.join(nested, f"{split}.json")) and os.path.isfile(
      os.path.join(root, f"{split}.json")):
    return root  # ``root`` is the split directory itself.
  return nested


def load_bird(root: str | os.PathLike, split: str = "dev") -> list[Text2SQLExample]:
  """BIRD examples of ``split`` (``train`` or ``dev``), with ``evidence`` and ``difficulty``.

  Raises:
    FileNotFoundError: the split file is missing (the message gives the expected layout).
    DatasetFormatError: an entry is malformed (the message names the file, entry and field).
  """
  path = os.path.join(_bird_split_dir(root, split), f"{split}.json")
  return _examples_from(_read_json_list(path, BIRD_LAYOUT), path, sql_key="SQL")


def bird_db_resolver(root: str | os.PathLike, split: str = "dev") -> DbResolver:
  """``<root>/<split>/<split>_databases/<db_id>/<db_id>.sqlite``."""
  base = os.path.join(_bird_split_dir(root, split), f"{split}_databases")
  return DbResolver((os.path.join(base, "{db_id}", "{db_id}.sqlite"),))


def examples_to_rows(examples: Iterable[Text2SQLExample], resolver: Callable[[str], str], *,
                     style: str = "create", separator: str = "\n", sample_rows: int = 0
                     ) -> list[dict[str, str]]:
  """Renders examples into dataset rows (schema read once per database).

  Args:
    examples: the examples.
    resolver: ``db_id -> .sqlite path`` (e.g. :func:`spider_db_resolver`).
    style, separator, sample_rows: as in :func:`~jaxrl_llm.envs.text2sql.schema.render_prompt`.
  Returns:
    rows ``{"prompt", "answer", "db_id", "question", "evidence", "difficulty"}`` (all str).
  Raises:
    FileNotFoundError: a database is missing.
  """
  schemas: dict[str, Any] = {}
  rows = []
  for ex in examples:
    if ex.db_id not in schemas:
      schemas[ex.db_id] = read_schema(resolver(ex.db_id), sample_rows=sample_rows)
    prompt = render_prompt(ex.question, schemas[ex.db_id], ex.evidence, separator=separator,
                           sample_rows=sample_rows, style=style)
    rows.append({"prompt": prompt, "answer": ex.gold_sql, "db_id": ex.db_id,
                 "question": ex.question, "evidence": ex.evidence, "difficulty": ex.difficulty})
  return rows


REQUIRED_FIELDS = ("prompt", "answer", "db_id")


def validate_rows(rows: Sequence[Any], *, split: str = "train") -> None:
  """Checks Text2SQL rows; raises :class:`DatasetFormatError` naming the split, row and field.

  ``prompt``, ``answer`` (gold SQL) and ``db_id`` must be non-empty strings and ``db_id`` a plain
  name; any other field present must be a string.
  """
  for i, row in enumerate(rows):
    where = f"{split} row {i}"
    if not isinstance(row, Mapping):
      raise DatasetFormatError(f"{where}: expected a dict, got {type(row).__name__}")
    for name in REQUIRED_FIELDS:
      if name not in row:
        raise DatasetFormatError(f"{where}: missing field {name!r}")
      if not isinstance(row[name], str) or not row[name].strip():
        raise DatasetFormatError(f"{where} field {name!r}: expected a non-empty string, got "
                                 f"{row[name]!r}")
    check_db_id(row["db_id"], f"{where} field 'db_id'")
    for name, value in row.items():
      if not isinstance(value, str):
        raise DatasetFormatError(f"{where} field {name!r}: expected a string, got "
                                 f"{type(value).__name__}")


def load_benchmark_rows(source: str, root: str | os.PathLike, split: str, *,
                        style: str = "create", separator: str = "\n") -> list[dict[str, str]]:
  """Rows of a Spider or BIRD split for the data pipeline, each with its database's ``db_path``.

  Our split names map onto the benchmarks' files: ``train`` -> train; ``validation`` and
  ``test`` -> dev (the public test sets ship without gold SQL for BIRD, and Spider's dev set is
  the customary held-out set).

  Args:
    source: ``"spider"`` or ``"bird"``; root: the dataset's root directory.
  Raises:
    FileNotFoundError: the questions file or a database is missing (naming the expected layout).
  """
  if source not in ("spider", "bird"):
    raise ValueError(f"source must be 'spider' or 'bird', got {source!r}")
  bench_split = "train" if split == "train" else "dev"
  if source == "spider":
    examples, resolver = load_spider(root, bench_split), spider_db_resolver(root, bench_split)
  else:
    examples, resolver = load_bird(root, bench_split), bird_db_resolver(root, bench_split)
  rows = examples_to_rows(examples, resolver, style=style, separator=separator)
  for row in rows:
    row["db_path"] = os.fspath(resolver(row["db_id"]))
  return rows
