"""Text2SQL environment: synthetic data, loaders, prompts, result comparison, rewards and the
read-only execution sandbox (adversarial queries must be refused or cut off, and no database file
may change)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import string
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrl_llm.envs.text2sql import (DatasetFormatError, Text2SQLExample, bird_db_resolver,
                                     examples_to_rows, execute_readonly, extract_sql,
                                     generate_text2sql, has_top_level_order_by, is_single_select,
                                     load_bird, load_spider, make_text2sql_reward, open_readonly,
                                     read_schema, render_prompt, results_match, spider_db_resolver,
                                     split_statements, sql_format, synthetic_db_resolver,
                                     template_counts, validate_rows)
from jaxrl_llm.envs.text2sql.execution import _authorizer

SEED = 3
LIMIT_S = 0.3  # Per-query time limit in the adversarial tests.
MARGIN_S = 0.7  # Allowed overshoot (process scheduling on a busy 2-core machine).


def _hash_dir(directory) -> dict[str, str]:
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  """The synthetic databases plus ``big.sqlite`` (one 3000-row table), and the rows."""
  root = tmp_path_factory.mktemp("text2sql")
  splits = generate_text2sql(root, seed=SEED, train_size=300, validation_size=40, test_size=40)
  conn = sqlite3.connect(root / "big.sqlite")
  conn.execute("CREATE TABLE t (x INTEGER)")
  conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3000)])
  conn.commit()
  conn.close()
  return root, splits


@pytest.fixture(scope="module", autouse=True)
def databases_unchanged(synth):
  """Every database file is byte-identical (sha256) after the whole module, and no file (journal,
  WAL, attached database) appeared next to them."""
  root = synth[0]
  before = _hash_dir(root)
  yield
  assert _hash_dir(root) == before


def _rows(synth):
  return [r for split in synth[1].values() for r in split]


# ---------------------------------------------------------------- synthetic generator


def test_generator_is_deterministic_and_idempotent(tmp_path):
  a = generate_text2sql(tmp_path / "a", seed=11, train_size=50, validation_size=10, test_size=10)
  b = generate_text2sql(tmp_path / "b", seed=11, train_size=50, validation_size=10, test_size=10)
  assert a == b
  assert _hash_dir(tmp_path / "a") == _hash_dir(tmp_path / "b")
  stats = {n: os.stat(tmp_path / "a" / n) for n in os.listdir(tmp_path / "a")}
  again = generate_text2sql(tmp_path / "a", seed=11, train_size=50, validation_size=10,
                            test_size=10)
  assert again == a
  for name, st_before in stats.items():  # Same content => the file was not rewritten.
    st_after = os.stat(tmp_path / "a" / name)
    assert (st_after.st_ino, st_after.st_mtime_ns) == (st_before.st_ino, st_before.st_mtime_ns)
  other = generate_text2sql(tmp_path / "c", seed=12, train_size=50, validation_size=10,
                            test_size=10)
  assert other != a


def test_every_gold_query_executes_non_empty(synth):
  root, _ = synth
  resolve = synthetic_db_resolver(root)
  for row in _rows(synth):
    result = execute_readonly(resolve(row["db_id"]), row["answer"], timeout_s=2.0)
    assert result.ok, (row, result)
    assert result.rows and any(v is not None for v in result.rows[0]), row


def test_rows_are_valid_short_one_line_ascii(synth):
  allowed = set(string.printable) - set("\t\n\r\x0b\x0c")
  for split, rows in synth[1].items():
    validate_rows(rows, split=split)
    for row in rows:
      assert set(row["prompt"] + row["answer"]) <= allowed, row
      assert len(row["prompt"]) <= 200 and len(row["answer"]) <= 120, row
      assert row["prompt"].startswith("Schema: ") and row["prompt"].endswith(" SQL:")
  counts = template_counts(_rows(synth))
  assert {"lookup_num", "count_cat", "agg", "topk", "group_count", "join_attr"} <= set(counts)
  assert {r["difficulty"] for r in _rows(synth)} == {"easy", "medium", "hard", "extra"}


def test_splits_are_disjoint(synth):
  keys = {s: [(r["question"], r["db_id"]) for r in rows] for s, rows in synth[1].items()}
  for rows in keys.values():
    assert len(rows) == len(set(rows))
  assert not set(keys["train"]) & set(keys["validation"])
  assert not set(keys["train"]) & set(keys["test"])
  assert not set(keys["validation"]) & set(keys["test"])
  assert [len(keys[s]) for s in ("train", "validation", "test")] == [300, 40, 40]


def test_too_many_questions_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="distinct"):
    generate_text2sql(tmp_path, seed=0, train_size=10**6, validation_size=0, test_size=0,
                      db_ids=["zoo"])


# ---------------------------------------------------------------- schema and prompt


@pytest.fixture()
def small_db(tmp_path):
  path = tmp_path / "small.sqlite"
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE pet (\n  id INTEGER PRIMARY KEY,\n  name TEXT,\n  age INTEGER\n)")
  conn.execute("CREATE TABLE toy (id INTEGER, pet_id INTEGER)")
  conn.executemany("INSERT INTO pet VALUES (?, ?, ?)", [(1, "rex", 3), (2, "o'neil", None)])
  conn.commit()
  conn.close()
  return path


def test_read_schema_and_render_prompt(small_db):
  tables = read_schema(small_db, sample_rows=2)
  assert [t.name for t in tables] == ["pet", "toy"]
  assert tables[0].columns == ("id", "name", "age")
  assert tables[0].sample_rows == ((1, "rex", 3), (2, "o'neil", None))
  compact = render_prompt("How old is rex?", tables, separator=" ", style="compact")
  assert compact == "Schema: pet(id,name,age) toy(id,pet_id) Question: How old is rex? SQL:"
  with_rows = render_prompt("q?", tables, separator="; ", style="compact", sample_rows=1)
  assert with_rows == "Schema:; pet(id,name,age)[(1,'rex',3)]; toy(id,pet_id); Question: q?; SQL:"
  create = render_prompt("q?", tables, "age is in years", sample_rows=2)
  assert create.startswith("Schema:\nCREATE TABLE pet (\n  id INTEGER PRIMARY KEY,")
  assert "/* rows of pet: (1,'rex',3), (2,'o''neil',NULL) */" in create
  assert create.endswith("\nEvidence: age is in years\nQuestion: q?\nSQL:")
  one_line = render_prompt("multi\nline?", tables, separator=" ")
  assert "\n" not in one_line and "CREATE TABLE pet ( id INTEGER PRIMARY KEY," in one_line
  assert render_prompt("q?", "t(a)", separator=" ") == "Schema: t(a) Question: q? SQL:"


# ---------------------------------------------------------------- comparison


@pytest.mark.parametrize("pred, gold, kwargs, expected", [
    ([(1,), (2,)], [(2,), (1,)], {}, True),  # Order ignored without ORDER BY.
    ([(1,), (2,)], [(2,), (1,)], {"ordered": True}, False),
    ([(2,), (1,)], [(2,), (1,)], {"ordered": True}, True),
    ([(1,), (1,), (2,)], [(1,), (2,)], {}, False),  # Bag: multiplicity matters.
    ([(1,), (1,), (2,)], [(1,), (2,)], {"semantics": "set"}, True),  # BIRD: duplicates ignored.
    ([(2,), (1,)], [(1,), (2,)], {"semantics": "set", "ordered": True}, True),
    ([(1.0,)], [(1,)], {}, True),  # Python equality.
    ([("Rex",)], [("rex",)], {}, False),  # Case-sensitive.
    ([(None,)], [(None,)], {}, True),
    ([], [], {}, True),
    ([()], [], {}, False),
    ([], [(1,)], {}, False),
    ([(1, "a")], [(1,)], {}, False),  # Different widths.
    ([("a", 1)], [(1, "a")], {}, False),  # Column order matters by default...
    ([("a", 1), ("b", 2)], [(1, "a"), (2, "b")], {"column_permutations": True}, True),  # ...opt-in.
    ([("a", 1), ("b", 2)], [(1, "b"), (2, "a")], {"column_permutations": True}, False),
])
def test_results_match(pred, gold, kwargs, expected):
  assert results_match(pred, gold, **kwargs) is expected


@pytest.mark.parametrize("sql, expected", [
    ("SELECT a FROM t ORDER BY a", True),
    ("select a from t order by a desc limit 3", True),
    ("SELECT a FROM (SELECT a FROM t ORDER BY a)", False),
    ("WITH c AS (SELECT a FROM t ORDER BY a) SELECT * FROM c", False),
    ("SELECT 1 UNION SELECT 2 ORDER BY 1", True),
    ("SELECT 'order by' FROM t", False),
    ("SELECT a FROM t WHERE b = ')' ORDER BY a", True),
    ("SELECT ((( FROM t ORDER BY x", True),  # Unparsable: the text fallback decides.
])
def test_top_level_order_by(sql, expected):
  assert has_top_level_order_by(sql) is expected


# ---------------------------------------------------------------- extraction and rewards


def test_extract_sql():
  assert extract_sql("SELECT 1;") == "SELECT 1"
  assert extract_sql("text ```sql\nSELECT 1\n``` more ```SQL select 2;;``` end") == "select 2"
  assert extract_sql("```sql SELECT 3") == "SELECT 3"  # Truncated fence.
  assert extract_sql("  SELECT 4  ") == "SELECT 4"
  assert extract_sql(None) == ""  # type: ignore[arg-type]


def test_sql_format():
  comps = ["SELECT a FROM t", "```sql\nWITH c AS (SELECT 1) SELECT * FROM c;\n```",
           "SELECT 1; SELECT 2", "DROP TABLE t", "hello world", "", "SELECT FROM WHERE"]
  np.testing.assert_array_equal(sql_format([""] * 7, comps), [1, 1, 0, 0, 0, 0, 0])
  assert is_single_select("SELECT 1 UNION SELECT 2")


def _by_template(synth, template):
  return next(r for r in _rows(synth) if r["template"] == template)


def test_execution_reward(synth):
  root, _ = synth
  rows = [_by_template(synth, t) for t in ("lookup_num", "topk", "group_count", "count_cat")]
  fn = make_text2sql_reward(root, timeout_s=1.0)
  topk = rows[1]["answer"]
  flipped = topk.replace("DESC", "ASC") if "DESC" in topk else topk.replace("ASC", "DESC")
  cases = [
      (rows[0], rows[0]["answer"], 1.0),  # Correct.
      (rows[0], f"```sql\n{rows[0]['answer']};\n```", 1.0),  # Fenced, trailing ';'.
      (rows[0], rows[0]["answer"].replace("SELECT", "SELECT 1 +"), 0.0),  # Runs, wrong value.
      (rows[1], topk, 1.0),
      (rows[1], flipped, 0.0),  # ORDER BY gold: order matters.
      (rows[2], rows[2]["answer"] + " ORDER BY COUNT(*)", 1.0),  # Gold unordered: any order.
      (rows[3], "SELEKT nothing", 0.0),  # Unparsable.
      (rows[3], rows[3]["answer"] + "; DROP TABLE emp", 0.0),  # Two statements.
      (rows[3], "", 0.0),
  ]
  got = fn([r["prompt"] for r, _, _ in cases], [c for _, c, _ in cases],
           db_id=[r["db_id"] for r, _, _ in cases], answer=[r["answer"] for r, _, _ in cases])
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [e for _, _, e in cases])
  credit = make_text2sql_reward(root, executable_credit=0.1)
  got = credit(["", "", ""], [rows[0]["answer"], "SELECT 42", "nonsense"],
               db_id=[rows[0]["db_id"]] * 3, answer=[rows[0]["answer"]] * 3)
  np.testing.assert_allclose(got, [1.0, 0.1, 0.0])
  slow = make_text2sql_reward(root, timeout_s=LIMIT_S, executable_credit=0.1)
  start = time.monotonic()
  got = slow([""], ["WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                    "SELECT count(*) FROM c"], db_id=[rows[0]["db_id"]], answer=[rows[0]["answer"]])
  assert got[0] == 0.0 and time.monotonic() - start < LIMIT_S + MARGIN_S  # A time-out earns 0.


def test_gold_failure_names_the_row(synth):
  root, _ = synth
  row = _by_template(synth, "agg")
  fn = make_text2sql_reward(root)
  with pytest.raises(ValueError, match="row 1 .*gold SQL failed"):
    fn(["", ""], ["SELECT 1", "SELECT 1"], db_id=[row["db_id"]] * 2,
       answer=[row["answer"], "SELECT missing FROM nowhere"])
  lenient = make_text2sql_reward(root, on_gold_error="nan")
  got = lenient(["", ""], [row["answer"]] * 2, db_id=[row["db_id"]] * 2,
                answer=[row["answer"], "SELECT missing FROM nowhere"])
  assert got[0] == 1.0 and np.isnan(got[1])


_FRAGMENTS = ["SELECT", " ", "*", "name", "FROM", "emp", "WHERE", "=", "'", '"', ";", "```sql",
              "```", "\n", "(", ")", "--", "/*", "*/", "DROP TABLE emp", "COUNT(*)", "1", "x",
              "WITH RECURSIVE", "UNION", "ORDER BY", "[", "]", "`", "\x00", "é"]


@settings(max_examples=120, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=80),
                 st.lists(st.sampled_from(_FRAGMENTS), max_size=16).map("".join)))
def test_fuzz_reward_never_raises(synth, text):
  root, _ = synth
  row = _by_template(synth, "lookup_num")
  sql = extract_sql(text)
  assert isinstance(sql, str)
  split_statements(text)
  fmt = sql_format([""], [text])
  fn = make_text2sql_reward(root, timeout_s=0.5, executable_credit=0.1)
  got = fn([""], [text], db_id=[row["db_id"]], answer=[row["answer"]])
  for values in (fmt, got):
    assert values.shape == (1,) and values.dtype == np.float32
    assert np.all(np.isfinite(values)) and 0.0 <= values[0] <= 1.0


# ---------------------------------------------------------------- Spider / BIRD loaders


def _make_db(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  conn = sqlite3.connect(path)
  conn.execute("CREATE TABLE singer (id INTEGER, name TEXT, age INTEGER)")
  conn.executemany("INSERT INTO singer VALUES (?, ?, ?)", [(1, "ann", 30), (2, "bo", 41)])
  conn.commit()
  conn.close()


def test_spider_loader(tmp_path):
  entries = [{"db_id": "concert", "question": "How many singers?",
              "query": "SELECT count(*) FROM singer", "query_toks": [], "sql": {}}]
  (tmp_path / "dev.json").write_text(json.dumps(entries))
  _make_db(tmp_path / "database" / "concert" / "concert.sqlite")
  examples = load_spider(tmp_path, "dev")
  assert examples == [
      Text2SQLExample("How many singers?", "concert", "SELECT count(*) FROM singer")]
  resolver = spider_db_resolver(tmp_path, "dev")
  rows = examples_to_rows(examples, resolver, style="compact", separator=" ")
  assert rows[0]["prompt"] == ("Schema: singer(id,name,age) Question: How many singers? SQL:")
  validate_rows(rows, split="dev")
  fn = make_text2sql_reward(resolver)
  assert fn([""], ["SELECT COUNT(id) FROM singer"], **{k: [rows[0][k]] for k in ("db_id", "answer")}
            )[0] == 1.0
  with pytest.raises(FileNotFoundError, match="train_spider.json.*Expected layout"):
    load_spider(tmp_path, "train")
  with pytest.raises(FileNotFoundError, match="missing_db"):
    resolver("missing_db")


def test_bird_loader(tmp_path):
  entries = [{"question_id": 0, "db_id": "music", "question": "Oldest singer?",
              "evidence": "oldest refers to MAX(age)",
              "SQL": "SELECT name FROM singer ORDER BY age DESC LIMIT 1", "difficulty": "simple"}]
  (tmp_path / "dev").mkdir()
  (tmp_path / "dev" / "dev.json").write_text(json.dumps(entries))
  _make_db(tmp_path / "dev" / "dev_databases" / "music" / "music.sqlite")
  for root in (tmp_path, tmp_path / "dev"):  # The BIRD root or the split directory itself.
    examples = load_bird(root, "dev")
    assert examples[0].evidence == "oldest refers to MAX(age)"
    assert examples[0].difficulty == "simple"
    rows = examples_to_rows(examples, bird_db_resolver(root, "dev"))
    assert rows[0]["prompt"].endswith(
        "Evidence: oldest refers to MAX(age)\nQuestion: Oldest singer?\nSQL:")
  with pytest.raises(FileNotFoundError, match=r"train\.json.*Expected layout"):
    load_bird(tmp_path, "train")


def test_malformed_datasets_name_the_field(tmp_path):
  (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "x", "question": "q"}]))
  with pytest.raises(DatasetFormatError, match="entry 0: missing field 'query'"):
    load_spider(tmp_path, "dev")
  (tmp_path / "dev.json").write_text(json.dumps([{"db_id": "../etc", "question": "q",
                                                  "query": "SELECT 1"}]))
  with pytest.raises(DatasetFormatError, match="not a plain database name"):
    load_spider(tmp_path, "dev")
  with pytest.raises(DatasetFormatError, match="train row 1 field 'answer'"):
    validate_rows([{"prompt": "p", "answer": "SELECT 1", "db_id": "a"},
                   {"prompt": "p", "answer": "", "db_id": "a"}])
  with pytest.raises(DatasetFormatError, match="train row 0: missing field 'db_id'"):
    validate_rows([{"prompt": "p", "answer": "SELECT 1"}])
  with pytest.raises(DatasetFormatError, match="plain database name"):
    make_text2sql_reward(tmp_path)([""], ["SELECT 1"], db_id=["../x"], answer=["SELECT 1"])


# ---------------------------------------------------------------- the sandbox


ADVERSARIAL = [
    ("company", "DROP TABLE emp", {"forbidden"}),
    ("company", "DELETE FROM emp", {"forbidden"}),
    ("company", "INSERT INTO emp (id) VALUES (999)", {"forbidden"}),
    ("company", "UPDATE emp SET age = 0", {"forbidden"}),
    ("company", "REPLACE INTO emp (id) VALUES (1)", {"forbidden"}),
    ("company", "ATTACH DATABASE '/tmp/x.db' AS x", {"forbidden"}),
    ("company", "PRAGMA writable_schema=ON", {"forbidden"}),
    ("company", "SELECT load_extension('x')", {"forbidden"}),
    ("company", "SELECT readfile('/etc/passwd')", {"forbidden", "runtime"}),
    ("company", "CREATE TABLE z (a)", {"forbidden"}),
    ("company", "VACUUM INTO '/tmp/jaxrl_vacuum_copy.db'", {"forbidden"}),
    ("company", "BEGIN IMMEDIATE", {"forbidden"}),
    ("company", "WITH c AS (SELECT 1) DELETE FROM emp", {"forbidden"}),
    ("company", "WITH c AS (SELECT 1) INSERT INTO emp (id) SELECT 999 FROM c", {"forbidden"}),
    ("company", "SELECT * FROM pragma_table_info('emp')", {"forbidden"}),
    ("company", "SELECT 1; DROP TABLE emp", {"forbidden"}),
    ("company", "SELECT 1 ; DROP TABLE emp; --", {"forbidden"}),
    ("company", "SELECT zeroblob(2000000000)", {"runtime"}),
    ("company", "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
     "SELECT count(*) FROM c", {"timeout"}),
    ("big", "SELECT count(*) FROM t a, t b, t c, t d", {"timeout"}),
    ("big", "SELECT * FROM t", {"row_limit"}),
    ("big", "SELECT a.x FROM t a, t b", {"row_limit"}),
    ("company", "x" * 5000, {"forbidden"}),
]


@pytest.mark.parametrize("db, sql, kinds", ADVERSARIAL, ids=[a[1][:40] for a in ADVERSARIAL])
def test_adversarial_sql_is_refused_or_cut_off(synth, db, sql, kinds):
  root, _ = synth
  start = time.monotonic()
  result = execute_readonly(root / f"{db}.sqlite", sql, timeout_s=LIMIT_S, max_rows=1000,
                            max_sql_chars=4000)
  elapsed = time.monotonic() - start
  assert result.kind in kinds, result
  assert not result.rows
  assert elapsed < LIMIT_S + MARGIN_S
  if result.kind == "row_limit":
    assert "row limit" in result.error
  assert not os.path.exists("/tmp/jaxrl_vacuum_copy.db")


def test_benign_queries_still_work(synth):
  root, _ = synth
  db = root / "company.sqlite"
  for sql in ["SELECT name FROM emp WHERE name = 'a;b' ;", "SELECT * FROM emp -- ; DROP TABLE emp",
              "VALUES (1)", "SELECT name FROM sqlite_master",
              "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5) "
              "SELECT sum(x) FROM c"]:
    assert execute_readonly(db, sql).ok, sql
    assert execute_readonly(db, sql, immutable=True).ok, sql
  assert execute_readonly(db, "SELECT nope FROM emp").kind == "runtime"
  assert execute_readonly(db, "SELECT 'unterminated").kind == "syntax"


def test_split_statements():
  assert split_statements("SELECT 1; SELECT ';' ; -- c;\n /* ; */") == ["SELECT 1", "SELECT ';'"]
  assert split_statements("SELECT [a;b], `c;d`, \"e;\"\"f\" FROM t;") == [
      "SELECT [a;b], `c;d`, \"e;\"\"f\" FROM t"]
  assert split_statements(" ;; ") == []


def test_each_layer_blocks_writes_on_its_own(synth, tmp_path):
  # The authorizer alone, on a writable in-memory database.
  conn = sqlite3.connect(":memory:")
  conn.execute("CREATE TABLE t (a)")
  conn.set_authorizer(_authorizer)
  for sql in ["INSERT INTO t VALUES (1)", "DROP TABLE t", "CREATE TABLE u (a)",
              "PRAGMA user_version = 3", "ATTACH DATABASE ':memory:' AS m", "BEGIN",
              "DELETE FROM t", "SELECT load_extension('x')"]:
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
      conn.execute(sql)
  assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
  conn.close()
  # The read-only open alone, without the authorizer, on a real database file.
  conn = open_readonly(synth[0] / "company.sqlite")
  with pytest.raises(sqlite3.OperationalError, match="readonly"):
    conn.execute("DELETE FROM emp")
  conn.close()
  with pytest.raises(FileNotFoundError):
    open_readonly(tmp_path / "nope.sqlite")  # Never creates a database.
  assert not (tmp_path / "nope.sqlite").exists()
