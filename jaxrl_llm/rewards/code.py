"""Code rewards: run the completion's code against unit tests, in a sandbox (docs/algorithms.md §22.4).

Extraction: the last fenced code block tagged ``python`` (``py``/``python3`` too); else the last
fenced block of any language; else the whole completion.

Each row's ``tests`` column is a JSON string, or the already-parsed dict, of one of these forms:

* function-call tests -- ``{"asserts": ["assert add(1, 2) == 3", ...], "setup": "import math"}``:
  each string is one test (any statements, usually one ``assert``); ``setup`` (optional) runs
  before the solution and before the tests (imports, helpers).
* a test program -- ``{"test_code": "def check(candidate): ...", "entry_point": "add",
  "setup": ""}``: one test; ``check(<entry_point>)`` is appended when ``entry_point`` is given
  (HumanEval style).
* stdin/stdout tests -- ``{"io": [{"input": "1 2\\n", "output": "3\\n"}, ...]}`` or the
  APPS/TACO layout ``{"inputs": [...], "outputs": [...]}``: the solution runs as a program once per
  case with ``input`` on stdin; a case passes if it exits normally (or with ``sys.exit(0)``) and its
  stdout equals ``output`` line by line after stripping each line and the whole text.

Who decides (the policy is an adversary of this reward): the solution never shares a process
with a test, an expected value or a channel that reports success. Function-call tests and test
programs run in a trusted judge process; every name a test takes from the solution is a proxy to
the sandboxed solution process, whose return values come back as plain data rebuilt by built-in
code (:func:`~jaxrl_llm.rewards.sandbox.run_judged`), so comparisons and truth values are never
the solution's. stdin/stdout programs report their output and this process compares it. A test
that hands the solution something other than plain data (a lambda, an instance of a test-defined
class) fails; such tests need a different harness.

Scoring (verl ``prime_code`` semantics): the whole suite runs first (``limits``, default 5 s); if
every test passes the reward is 1. Otherwise ``mode="all"`` gives 0, and ``mode="fraction"``
returns passed / run over the first ``max_individual_tests`` (10) tests. Each test has its own
verdict inside the suite run; only tests the suite never reached (it crashed or timed out first)
run again alone (``test_limits``, default 10 s each). If every counted test passes although the
suite did not, the score is capped at ``(n - 1) / n`` so that only a passing suite earns 1.
Compile errors, runtime errors, time-outs and exceeded limits fail the test.

A malformed completion never raises (reward 0); a malformed ``tests`` value raises ValueError naming
the column and the row. See :mod:`jaxrl_llm.rewards.sandbox` for what the sandbox does and does not
guarantee.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Mapping, Sequence

import numpy as np

from jaxrl_llm.rewards.sandbox import (JudgedJob, JudgedResult, SandboxJob, SandboxLimits,
                                       SandboxPool, SandboxResult, solution_names)

_FENCE = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)```", re.DOTALL)
_PYTHON_TAGS = ("python", "py", "python3")
MODES = ("fraction", "all")


def extract_code(completion: str) -> tuple[str, bool]:
  """The code to run from a completion.

  Args:
    completion: decoded response text.
  Returns:
    ``(code, fenced)``, the last Markdown code fence marked ``python``, else the last fenced block
    of any language, else the whole completion (``fenced`` False).
  """
  blocks = _FENCE.findall(completion)
  for tag, body in reversed(blocks):
    if tag.strip().lower() in _PYTHON_TAGS:
      return body, True
  if blocks:
    return blocks[-1][1], True
  return completion, False


@dataclasses.dataclass(frozen=True)
class CodeTests:
  """One row's parsed tests.

  Attributes:
    kind: "asserts" (function-call tests) or "io" (stdin/stdout cases).
    asserts: the test snippets (kind "asserts").
    setup: code run before the solution and before the tests (kind "asserts").
    inputs, outputs: the cases (kind "io").
    names, modules: what the tests take from the solution, and the standard-library modules the
      judge imports for them (:func:`~jaxrl_llm.rewards.sandbox.solution_names`).
  """

  kind: str
  asserts: tuple[str, ...] = ()
  setup: str = ""
  inputs: tuple[str, ...] = ()
  outputs: tuple[str, ...] = ()
  names: tuple[str, ...] = ()
  modules: tuple[str, ...] = ()

  @property
  def num_tests(self) -> int:
    """Number of tests in the suite."""
    return len(self.asserts) if self.kind == "asserts" else len(self.inputs)


def parse_tests(value: Any, row: int = 0, column: str = "tests") -> CodeTests:
  """Parses one row's ``tests`` value (JSON text or dict; format in the module docstring).

  Raises:
    ValueError naming ``column`` and ``row`` if the value is malformed or has no tests.
  """
  where = f"column {column!r} row {row}"
  if isinstance(value, (str, bytes)):
    try:
      value = json.loads(value)
    except ValueError as e:
      raise ValueError(f"{where}: not valid JSON: {e}") from None
  if not isinstance(value, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")

  def text(key: str, default: str | None = None) -> str:
    v = value.get(key, default)
    if not isinstance(v, str):
      raise ValueError(f"{where}: {key!r} must be a string, got {type(v).__name__}")
    return v

  setup = text("setup", "")

  def judged(asserts: tuple[str, ...], entry: str | None = None) -> CodeTests:
    try:
      names, modules = solution_names(asserts, setup, entry)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
      raise ValueError(f"{where}: a test or the setup does not parse as Python: {e}") from None
    return CodeTests(kind="asserts", asserts=asserts, setup=setup, names=names, modules=modules)

  if "asserts" in value:
    asserts = value["asserts"]
    if (not isinstance(asserts, (list, tuple)) or not asserts or
        not all(isinstance(a, str) and a.strip() for a in asserts)):
      raise ValueError(f"{where}: 'asserts' must be a non-empty list of non-empty strings")
    return judged(tuple(asserts))
  if "test_code" in value:
    code = text("test_code")
    entry = value.get("entry_point")
    if entry is not None:
      if not isinstance(entry, str) or not entry.isidentifier():
        raise ValueError(f"{where}: 'entry_point' must be an identifier, got {entry!r}")
      code = f"{code}\n\ncheck({entry})\n"
    if not code.strip():
      raise ValueError(f"{where}: 'test_code' is empty")
    return judged((code,), entry)
  if "io" in value:
    cases = value["io"]
    if not isinstance(cases, (list, tuple)) or not cases:
      raise ValueError(f"{where}: 'io' must be a non-empty list of {{'input', 'output'}} objects")
    inputs, outputs = [], []
    for j, case in enumerate(cases):
      if (not isinstance(case, Mapping) or not isinstance(case.get("input"), str) or
          not isinstance(case.get("output"), str)):
        raise ValueError(f"{where}: io case {j} must have string 'input' and 'output'")
      inputs.append(case["input"])
      outputs.append(case["output"])
    return CodeTests(kind="io", inputs=tuple(inputs), outputs=tuple(outputs))
  if "inputs" in value or "outputs" in value:
    if value.get("fn_name"):
      raise ValueError(f"{where}: call-based tests ('fn_name') are not supported; use 'asserts'")
    inputs, outputs = value.get("inputs"), value.get("outputs")
    if (not isinstance(inputs, (list, tuple)) or not isinstance(outputs, (list, tuple)) or
        not inputs or len(inputs) != len(outputs) or
        not all(isinstance(s, str) for s in list(inputs) + list(outputs))):
      raise ValueError(f"{where}: 'inputs' and 'outputs' must be equally long, non-empty lists "
                       "of strings")
    return CodeTests(kind="io", inputs=tuple(inputs), outputs=tuple(outputs))
  raise ValueError(f"{where}: expected one of the keys 'asserts', 'test_code', 'io' or "
                   f"'inputs'/'outputs', got {sorted(value)}")


def outputs_match(got: str, expected: str) -> bool:
  """True if two program outputs agree line by line after stripping each line and the whole."""
  def lines(s: str) -> list[str]:
    return [line.strip() for line in s.strip().splitlines()]
  return lines(got) == lines(expected)


@dataclasses.dataclass(frozen=True)
class CodeScore:
  """Diagnostics of one scored completion.

  Attributes:
    score: the reward in [0, 1].
    passed: tests passed among those counted; total: tests counted (the whole suite if it passed,
      else the individually run ones; 0 when nothing ran).
    suite_passed: the whole suite passed in one process (the "all" reward).
    status: the suite run's sandbox status ("skipped" for an empty program).
    formatted: the completion contained a fenced code block.
  """

  score: float
  passed: int
  total: int
  suite_passed: bool
  status: str
  formatted: bool


def _case_passes(result: SandboxResult, i: int, expected: str) -> bool:
  cases = result.cases or []
  return i < len(cases) and cases[i].ok and outputs_match(cases[i].stdout, expected)


def _job(code: str, t: CodeTests, tests: Sequence[int] | None = None,
         limits: SandboxLimits | None = None) -> SandboxJob | JudgedJob:
  """The run of ``tests`` (indices; None = the whole suite) of one row."""
  idx = range(t.num_tests) if tests is None else tests
  if t.kind == "asserts":
    return JudgedJob(code=code, tests=tuple(t.asserts[j] for j in idx), setup=t.setup,
                     names=t.names, modules=t.modules, limits=limits)
  return SandboxJob(code=code, cases=tuple(t.inputs[j] for j in idx), limits=limits)


def _verdicts(result: SandboxResult | JudgedResult, t: CodeTests,
              tests: Sequence[int]) -> list[bool | None]:
  """Per test of a run: passed, failed, or None (the run ended before it)."""
  if isinstance(result, JudgedResult):
    return list(result.verdicts)
  cases = result.cases or []
  return [_case_passes(result, k, t.outputs[j]) if k < len(cases) else None
          for k, j in enumerate(tests)]


class CodeReward:
  """A code-execution reward function that owns its sandbox pool.

  Call it as ``reward(prompts, completions, tests=[...]) -> float32 [B]``; close it (or use it as
  a context manager) to stop the pool's threads. Rows run concurrently, at most ``max_workers``
  children at a time.

  Args:
    mode: "fraction" (passed / run after a failed suite) or "all" (1 iff the suite passes).
    limits: limits of the whole-suite run (default 5 s CPU and wall, 1 GiB).
    test_limits: limits of each individual test run (default 10 s CPU and wall, 1 GiB).
    max_workers: most sandbox processes at once (default: number of CPUs).
    max_individual_tests: how many leading tests to run individually after a failed suite.
    site_packages: let the code import installed packages (runs the child without ``-S``).
  """

  def __init__(self, *, mode: str = "fraction", limits: SandboxLimits | None = None,
               test_limits: SandboxLimits | None = None, max_workers: int | None = None,
               max_individual_tests: int = 10, site_packages: bool = False):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(max_individual_tests, int) or max_individual_tests < 1:
      raise ValueError(f"max_individual_tests must be a positive int, got {max_individual_tests!r}")
    self.mode = mode
    self.limits = limits or SandboxLimits(cpu_s=5.0, wall_s=5.0)
    self.test_limits = test_limits or SandboxLimits(cpu_s=10.0, wall_s=10.0)
    self.max_individual_tests = max_individual_tests
    self.pool = SandboxPool(max_workers, limits=self.limits, site_packages=site_packages)

  def score_rows(self, completions: Sequence[str], tests: Sequence[Any]) -> list[CodeScore]:
    """Scores each completion against its row's tests.

    Args:
      completions: ``B`` decoded responses.
      tests: ``B`` values of the ``tests`` column.
    Returns:
      ``B`` :class:`CodeScore` records.
    Raises:
      ValueError: a ``tests`` value is malformed or the lengths differ.
    """
    if len(tests) != len(completions):
      raise ValueError(f"column 'tests' has {len(tests)} values for {len(completions)} completions")
    parsed = [parse_tests(t, row) for row, t in enumerate(tests)]
    extracted = [extract_code(c) if isinstance(c, str) else ("", False) for c in completions]
    rows = [i for i, (code, _) in enumerate(extracted) if code.strip()]
    suite = dict(zip(rows, self.pool.run_many(_job(extracted[i][0], parsed[i]) for i in rows)))
    verdicts = {i: _verdicts(suite[i], parsed[i], range(parsed[i].num_tests)) for i in rows}
    suite_passed = {i: all(x is True for x in v) for i, v in verdicts.items()}
    # Phase 2 (fraction mode): each of the first ``max_individual_tests`` tests that the suite run
    # never reached (it timed out or crashed first) runs alone; all rows at once.
    individual: list[tuple[int, int]] = []
    for i in rows:
      v, t = verdicts[i], parsed[i]
      if self.mode == "all" or suite_passed[i] or suite[i].syntax_error:
        continue
      individual += [(i, j) for j in range(min(t.num_tests, self.max_individual_tests))
                     if v[j] is None]
    reruns = self.pool.run_many(_job(extracted[i][0], parsed[i], (j,), self.test_limits)
                                for i, j in individual)
    for (i, j), r in zip(individual, reruns):
      verdicts[i][j] = _verdicts(r, parsed[i], (j,))[0] is True
    scores = []
    for i, (code, formatted) in enumerate(extracted):
      t = parsed[i]
      if i not in suite:
        scores.append(CodeScore(0.0, 0, 0, False, "skipped", formatted))
        continue
      result, v = suite[i], verdicts[i]
      if suite_passed[i]:
        scores.append(CodeScore(1.0, t.num_tests, t.num_tests, True, result.status, formatted))
        continue
      if self.mode == "all" or result.syntax_error:
        scores.append(CodeScore(0.0, 0, t.num_tests, False, result.status, formatted))
        continue
      k = min(t.num_tests, self.max_individual_tests)
      passed = sum(v[j] is True for j in range(k))
      score = passed / k
      if passed == k:  # every counted test passed, but not the whole suite in one run.
        score = (t.num_tests - 1) / t.num_tests
      scores.append(CodeScore(float(score), int(passed), k, False, result.status, formatted))
    return scores

  def __call__(self, prompts: list[str], completions: list[str], *, tests: Sequence[Any],
               **_: object) -> np.ndarray:
    """The reward: float32 ``[B]`` in [0, 1] (see :meth:`score_rows`)."""
    if len(prompts) != len(completions):
      raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    return np.asarray([s.score for s in self.score_rows(completions, tests)], np.float32)

  def close(self) -> None:
    """Stops the sandbox pool (waits for running children, each bounded by its wall limit)."""
    self.pool.close()

  def __enter__(self) -> CodeReward:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def make_code_reward(*, mode: str = "fraction", limits: SandboxLimits | None = None,
                     test_limits: SandboxLimits | None = None, max_workers: int | None = None,
                     max_individual_tests: int = 10, site_packages: bool = False) -> CodeReward:
  """A code-execution reward function ``(prompts, completions, *, tests, **_) -> float32 [B]``.

  The returned :class:`CodeReward` owns a :class:`SandboxPool`; arguments as documented there.
  """
  return CodeReward(mode=mode, limits=limits, test_limits=test_limits, max_workers=max_workers,
                    max_individual_tests=max_individual_tests, site_packages=site_packages)


def code_unit_tests(prompts: list[str], completions: list[str], *, tests: Sequence[Any],
                    **_: object) -> np.ndarray:
  """Fractional unit-test reward with default limits (a pool is created for this call only).

  Args:
    prompts, completions: ``B`` strings; tests: ``B`` test specs (module docstring).
  Returns:
    float32 ``[B]`` in [0, 1].
  """
  with make_code_reward(mode="fraction") as reward:
    return reward(prompts, completions, tests=tests)


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

  Computed as ``1 - prod_{i=n-c+1..n} (1 - k / i)`` (Chen et al., arXiv:2107.03374), which avoids
  huge binomials.

  Raises:
    ValueError unless ``0 <= c <= n`` and ``1 <= k <= n``.
  """
  if not (0 <= c <= n) or not (1 <= k <= n):
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_table(results_per_problem: Sequence[Sequence[bool]],
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Mean unbiased pass@k over problems.

  Args:
    results_per_problem: per problem, one bool per sample (correct or not).
    ks: the k values; a k larger than some problem's sample count is left out.
  Returns:
    {"pass@k": mean over problems} for each reportable k.
  """
  if not results_per_problem:
    raise ValueError("pass_at_k_table needs at least one problem")
  counts = [(len(r), int(sum(bool(x) for x in r))) for r in results_per_problem]
  min_n = min(n for n, _ in counts)
  return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
          for k in ks if 1 <= k <= min_n}


def evaluate_pass_at_k(problems: Sequence[Any], samples_per_problem: Sequence[Sequence[str]], *,
                       ks: Sequence[int] = (1, 5, 10), limits: SandboxLimits | None = None,
                       max_workers: int | None = None,
                       site_packages: bool = False) -> dict[str, float]:
  """Runs every sample against its problem's tests (all-pass) and reports pass@k.

  Args:
    problems: ``P`` test specs (the ``tests`` row format).
    samples_per_problem: ``P`` lists of completions.
  Returns:
    {"pass@k": ...} as :func:`pass_at_k_table`, plus "num_problems" and "num_samples".
  """
  if len(problems) != len(samples_per_problem):
    raise ValueError(f"{len(problems)} problems but {len(samples_per_problem)} sample lists")
  flat_tests = [p for p, s in zip(problems, samples_per_problem) for _ in s]
  flat = [c for s in samples_per_problem for c in s]
  with make_code_reward(mode="all", limits=limits, max_workers=max_workers,
                        site_packages=site_packages) as reward:
    scores = reward.score_rows(flat, flat_tests)
  results, start = [], 0
  for s in samples_per_problem:
    results.append([x.suite_passed for x in scores[start:start + len(s)]])
    start += len(s)
  table = pass_at_k_table(results, ks)
  table.update(num_problems=float(len(problems)), num_samples=float(len(flat)))
  return table
