"""Numbers that stay true: README's headline block is rendered from benchmarks/headline.json (what
benchmarks/reproduce.py measured), and a shortened default experiment reproduces its recorded
numbers (exactly on the recorded CPU and jax version, within a tolerance elsewhere)."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import reproduce  # noqa: E402


def test_readme_headline_block_is_rendered_from_headline_json():
  with open(reproduce.HEADLINE) as f:
    headline = json.load(f)
  with open(reproduce.README, encoding="utf-8") as f:
    readme = f.read()
  assert reproduce.render(headline) in readme, (
      "README.md's headline block differs from benchmarks/headline.json: rerun "
      "`python benchmarks/reproduce.py`")
  grpo = headline["results"]["arithmetic-grpo"]
  assert grpo["test/examples"] == 1000 and grpo["experiment"] == "arithmetic-grpo"


@pytest.mark.slow
def test_shortened_default_experiment_reproduces_its_recorded_numbers(tmp_path, monkeypatch):
  import jax

  with open(reproduce.SHORT) as f:
    recorded = json.load(f)
  assert len(jax.devices()) == recorded["devices"]
  monkeypatch.setenv("JAXRL_LLM_DATA_DIR", str(tmp_path / "tfds"))
  got = reproduce.run_experiment("arithmetic-grpo", reproduce.SHORT_OVERRIDES,
                                 str(tmp_path / "short"))
  want = recorded["result"]
  keys = ("test/accuracy_before", "test/accuracy")
  if reproduce.same_cpu(reproduce.machine(), recorded["machine"]):
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys}, (
        "the shortened default experiment moved: if intended, rerun "
        "`python benchmarks/reproduce.py --short` (and the full run) and record why")
  else:
    for k in keys:
      assert abs(got[k] - want[k]) <= reproduce.TOLERANCE, (k, got[k], want[k])
