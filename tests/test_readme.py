"""README.md's every command block runs as written.

The bash blocks run in order as one script in a fresh directory, the python blocks after them,
each training stage cut to two steps (``JAXRL_LLM_SHRINK_STEPS``). Two kinds of command are not
re-executed, and are checked instead:

* ``python -m pip install ...``: what it installs must already be installed here (this package
  from this checkout, the pinned torch, the ``test`` extra's packages);
* ``python -m pytest -q`` on the line after the ``test-command`` marker: that is the command CI
  (``.ci/run``) runs, i.e. this test suite itself.
"""

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")


def readme_blocks() -> list[tuple[str, str]]:
  """``(language, text)`` of every fenced block of README.md; a block without a language is an
  error (nothing in the README escapes this test by omitting one)."""
  with open(README, encoding="utf-8") as f:
    text = f.read()
  blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)
  unlabelled = [b for lang, b in blocks if not lang]
  assert not unlabelled, f"README blocks need a language (bash / python): {unlabelled}"
  return blocks


def _test_extra() -> list[str]:
  with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as f:
    text = f.read()
  body = re.search(r"^test = \[(.*?)^\]", text, re.M | re.S).group(1)
  return re.findall(r'^\s*"([^"]+)"', body, re.M)


def _requirement_name(spec: str) -> tuple[str, str]:
  m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==\s*([^,;\s]+))?", spec)
  return m.group(1), m.group(3) or ""


def check_pip_install(args: list[str]) -> None:
  """What ``pip install ARGS`` would install is installed: ``-e .`` / ``-e ".[test]"`` is this
  checkout (plus the extra's packages), ``name==version`` is that version."""
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "-e":
      target = args[i + 1]
      i += 2
      path, _, extras = target.partition("[")
      assert os.path.realpath(path or ".") in (REPO, os.path.realpath(".")), target
      import jaxrl_llm

      assert os.path.dirname(os.path.dirname(os.path.abspath(jaxrl_llm.__file__))) == REPO, (
          "jaxrl_llm is not installed from this checkout")
      importlib.metadata.version("jaxrl_llm")
      if extras.rstrip("]") == "test":
        for spec in _test_extra():
          name, version = _requirement_name(spec)
          have = importlib.metadata.version(name)
          assert not version or have.split("+")[0] == version, (name, have, version)
      continue
    assert not arg.startswith("-"), f"unexpected pip option {arg!r} in README"
    name, version = _requirement_name(arg)
    have = importlib.metadata.version(name)
    assert not version or have.split("+")[0] == version, (name, have, version)
    i += 1


def runnable_script(blocks) -> str:
  """The bash blocks as one script: pip installs checked (here, in this process) and dropped,
  the CI test command dropped; everything else verbatim."""
  with open(README, encoding="utf-8") as f:
    marker_line = re.search(r"<!-- test-command.*\n```bash\n(.*)\n", f.read()).group(1)
  lines = []
  for lang, text in blocks:
    if lang != "bash":
      continue
    if text.strip() == marker_line.strip():
      for part in text.strip().split(" && "):
        words = shlex.split(part)
        if words[:4] == ["python", "-m", "pip", "install"]:
          check_pip_install(words[4:])
        else:
          assert words == ["python", "-m", "pytest", "-q"], part
      continue
    out = []
    for part in text.rstrip("\n").split(" && "):
      words = part.split()
      if words[:4] == ["python", "-m", "pip", "install"]:
        check_pip_install(shlex.split(part)[4:])
      else:
        out.append(part)
    lines.append(" && ".join(out))
  return "set -euo pipefail\n" + "\n".join(lines) + "\n"


def test_readme_blocks_are_all_labelled_and_the_installs_are_what_we_run():
  blocks = readme_blocks()
  script = runnable_script(blocks)
  assert "jaxrl-llm run arithmetic-grpo" in script
  assert "pytest" not in script


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
  blocks = readme_blocks()
  env = dict(os.environ, JAXRL_LLM_SHRINK_STEPS="2",
             JAXRL_LLM_COMPILATION_CACHE=str(tmp_path / "xla"),
             JAXRL_LLM_DATA_DIR=str(tmp_path / "tfds"),
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
             PYTHONPATH=REPO)
  work = tmp_path / "work"
  work.mkdir()

  def sh(script: str, *, timeout: int = 1200) -> str:
    out = subprocess.run(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-5000:]
    return out.stdout

  out = sh(runnable_script(blocks))
  runs = work / "runs"
  default = [d for d in os.listdir(runs) if d.startswith("arithmetic-grpo-")]
  assert len(default) == 1 and (runs / default[0] / "eval.json").exists(), os.listdir(runs)
  assert "held-out test accuracy after RL" in out
  # Reproduce, resume, eval, plot of the SFT run.
  assert ((runs / "sft-300" / "metrics.jsonl").read_text() ==
          (runs / "sft-300-again" / "metrics.jsonl").read_text())
  assert json.loads((runs / "sft-300" / "config.json").read_text())["seed"] == 1
  assert (runs / "sft-300" / "plots" / "curves.png").exists()
  # RLAIF: labelled pairs with held-out splits, then a reward model trained on them.
  for split in ("train", "validation", "test"):
    assert (work / "data" / "ai_pairs" / f"{split}.jsonl").stat().st_size > 0, split
  assert (runs / "rm-from-ai-labels" / "eval.json").exists()
  # The python blocks, each in its own process, in the same directory.
  for lang, text in blocks:
    if lang == "python":
      sh(f"python - <<'PYTHON_BLOCK'\n{text}PYTHON_BLOCK\n")
  assert len([d for d in os.listdir(runs) if d.startswith("arithmetic-grpo-")]) == 2
