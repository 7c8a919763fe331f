"""Code-execution rewards and their sandbox: scoring, harnesses, adversarial programs, pass@k."""

from __future__ import annotations

import json
import socket
import textwrap
import time

import numpy as np
import pytest

from jaxrl_llm.rewards.code import (CodeReward, code_unit_tests, evaluate_pass_at_k, extract_code,
                                    make_code_reward, outputs_match, parse_tests, pass_at_k,
                                    pass_at_k_table)
from jaxrl_llm.rewards.sandbox import SandboxJob, SandboxLimits, SandboxPool, run_in_sandbox

LIMITS = SandboxLimits(cpu_s=1.0, wall_s=2.0, memory_mb=256, output_bytes=64 << 10,
                       file_bytes=1 << 20)

ADD_TESTS = json.dumps({"asserts": ["assert add(1, 2) == 3", "assert add(0, 0) == 0",
                                    "assert add(-1, 5) == 4", "assert add(2, 2) == 4"]})
GOOD = "Here you go:\n```python\ndef add(a, b):\n  return a + b\n```\n"
SUM_IO = json.dumps({"io": [{"input": "1 2\n", "output": "3\n"},
                            {"input": "10 -4\n", "output": "6"},
                            {"input": "0 0\n", "output": "0\n"}]})


def fence(code: str) -> str:
  return "```python\n" + textwrap.dedent(code).strip() + "\n```"


@pytest.fixture(scope="module")
def reward():
  with make_code_reward(mode="fraction", limits=LIMITS, test_limits=LIMITS,
                        max_workers=2) as r:
    yield r


def score(reward: CodeReward, completions, tests) -> np.ndarray:
  return reward(["p"] * len(completions), list(completions), tests=list(tests))


def test_extract_code():
  assert extract_code("a\n```python\nx = 1\n```\nb\n```py\nx = 2\n```\n```\nnot me\n```") == (
      "x = 2\n", True)
  assert extract_code("```text\nfoo\n```\n```bash\nls\n```") == ("ls\n", True)
  assert extract_code("print(1)") == ("print(1)", False)


def test_correct_wrong_partial(reward):
  wrong = fence("def add(a, b):\n  return a - b + 1")
  partial = fence("def add(a, b):\n  return a * 2")  # right for (0, 0) and (2, 2) only.
  out = score(reward, [GOOD, wrong, partial], [ADD_TESTS] * 3)
  assert out.dtype == np.float32 and out.shape == (3,)
  np.testing.assert_allclose(out, [1.0, 0.0, 0.5])
  with make_code_reward(mode="all", limits=LIMITS, max_workers=2) as all_pass:
    np.testing.assert_allclose(score(all_pass, [GOOD, partial], [ADD_TESTS] * 2), [1.0, 0.0])


def test_test_code_and_setup(reward):
  tests = [{"test_code": "def check(f):\n  assert f(2, 3) == 5\n", "entry_point": "add"},
           {"asserts": ["assert add(math.floor(1.5), 1) == 2"], "setup": "import math"}]
  np.testing.assert_allclose(score(reward, [GOOD, GOOD], tests), [1.0, 1.0])


def test_stdin_stdout_harness(reward):
  good = fence("a, b = map(int, input().split())\nprint(a + b, '  ')\n")
  buffered = fence("import sys\na, b = map(int, sys.stdin.buffer.read().split())\n"
                   "sys.stdout.write(f'{a + b}\\n\\n')\nexit(0)")
  open0 = fence("a, b = map(int, open(0).read().split())\nprint(a + b)\nimport sys; sys.exit()")
  wrong = fence("print(42)")
  partial = fence("a, b = map(int, input().split())\nprint(a + b if a >= 0 and b >= 0 else 0)")
  crash = fence("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)")
  out = score(reward, [good, buffered, open0, wrong, partial, crash], [SUM_IO] * 6)
  np.testing.assert_allclose(out, [1.0, 1.0, 1.0, 0.0, 2 / 3, 0.0], atol=1e-6)
  apps = json.dumps({"inputs": ["3\n"], "outputs": ["9\n"]})
  assert score(reward, [fence("print(int(input()) ** 2)")], [apps])[0] == 1.0
  assert outputs_match("1 \n2\n\n", " 1\n2") and not outputs_match("1\n2", "1 2")


