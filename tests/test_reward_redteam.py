"""Red team: the policy is an adversary of its reward.

Each hostile completion below is wrong (or does no work) and tries to score anyway: by forging
the harness's records, by reading or patching what decides the verdict, by values that compare
equal to anything, or by holding the reward call. Every case asserts the reward stays at the
row's true pass fraction, the call ends in bounded time, nothing is written outside the sandbox,
no process is left behind, and the honest row in the same batch is still scored.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import textwrap
import time

import numpy as np
import pytest

from jaxrl_llm.rewards.code import make_code_reward
from jaxrl_llm.rewards.sandbox import SandboxLimits

LIMITS = SandboxLimits(cpu_s=1.0, wall_s=2.0, memory_mb=256, output_bytes=64 << 10,
                       file_bytes=1 << 20)

# MBPP style (rewritten into calls by the trusted side) and HumanEval style (a trusted judge).
MUL_ASSERTS = {"asserts": ["assert mul(2, 3) == 6", "assert mul(4, 5) == 20",
                           "assert mul(0, 7) == 0"]}
MUL_CHECK = {"test_code": textwrap.dedent("""\
    def check(candidate):
      for a in range(1, 4):
        assert candidate(a, 3) == 3 * a
      assert sorted(candidate(x, 1) for x in (3, 1, 2)) == [1, 2, 3]
      assert math.isclose(candidate(0.5, 0.5), 0.25)
    """), "entry_point": "mul"}
MUL_CHECK_ASSERTS = {"test_code": "METADATA = {'id': 1}\n\ndef check(candidate):\n"
                                  "  assert candidate(2, 3) == 6\n  assert candidate(4, 5) == 20\n"
                                  "  assert candidate(0, 7) == 0, 'zero'\n",
                     "entry_point": "mul"}
HONEST = "```python\ndef mul(a, b):\n  return a * b\n```"
WRONG = "def mul(a, b):\n  return a + b + 1000\n"  # every hostile row's function is this wrong.


def fence(code: str) -> str:
  return "```python\n" + textwrap.dedent(code).strip() + "\n```"


# Each entry: hostile code placed before the wrong solution.
HOSTILE = {
    # Forge pass records on every descriptor the process holds (status, reply, stdout...).
    "forge_every_fd": """
        import os, json
        lines = []
        for i in range(64):
          lines.append("verdict\\t" + json.dumps({"i": i, "ok": True, "error": ""}))
          lines.append("call\\t" + json.dumps(json.dumps({"i": i, "v": ["b", True]})))
          lines.append("done\\tnull")
        blob = ("\\n".join(lines) + "\\n").encode()
        for fd in range(3, 64):
          try:
            os.write(fd, blob)
          except OSError:
            pass
        """,
    # Walk frames to the harness: its globals, the job, the reporting function.
    "walk_frames": """
        import sys
        f = sys._getframe(1)
        while f is not None:
          g = f.f_globals
          for key in ("job", "report", "_send"):
            if key in g or key in f.f_locals:
              raise SystemExit("found " + key)
          f = f.f_back
        """,
    "traceback_frames": """
        try:
          raise ValueError
        except ValueError as e:
          frame = e.__traceback__.tb_frame.f_back
          frame.f_locals["report"]("verdict", {"i": 0, "ok": True, "error": ""})
        """,
    # Walk the object graph for the harness's dicts and patch any expected values found.
    "gc_walk": """
        import gc
        for obj in gc.get_objects():
          if isinstance(obj, dict) and ("calls" in obj or "tests" in obj):
            obj["tests"] = ["pass"] * 8
        """,
    # Results that claim to equal anything.
    "always_equal": """
        class Anything:
          def __eq__(self, other): return True
          def __ne__(self, other): return False
          def __bool__(self): return True
          def __hash__(self): return 0
        _wrong = mul if "mul" in dir() else None
        def mul(a, b):
          return Anything()
        WRONG_DISABLED = True
        """,
    "int_subclass": """
        class Sly(int):
          def __eq__(self, other): return True
          def __ne__(self, other): return False
          __hash__ = int.__hash__
        def mul(a, b):
          return Sly(-1)
        WRONG_DISABLED = True
        """,
    # Patch what the tests use: builtins and a standard module (the judge keeps its own).
    "patch_builtins_and_math": """
        import builtins, math
        builtins.sorted = lambda *a, **k: [1, 2, 3]
        math.isclose = lambda *a, **k: True
        builtins.AssertionError = type("Nothing", (BaseException,), {})
        """,
    # Exit before any test: nothing is reported as passing.
    "exit_early": """
        import os
        os._exit(0)
        """,
}


def _rows(name: str) -> str:
  code = textwrap.dedent(HOSTILE[name])
  if "WRONG_DISABLED" not in code:
    code += "\n" + WRONG
  return fence(code)


def _sandbox_processes() -> list[int]:
  """Pids of this process's live sandbox children (the bootstrap is on their command line)."""
  pids = []
  for path in glob.glob("/proc/[0-9]*/cmdline"):
    pid = path.split("/")[2]
    try:
      with open(path, "rb") as f, open(f"/proc/{pid}/stat", "rb") as st:
        ppid = int(st.read().rsplit(b")", 1)[1].split()[1])
        if ppid == os.getpid() and b"def _serve(job" in f.read():
          pids.append(int(pid))
    except (OSError, ValueError, IndexError):
      pass
  return pids


