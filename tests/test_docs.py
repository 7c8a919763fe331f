"""The project's documentation: every section of the algorithm reference the code cites exists, the
tutorial runs as written, and the Sphinx site (API reference from the docstrings) builds with
warnings as errors."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_cited_section_of_the_algorithm_reference_exists():
  with open(os.path.join(REPO, "docs", "algorithms.md"), encoding="utf-8") as f:
    headings = set(re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.? ", f.read(), re.M))
  cited = {}
  for root in ("jaxrl_llm", "experiments", "benchmarks", "tests"):
    for dirpath, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith((".py", ".md")):
          path = os.path.join(dirpath, name)
          with open(path, encoding="utf-8") as f:
            for section in re.findall(r"docs/algorithms\.md §([0-9]+(?:\.[0-9]+)?)", f.read()):
              cited.setdefault(section, path)
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    for section in re.findall(r"docs/algorithms\.md §([0-9]+(?:\.[0-9]+)?)", f.read()):
      cited.setdefault(section, "README.md")
  assert len(cited) > 20
  missing = {s: p for s, p in cited.items() if s not in headings}
  assert not missing, f"cited sections without a heading in docs/algorithms.md: {missing}"
  # No citation of a specification outside the repository.
  for root in ("jaxrl_llm", "experiments"):
    for dirpath, _, files in os.walk(os.path.join(REPO, root)):
      for name in files:
        if name.endswith(".py"):
          with open(os.path.join(dirpath, name), encoding="utf-8") as f:
            assert "ALGORITHMS.md" not in f.read(), name


@pytest.mark.slow
def test_your_own_task_tutorial_runs_as_written(tmp_path):
  """Every command block of docs/your_own_task.md, in order, in a fresh directory, with each
  training stage cut to two steps."""
  with open(os.path.join(REPO, "docs", "your_own_task.md"), encoding="utf-8") as f:
    blocks = re.findall(r"^```bash\n(.*?)^```", f.read(), re.M | re.S)
  assert len(blocks) >= 4
  env = dict(os.environ, JAXRL_LLM_SHRINK_STEPS="2",
             JAXRL_LLM_COMPILATION_CACHE=str(tmp_path / "xla"),
             JAXRL_LLM_DATA_DIR=str(tmp_path / "tfds"),
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
             PYTHONPATH=REPO)
  script = "set -euo pipefail\n" + "\n".join(blocks)
  out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=900, stdin=subprocess.DEVNULL)
  assert out.returncode == 0, out.stdout[-4000:]
  assert "resumed from step 2 of 2" in out.stdout
  for run in ("reverse", "reverse-again"):
    assert os.path.exists(tmp_path / "runs" / run / "eval.json"), run
  assert (open(tmp_path / "runs" / "reverse" / "metrics.jsonl").read() ==
          open(tmp_path / "runs" / "reverse-again" / "metrics.jsonl").read())


def test_sphinx_site_builds_with_warnings_as_errors(tmp_path):
  """docs/ (the algorithm reference, the tutorial and the API reference generated from every
  module's docstrings) builds with ``sphinx-build -W``: a docstring that breaks reStructuredText,
  an ambiguous cross-reference or a module missing from docs/api.rst fails the suite."""
  import pkgutil

  import jaxrl_llm

  with open(os.path.join(REPO, "docs", "api.rst"), encoding="utf-8") as f:
    listed = set(re.findall(r"^\.\. automodule:: (\S+)", f.read(), re.M))
  modules = {m.name for m in pkgutil.walk_packages(jaxrl_llm.__path__, "jaxrl_llm.")}
  assert modules - listed == set(), "modules missing from docs/api.rst"
  out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                        os.path.join(REPO, "docs"), str(tmp_path / "html")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stdout[-4000:]
  assert (tmp_path / "html" / "api.html").exists()
  assert "make_update" in (tmp_path / "html" / "api.html").read_text(encoding="utf-8")
