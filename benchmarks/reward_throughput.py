"""Scoring throughput of honest rows: code (unit tests in the sandbox) and Text2SQL (execution match).

Honest rows only: what isolation costs a run whose policy is not attacking its reward. Three
batches of 64 rows each, all passing:

* ``code/asserts``: a function and 4 ``assert f(x) == y`` tests (MBPP style);
* ``code/check``: a function and a HumanEval-style ``check(candidate)`` test program;
* ``code/io``: a stdin/stdout program with 3 cases;
* ``sql``: a correct query per row on the synthetic Text2SQL databases (gold results cached after
  the first batch, as in training).

Reports rows/s (median of ``--repeats`` batches after a warm-up batch) through the registered reward
functions with their default limits, two sandbox workers (the machine's cores).

  python benchmarks/reward_throughput.py [--rows 64] [--repeats 3]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _code_batches(rows: int):
  fn = "def add(a, b):\n  return a + b\n"
  completion = "```python\n" + fn + "```"
  asserts = json.dumps({"asserts": ["assert add(1, 2) == 3", "assert add(0, 0) == 0",
                                    "assert add(-1, 5) == 4", "assert add(2, 2) == 4"]})
  check = json.dumps({"test_code": "def check(candidate):\n  for a in range(5):\n"
                                   "    assert candidate(a, a) == 2 * a\n",
                      "entry_point": "add"})
  io_completion = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
  io_tests = json.dumps({"io": [{"input": "1 2\n", "output": "3\n"},
                                {"input": "5 5\n", "output": "10\n"},
                                {"input": "-3 3\n", "output": "0\n"}]})
  return {"code/asserts": ([completion] * rows, [asserts] * rows),
          "code/check": ([completion] * rows, [check] * rows),
          "code/io": ([io_completion] * rows, [io_tests] * rows)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()

  import numpy as np

  from jaxrl_llm.envs.text2sql import generate_text2sql
  from jaxrl_llm.rewards import code as code_rewards
  from jaxrl_llm.rewards import text2sql as sql_rewards

  results = {}
  with code_rewards.make_code_reward(mode="fraction", max_workers=2) as reward:
    for name, (completions, tests) in _code_batches(args.rows).items():
      times = []
      for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        out = reward(["p"] * len(completions), completions, tests=tests)
        times.append(time.perf_counter() - t0)
        if not np.all(out == 1.0):
          raise SystemExit(f"{name}: honest rows did not all pass: {out}")
      results[name] = args.rows / statistics.median(times[1:])

  with tempfile.TemporaryDirectory() as root:
    splits = generate_text2sql(root, seed=0, train_size=max(args.rows, 100), validation_size=10,
                               test_size=10)
    rows = splits["train"][:args.rows]
    completions = ["```sql\n" + r["answer"] + "\n```" for r in rows]
    db_path = [os.path.join(root, r["db_id"] + ".sqlite") for r in rows]
    answer = [r["answer"] for r in rows]
    times = []
    for r in range(args.repeats + 1):
      t0 = time.perf_counter()
      out = sql_rewards.text2sql_execution(["p"] * len(rows), completions, db_path=db_path,
                                           answer=answer)
      times.append(time.perf_counter() - t0)
      if not np.all(out == 1.0):
        raise SystemExit(f"sql: honest rows did not all pass: {out}")
    results["sql"] = args.rows / statistics.median(times[1:])

  print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "python": platform.python_version(), "rows": args.rows,
                    "rows_per_s": {k: round(v, 1) for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
  main()