def _alive(pid: int) -> bool:
  return os.path.exists(f"/proc/{pid}")


def _temp_dirs() -> set[str]:
  """The sandbox's temporary directories (each run's root; removed when the run ends)."""
  return {d for prefix in ("jaxrl-sandbox-", "jaxrl-judged-", "jaxrl-calls-")
          for d in glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*"))}


@pytest.fixture(scope="module")
def reward():
  with make_code_reward(mode="fraction", limits=LIMITS, test_limits=LIMITS, max_workers=2) as r:
    yield r


@pytest.mark.parametrize("tests", [MUL_ASSERTS, MUL_CHECK_ASSERTS, MUL_CHECK],
                         ids=["rewritten", "rewritten-check", "judge"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_scores_its_true_pass_fraction(reward, tmp_path, name, tests):
  dirs = _temp_dirs()
  start = time.monotonic()
  out = reward(["p", "p"], [_rows(name), HONEST], tests=[json.dumps(tests)] * 2)
  elapsed = time.monotonic() - start
  assert out.tolist() == [0.0, 1.0], (name, out)
  # Suite plus at most one round of individual reruns, each within its wall limit.
  assert elapsed < 2 * LIMITS.wall_s + 2.0, elapsed
  assert not _sandbox_processes()
  assert _temp_dirs() == dirs
  assert not list(tmp_path.iterdir())


def test_which_tests_are_rewritten_into_calls():
  from jaxrl_llm.rewards.code import parse_tests
  from jaxrl_llm.rewards.sandbox import _static_checks
  for spec, rewritten in ((MUL_ASSERTS, True), (MUL_CHECK_ASSERTS, True), (MUL_CHECK, False)):
    t = parse_tests(spec)
    assert all(_static_checks(a, t.names) is not None for a in t.asserts) == rewritten
  assert _static_checks("assert mul(x, 2) == 4", ("mul",)) is None  # x is not a literal.
  assert _static_checks("assert sorted(mul(1, 2)) == [2]", ("mul",)) is None


def test_judge_rebuilds_values_exactly(reward):
  """Plain data keeps its type across the boundary: a tuple is not a list, 1 is not True."""
  tests = {"asserts": ["assert f() == (1, 2)", "assert f() != [1, 2]",
                       "r = f()\nassert type(r) is tuple and r == (1, 2)"]}
  out = reward(["p"] * 3, [fence("def f(): return (1, 2)"), fence("def f(): return [1, 2]"),
                           fence("def f(): return (True, 2)")], tests=[json.dumps(tests)] * 3)
  # [1, 2] fails all three; (True, 2) == (1, 2) holds in Python, and its type is tuple.
  np.testing.assert_allclose(out, [1.0, 0.0, 1.0])


def test_truth_of_a_solution_object_is_never_taken(reward):
  tests = [{"asserts": ["assert is_even(4)", "assert not is_even(3)"]},
           {"test_code": "def check(c):\n  assert c(4)\n", "entry_point": "is_even"}]
  objects = fence("def is_even(n):\n  return object()")
  out = reward(["p"] * 2, [objects] * 2, tests=[json.dumps(t) for t in tests])
  np.testing.assert_allclose(out, [0.0, 0.0])
  honest = fence("def is_even(n):\n  return n % 2 == 0")
  np.testing.assert_allclose(reward(["p"] * 2, [honest] * 2, tests=[json.dumps(t) for t in tests]),
                             [1.0, 1.0])


def test_judge_supports_objects_methods_and_mutation(reward):
  """Honest class-based and in-place solutions still pass through the judge's proxies."""
  tests = {"test_code": textwrap.dedent("""\
      def check(Stack):
        s = Stack()
        s.push(3)
        s.push(4)
        assert s.pop() == 4 and s.size() == 1
        xs = [3, 1, 2]
        sort_in_place(xs)
        assert xs == [1, 2, 3]
        assert list(count_up(3)) == [0, 1, 2]
      """), "entry_point": "Stack"}
  code = fence("""
      class Stack:
        def __init__(self): self.items = []
        def push(self, x): self.items.append(x)
        def pop(self): return self.items.pop()
        def size(self): return len(self.items)
      def sort_in_place(xs): xs.sort()
      def count_up(n):
        yield from range(n)
      """)
  assert reward(["p"], [code], tests=[json.dumps(tests)]).tolist() == [1.0]


# ------------------------------------------------------------------------------------------------
# Text2SQL: queries that try to hold the reward call or grow memory inside one SQL function call.

_DOUBLING = ("WITH RECURSIVE r(s) AS (SELECT 'q' UNION ALL SELECT s || s || s FROM r "
             "WHERE length(s) < 5000000) ")
HOSTILE_SQL = {
    "printf_precision": "SELECT printf('%.*c', 1500000000, 'y')",
    "tripling_string_instr": _DOUBLING + "SELECT max(instr(s, 'qz')) FROM r",
    "zeroblob_flood": ("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                       "WHERE i < 5000) SELECT length(group_concat(zeroblob(800000))) FROM n"),
    "endless_recursion": ("WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n) "
                          "SELECT count(*) FROM n"),
    "cross_join": "SELECT count(*) FROM emp a, emp b, emp c, emp d, emp e, emp f",
    "deep_nesting": "SELECT " + "abs(" * 300 + "1" + ")" * 300,
    "write_through_cte": "WITH x AS (SELECT 1) DELETE FROM emp",
    "attach_memory": "SELECT 1; ATTACH ':memory:' AS m",
    "pragma_function": "SELECT * FROM pragma_database_list",
    "load_extension": "SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')",
}


def _db_hashes(root) -> dict[str, str]:
  import hashlib
  return {name: hashlib.sha256((root / name).read_bytes()).hexdigest()
          for name in sorted(os.listdir(root))}


@pytest.fixture(scope="module")
def sql_env(tmp_path_factory):
  from jaxrl_llm.envs.text2sql import SQLWorkerPool, generate_text2sql, make_text2sql_reward
  root = tmp_path_factory.mktemp("sql_redteam")
  splits = generate_text2sql(root, seed=1, train_size=20, validation_size=5, test_size=5)
  row = next(r for r in splits["train"] if r["db_id"] == "company")
  before = _db_hashes(root)
  pool = SQLWorkerPool(2, memory_mb=256)
  fn = make_text2sql_reward(root, timeout_s=0.3, pool=pool)
  seen: set[int] = set()
  yield root, row, fn, pool, seen
  pool.close()
  assert _db_hashes(root) == before  # no byte of any database changed, no file appeared.
  assert seen and not any(_alive(pid) for pid in seen)  # every worker, killed or idle, is gone.


@pytest.mark.parametrize("name", sorted(HOSTILE_SQL))
def test_hostile_sql_costs_only_its_own_row(sql_env, name):
  root, row, fn, pool, seen = sql_env
  start = time.monotonic()
  out = fn(["p", "p"], ["```sql\n" + HOSTILE_SQL[name] + "\n```", row["answer"]],
           db_id=[row["db_id"]] * 2, answer=[row["answer"]] * 2)
  elapsed = time.monotonic() - start
  assert out.tolist() == [0.0, 1.0], (name, out)
  assert elapsed < 0.3 + pool.grace_s + 1.5, elapsed  # killed at its deadline, not abandoned.
  workers = pool.worker_pids()
  assert len(workers) <= pool.max_workers
  seen.update(workers)


# ------------------------------------------------------------------------------------------------
# The runner: a completion that makes a user reward function raise or hang costs its own row.


def _fragile(prompts, completions, **_):
  out = []
  for c in completions:
    if c == "raise":
      raise RuntimeError("hostile row")
    if c == "hang":
      time.sleep(30)
    out.append(float(len(c)))
  return np.asarray(out, np.float32)


def _hog(prompts, completions, **_):
  out = []
  for c in completions:
    if c == "hog":
      blocks = [bytearray(1 << 28) for _ in range(64)]  # 16 GiB, past any cap.
      out.append(float(len(blocks)))
    else:
      out.append(float(len(c)))
  return np.asarray(out, np.float32)


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("on_error,failed", [("exclude", None), ("fallback", -1.0)])
def test_runner_isolates_the_hostile_row(on_error, failed, isolation):
  import threading
  from jaxrl_llm.rewards import RewardRunner, RewardSpec
  runner = RewardRunner([RewardSpec("fragile", _fragile)], timeout_s=0.5, row_timeout_s=0.3,
                        on_error=on_error, fallback_reward=-1.0, isolation=isolation)
  threads = threading.active_count()
  start = time.monotonic()
  res = runner(["p"] * 4, ["ab", "raise", "hang", "abcd"])
  assert time.monotonic() - start < 0.5 + 0.3 + 2.0 + (1.0 if isolation == "process" else 0.0)
  values = res.per_function["fragile"]
  assert values[0] == 2.0 and values[3] == 4.0  # the honest rows keep their rewards.
  if failed is None:
    assert np.isnan(values[1]) and np.isnan(values[2])
  else:
    assert values[1] == failed and values[2] == failed
  assert res.counts["fragile"] == {"errors": 1, "nonfinite": 0, "timeouts": 1}
  timing = runner.timing()
  assert set(timing) == {"reward/fragile/p50_s", "reward/fragile/p99_s"}
  if isolation == "process":
    # The batch call raised (the "raise" row comes first); the "hang" row alone was then killed
    # at its time-out, not left running on a thread.
    assert runner._workers["fragile"].kills == 1
    assert threading.active_count() == threads
  runner.close()


def test_process_isolation_caps_memory_and_needs_a_reference():
  from jaxrl_llm.rewards import RewardRunner, RewardSpec
  runner = RewardRunner([RewardSpec("hog", _hog)], timeout_s=20, isolation="process",
                        memory_mb=512)
  res = runner(["p"] * 3, ["ab", "hog", "abc"])
  np.testing.assert_array_equal(res.per_function["hog"][[0, 2]], [2.0, 3.0])
  assert np.isnan(res.per_function["hog"][1]) and res.counts["hog"]["errors"] == 1
  runner.close()
  with pytest.raises(ValueError, match="module-level function"):
    RewardRunner([RewardSpec("lambda", lambda p, c, **_: np.zeros(len(c)))], isolation="process")
  auto = RewardRunner([RewardSpec("lambda", lambda p, c, **_: np.zeros(len(c))),
                       RewardSpec("fragile", _fragile)], isolation="auto")
  assert set(auto._workers) == {"fragile"}  # the lambda stays on a thread.
  auto.close()


# ------------------------------------------------------------------------------------------------
# The plain-data codec that carries values across the boundary.


def test_plain_data_round_trip_keeps_exact_types():
  import collections
  from jaxrl_llm.rewards.plain import dumps_plain, loads_plain
  value = {"a": [1, 2.5, float("inf"), None, True], (1, "x"): {frozenset({3}), b"\x00\xff"},
           "c": collections.Counter("abca"), "d": collections.deque([1j]), 2: -10 ** 50}
  back = loads_plain(dumps_plain(value))
  assert back == value and type(back["c"]) is collections.Counter
  assert type(back[(1, "x")]) is set and type(back["a"][4]) is bool
  nan = loads_plain(dumps_plain(float("nan")))
  assert nan != nan


def test_plain_data_refuses_lookalikes_and_malformed_text():
  from jaxrl_llm.rewards.plain import PlainDataError, decode_plain, dumps_plain, loads_plain

  class Sly(int):
    pass

  for value in (Sly(3), [1, Sly(2)], object(), {"k": lambda: 0}):
    with pytest.raises(PlainDataError):
      dumps_plain(value)
  nested = []
  for _ in range(200):
    nested = [nested]
  with pytest.raises(PlainDataError, match="deeper"):
    dumps_plain(nested)
  for text in ('["i", 3]', '["x", 1]', '["l", [["i"]]]', '["S", [["l", []]]]', "[[[", '["f", 1]',
               '["d", [[1, 2, 3]]]', '["i", "' + "9" * 5000 + '"]', '["h", 0]'):
    with pytest.raises(PlainDataError):
      loads_plain(text)
  assert decode_plain(["h", 7], handle=lambda i: ("handle", i)) == ("handle", 7)


def test_expected_exceptions_cross_but_never_stop_iteration(reward):
  """A test may expect the solution to raise a built-in error; StopIteration (which would end a
  test's ``all(map(f, xs))`` early and pass it) never crosses as itself."""
  tests = {"test_code": textwrap.dedent("""\
      def check(candidate):
        try:
          candidate(-1)
          raise AssertionError("no error")
        except ValueError:
          pass
        assert all(map(candidate, [1, 2, 3]))
      """), "entry_point": "root"}
  honest = fence("""
      def root(x):
        if x < 0:
          raise ValueError("negative")
        return x ** 0.5
      """)
  sly = fence("""
      def root(x):
        if x < 0:
          raise ValueError("negative")
        raise StopIteration
      """)
  out = reward(["p"] * 2, [honest, sly], tests=[json.dumps(tests)] * 2)
  assert out.tolist() == [1.0, 0.0]