def test_no_code_block_syntax_error_and_malformed_completions(reward):
  rows = ["I cannot solve this.", "def add(a, b): return a + b", fence("def add(a, b) return"),
          "", "```python\n```", None]
  out = score(reward, rows, [ADD_TESTS] * len(rows))
  np.testing.assert_allclose(out, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
  diag = reward.score_rows(rows[:3], [ADD_TESTS] * 3)
  assert [d.formatted for d in diag] == [False, False, True]
  # A syntax error fails the suite without individual reruns.
  assert diag[2].status == "error" and diag[2].total == 4


def test_exiting_before_the_tests_earns_nothing(reward):
  """Leaving early never passes a test: the judge still calls the function (sys.exit) or meets a
  closed channel (os._exit). ``add`` returning 0 is right for one test in four."""
  rows = [fence("import sys\ndef add(a, b): return 0\nsys.exit(0)"),
          fence("import os\ndef add(a, b): return 0\nos._exit(0)"),
          fence("def add(a, b): return 0\nexit()"),
          fence("import os\nos._exit(0)\ndef add(a, b): return a + b")]
  np.testing.assert_allclose(score(reward, rows, [ADD_TESTS] * 4), [0.25, 0.0, 0.25, 0.0])


def test_malformed_tests_column_raises(reward):
  bad_values = ["not json", json.dumps([1, 2]), json.dumps({"asserts": []}),
                json.dumps({"io": [{"input": 1, "output": "x"}]}), json.dumps({"foo": 1}),
                json.dumps({"inputs": ["1"], "outputs": []}),
                json.dumps({"inputs": ["1"], "outputs": ["1"], "fn_name": "f"})]
  for bad in bad_values:
    with pytest.raises(ValueError, match=r"column 'tests' row 1"):
      score(reward, [GOOD, GOOD], [ADD_TESTS, bad])
  with pytest.raises(ValueError, match="column 'tests'"):
    score(reward, [GOOD, GOOD], [ADD_TESTS])
  assert parse_tests({"asserts": ["assert 1"]}).num_tests == 1


def test_default_reward_function():
  out = code_unit_tests(["p", "p"], [GOOD, fence("def add(a, b): return 0")],
                        tests=[ADD_TESTS, ADD_TESTS])
  np.testing.assert_allclose(out, [1.0, 0.25])


ONE_TEST = json.dumps({"asserts": ["assert add(1, 2) == 3"]})
ADVERSARIAL = {
    "infinite_loop": "while True: pass",
    "fork_loop": "import os\nfor _ in range(100):\n  os.fork()",
    "subprocess": "import subprocess\nsubprocess.run(['sleep', '100'])",
    "os_system": "import os\nos.system('sleep 100')",
    "fork_bypassing_audit": (
        "import _posixsubprocess, os\nr, w = os.pipe()\n_posixsubprocess.fork_exec(\n"
        "  [b'/bin/sleep', b'100'], [b'/bin/sleep'], True, (w,), None, None, -1, -1, -1, -1, -1,\n"
        "  -1, r, w, True, False, -1, None, None, -1, -1, None, True)"),
    "bytearray": "x = bytearray(10**10)",
    "growing_list": "x = []\nwhile True:\n  x.append(' ' * 10**6)",
    "huge_output": "while True:\n  print('spam' * 1000)",
    "huge_stderr": "import sys\nwhile True:\n  sys.stderr.write('spam' * 1000)",
    "signal_parent": "import os\nos.kill(os.getppid(), 0)",
    "deep_recursion": "import sys\nsys.setrecursionlimit(10**9)\ndef f(n): return f(n + 1)\nf(0)",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_programs_are_bounded(reward, name):
  bad = fence(ADVERSARIAL[name] + "\ndef add(a, b):\n  return a + b")
  start = time.monotonic()
  out = score(reward, [bad, GOOD], [ONE_TEST, ONE_TEST])
  elapsed = time.monotonic() - start
  np.testing.assert_allclose(out, [0.0, 1.0])  # the pool still serves the good row.
  # Suite and one individual rerun, each within the 2 s wall limit (+ start-up).
  assert elapsed < 2 * LIMITS.wall_s + 2.0, elapsed


def test_cannot_write_outside_the_work_dir(reward, tmp_path):
  targets = [tmp_path / "escaped.txt", tmp_path / "escaped2.txt", tmp_path / "sub"]
  rows = [fence(f"open({str(targets[0])!r}, 'w').write('x')\ndef add(a, b): return a + b"),
          fence(f"import os\nfd = os.open({str(targets[1])!r}, os.O_CREAT | os.O_WRONLY)\n"
                "def add(a, b): return a + b"),
          fence(f"import os\nos.mkdir({str(targets[2])!r})\ndef add(a, b): return a + b"),
          fence("open('inside.txt', 'w').write('ok')\nimport os\n"
                "assert os.path.exists('inside.txt')\ndef add(a, b): return a + b")]
  np.testing.assert_allclose(score(reward, rows, [ONE_TEST] * 4), [0.0, 0.0, 0.0, 1.0])
  for t in targets:
    assert not t.exists()


def test_environment_secrets_are_invisible(reward, monkeypatch):
  monkeypatch.setenv("JAXRL_SECRET_TOKEN", "s3cret")
  rows = [fence("import os\nassert os.environ.get('JAXRL_SECRET_TOKEN') == 's3cret'\n"
                "def add(a, b): return a + b"),
          fence("import os\ndata = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
                "assert b's3cret' in data\ndef add(a, b): return a + b"),
          fence("import os\nassert 'JAXRL_SECRET_TOKEN' not in os.environ\n"
                "def add(a, b): return a + b")]
  np.testing.assert_allclose(score(reward, rows, [ONE_TEST] * 3), [0.0, 0.0, 1.0])


def test_no_network(reward):
  listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  listener.bind(("127.0.0.1", 0))
  listener.listen(1)
  listener.setblocking(False)
  port = listener.getsockname()[1]
  try:
    rows = [fence(f"import socket\nsocket.socket().connect(('127.0.0.1', {port}))\n"
                  "def add(a, b): return a + b"),
            fence(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                  "def add(a, b): return a + b")]
    np.testing.assert_allclose(score(reward, rows, [ONE_TEST] * 2), [0.0, 0.0])
    with pytest.raises(BlockingIOError):
      listener.accept()
  finally:
    listener.close()


def test_sandbox_result_statuses():
  assert run_in_sandbox(SandboxJob("print('hi')"), limits=LIMITS).stdout == "hi\n"
  cases = {"while True: pass": "timeout", "x = bytearray(10**10)": "memory",
           "while True: print('x' * 4096)": "output_limit", "raise ValueError('boom')": "error",
           "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)": "killed",
           "import sys\nsys.stdout.write(sys.stdin.read().upper())": "ok"}
  with SandboxPool(2, limits=LIMITS) as pool:
    results = pool.run_many(SandboxJob(code, stdin="abc") for code in cases)
  for (code, want), r in zip(cases.items(), results):
    assert r.status == want, (code, r)
  assert "boom" in results[3].stderr and results[5].stdout == "ABC" and results[5].ok
  assert "rlimits" in results[0].layers


def test_kernel_layers_when_available(tmp_path):
  """Where the namespaces/seccomp are available, they hold even if the audit hook is bypassed."""
  probe = run_in_sandbox(SandboxJob("pass"), limits=LIMITS)
  if "seccomp" not in probe.layers:
    pytest.skip(f"seccomp layer unavailable here (layers: {probe.layers})")
  fork = run_in_sandbox(SandboxJob(ADVERSARIAL["fork_bypassing_audit"]), limits=LIMITS)
  assert fork.status == "error" and "Operation not permitted" in fork.stderr
  if "mountns" in probe.layers:
    # io.FileIO goes through the audit hook; so does every Python-level open, hence this only
    # checks that the mount layer agrees: the parent's temporary directories are read-only.
    r = run_in_sandbox(SandboxJob("import os\nprint(os.access('/tmp', os.W_OK))"), limits=LIMITS)
    assert r.stdout.strip() == "False", r


def test_pool_runs_jobs_concurrently_within_max_workers():
  code = "import time\nt0 = time.time()\ntime.sleep(0.5)\nprint(t0, time.time())"
  with SandboxPool(max_workers=2, limits=LIMITS) as pool:
    results = pool.map([code] * 5)
  spans = [tuple(map(float, r.stdout.split())) for r in results]
  assert all(r.ok for r in results)
  most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
  assert most == 2, spans  # overlapping, but never more than max_workers at once.


def test_limits_validation():
  with pytest.raises(ValueError, match="wall_s"):
    SandboxLimits(wall_s=0)
  with pytest.raises(ValueError, match="file_bytes"):
    SandboxLimits(output_bytes=100, file_bytes=100)
  with pytest.raises(ValueError, match="memory_mb"):
    SandboxLimits(memory_mb=1.5)
  with pytest.raises(ValueError, match="mode"):
    make_code_reward(mode="sometimes")
  with pytest.raises(ValueError, match="max_workers"):
    SandboxPool(0)


def test_pass_at_k_matches_spec():
  assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
  assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252) == pytest.approx(0.9167, abs=1e-4)
  assert pass_at_k(10, 8, 5) == 1.0 and pass_at_k(10, 0, 10) == 0.0
  assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
  with pytest.raises(ValueError):
    pass_at_k(5, 6, 1)
  with pytest.raises(ValueError):
    pass_at_k(5, 1, 6)
  table = pass_at_k_table([[True, False, False, False, True], [False] * 5], ks=(1, 5, 10))
  assert table == pytest.approx({"pass@1": 0.2, "pass@5": 0.5})


def test_evaluate_pass_at_k():
  samples = [[GOOD, fence("def add(a, b): return 0")], [fence("def add(a, b): return 0")] * 2]
  table = evaluate_pass_at_k([ADD_TESTS, ADD_TESTS], samples, ks=(1, 2), limits=LIMITS,
                             max_workers=2)
  assert table["pass@1"] == pytest.approx(0.25) and table["pass@2"] == pytest.approx(0.5)
  assert table["num_samples"] == 4
