"""``jaxrl-llm compare`` and ``jaxrl-llm report`` on real (tiny) runs."""

import json
import os

import pytest


@pytest.fixture(scope="module")
def two_runs(tiny, tmp_path_factory):
  from conftest import replace

  from jaxrl_llm.train import sft_loop

  root = tmp_path_factory.mktemp("runs")
  runs = []
  for name, lr in (("a", 3e-3), ("b", 1e-2)):
    run = str(root / name)
    sft_loop.train(replace(tiny, optimizer=dict(learning_rate=lr),
                           train=dict(steps=2, eval_every=0, test_examples=8)), run)
    runs.append(run)
  return runs


def test_compare_overlays_runs_with_legends_that_tell_them_apart(two_runs, tmp_path, capsys):
  from jaxrl_llm import cli
  from jaxrl_llm.analysis import compare

  out = str(tmp_path / "cmp.png")
  assert cli.main(["compare", *two_runs, "--out", out]) == 0
  result = json.loads(capsys.readouterr().out)
  assert os.path.getsize(out) > 0 and result["plot"] == out
  # SFT runs have none of the RL panels: their loss is drawn instead.
  assert list(result["panels"]) == ["loss"]
  assert result["runs"] == ["tiny-test optimizer.learning_rate=0.003",
                            "tiny-test optimizer.learning_rate=0.01"]
  chosen = compare.compare(two_runs, metrics=["train/grad_norm", "nope"],
                           out=str(tmp_path / "c2.png"))
  assert list(chosen["panels"]) == ["train/grad_norm"] and len(chosen["missing"]) == 2
  # A directory that is not a run: a clear error and exit status 2.
  capsys.readouterr()
  assert cli.main(["compare", two_runs[0], str(tmp_path)]) == 2
  assert "has no metrics.jsonl" in capsys.readouterr().err
  with pytest.raises(ValueError, match="none of the runs"):
    compare.compare(two_runs, metrics=["nope"], out=str(tmp_path / "c3.png"))


def test_report_is_one_self_contained_page(two_runs, tmp_path, capsys):
  from jaxrl_llm import cli

  a, b = two_runs
  assert cli.main(["analyze", "sparsity", b, "--before", a]) == 0
  assert cli.main(["report", b]) == 0
  path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["report"]
  assert path == os.path.join(b, "report.html")
  page = open(path, encoding="utf-8").read()
  for needle in ("<h2>Held-out results</h2>", "test/exact_match", "<h2>Curves</h2>",
                 "<h3>sparsity</h3>", "update_rank_mean", "the whole config.json"):
    assert needle in page, needle
  # Images are embedded (no sibling files needed); nothing references a local path as a source.
  assert page.count("data:image/png;base64,") == 2
  assert 'src="/' not in page and "src='/" not in page
  assert cli.main(["report", str(tmp_path)]) == 2
  assert "has no metrics.jsonl" in capsys.readouterr().err


def test_the_four_analysis_commands_are_in_help(capsys):
  from jaxrl_llm import cli

  with pytest.raises(SystemExit):
    cli.main(["--help"])
  text = capsys.readouterr().out
  for command in ("analyze", "compare", "report"):
    assert command in text
  with pytest.raises(SystemExit):
    cli.main(["analyze", "--help"])
  assert "{sparsity,entropy}" in capsys.readouterr().out
