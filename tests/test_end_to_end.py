"""Whole runs: determinism, SIGKILL + resume equals an uninterrupted run, reproduction from a run
directory's config.json, half-written checkpoints, CLI eval and plot."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import replace, tiny_config
from jaxrl_llm.cli import main
from jaxrl_llm.config import load_json, save_json
from jaxrl_llm.train import Checkpointer, new_run_dir, read_metrics, resume, train

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics_text(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return f.read()


@pytest.fixture(scope="module")
def long_config(data_dir):
  # Long enough that a SIGKILL lands mid-run; checkpoints every 4 steps.
  return tiny_config(data_dir, steps=24, checkpoint_every=4, eval_every=12, keep_checkpoints=2)


@pytest.fixture(scope="module")
def reference_run(long_config, tmp_path_factory):
  run_dir = new_run_dir(long_config, str(tmp_path_factory.mktemp("ref")))
  out = train(long_config, run_dir)
  return run_dir, jax.device_get(out["state"].params)


def test_same_seed_gives_identical_metrics(long_config, reference_run, tmp_path):
  ref_dir, _ = reference_run
  run_dir = new_run_dir(long_config, str(tmp_path / "again"))
  train(long_config, run_dir)
  assert _metrics_text(run_dir) == _metrics_text(ref_dir)
  rows = read_metrics(run_dir)
  assert [r["step"] for r in rows] == list(range(1, 25))
  assert "test/exact_match" in rows[-1] and "eval/exact_match" in rows[11]
  # A different seed gives a different run: the comparison above can fail.
  other = new_run_dir(replace(long_config, seed=8), str(tmp_path / "other"))
  train(replace(long_config, seed=8, train=dict(steps=2)), other)
  assert read_metrics(other)[0]["train/loss"] != rows[0]["train/loss"]


def test_run_directory_contents(reference_run):
  run_dir, _ = reference_run
  for name in ("config.json", "metrics.jsonl", "eval.json", "plots/curves.png",
               "tokenizer/tokenizer.json"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(
      os.path.join(run_dir, "tensorboard")))
  steps = sorted(int(d) for d in os.listdir(os.path.join(run_dir, "checkpoints")) if d.isdigit())
  assert steps == [20, 24]  # keep_checkpoints=2
  assert 0.0 <= json.load(open(os.path.join(run_dir, "eval.json")))["test/exact_match"] <= 1.0


def test_sigkill_then_resume_equals_uninterrupted(long_config, reference_run, tmp_path):
  ref_dir, ref_params = reference_run
  run_dir = str(tmp_path / "killed")
  os.makedirs(run_dir)
  cfg_path = os.path.join(str(tmp_path), "cfg.json")
  save_json(long_config, cfg_path)
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.Popen([sys.executable, "-m", "jaxrl_llm.cli", "run", "--config", cfg_path,
                           "--run-dir", run_dir], env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  deadline = time.time() + 300
  killed_at = None
  while time.time() < deadline and proc.poll() is None:
    done = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if done and max(done) >= 8:
      os.kill(proc.pid, signal.SIGKILL)
      killed_at = max(done)
      break
    time.sleep(0.05)
  proc.wait()
  output = proc.stdout.read().decode(errors="replace")
  assert killed_at is not None, f"run ended before it could be killed:\n{output}"
  assert proc.returncode == -signal.SIGKILL
  rows = read_metrics(run_dir)
  assert rows and rows[-1]["step"] < 24  # It really was interrupted.
  out = resume(run_dir)
  assert _metrics_text(run_dir) == _metrics_text(ref_dir)
  for a, b in zip(jax.tree.leaves(jax.device_get(out["state"].params)),
                  jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)


def test_half_written_checkpoint_is_never_restored(long_config, reference_run, tmp_path):
  import shutil

  ref_dir, _ = reference_run
  run_dir = str(tmp_path / "copy")
  shutil.copytree(ref_dir, run_dir)
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  # What a kill during an async save leaves behind: a temporary directory with partial files.
  partial = os.path.join(ckpt_dir, "28.orbax-checkpoint-tmp-1234567890")
  os.makedirs(os.path.join(partial, "state"))
  with open(os.path.join(partial, "state", "garbage"), "wb") as f:
    f.write(b"\x00" * 10)
  ckpt = Checkpointer(ckpt_dir, keep=2, async_save=False)
  assert ckpt.latest_step() == 24
  ckpt.close()


def test_cli_reproduces_from_config_json_and_evaluates(reference_run, tmp_path, capsys):
  ref_dir, _ = reference_run
  run_dir = str(tmp_path / "repro")
  # Shorter reproduction: the same config with fewer steps must match the reference prefix.
  cfg = load_json(os.path.join(ref_dir, "config.json"))
  assert main(["run", "--config", os.path.join(ref_dir, "config.json"), "--set",
               "train.steps=24", "--run-dir", run_dir]) == 0
  assert _metrics_text(run_dir) == _metrics_text(ref_dir)
  assert load_json(os.path.join(run_dir, "config.json")) == cfg
  capsys.readouterr()
  # Evaluating the final checkpoint on the same 16 test rows reproduces the run's own number.
  assert main(["eval", run_dir, "--split", "test", "--limit", "16"]) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["step"] == 24 and result["examples"] == 16
  assert result["exact_match"] == json.load(open(os.path.join(ref_dir, "eval.json")))[
      "test/exact_match"]
  assert main(["plot", run_dir, "--out", str(tmp_path / "p.png")]) == 0
  assert os.path.getsize(tmp_path / "p.png") > 1000
  # Running again into a directory that holds a run is refused.
  assert main(["run", "--config", os.path.join(ref_dir, "config.json"), "--run-dir", run_dir]) == 2


def test_sigterm_checkpoints_the_current_step_and_resume_equals_uninterrupted(
    long_config, reference_run, tmp_path, monkeypatch):
  """Preemption: SIGTERM during step 7 (no checkpoint is due there: every 4) makes the loop save
  step 7 and stop with Preempted; resume continues to the same metrics and parameters as the
  uninterrupted run. The signal goes through the real handler (raise_signal in this process)."""
  from jaxrl_llm.rundir import checkpoint as ckpt_lib

  due = ckpt_lib.CheckpointCadence.due

  def due_with_sigterm(self, done, final):
    if done == 7:
      signal.raise_signal(signal.SIGTERM)
    return due(self, done, final)

  monkeypatch.setattr(ckpt_lib.CheckpointCadence, "due", due_with_sigterm)
  ref_dir, ref_params = reference_run
  run_dir = new_run_dir(long_config, str(tmp_path / "preempted"))
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(ckpt_lib.Preempted, match="after step 7"):
    train(long_config, run_dir)
  assert signal.getsignal(signal.SIGTERM) is before  # The handler is restored.
  assert Checkpointer(os.path.join(run_dir, "checkpoints"), keep=2,
                      async_save=False).latest_step() == 7
  assert read_metrics(run_dir)[-1]["step"] == 7
  monkeypatch.setattr(ckpt_lib.CheckpointCadence, "due", due)
  out = resume(run_dir)
  assert _metrics_text(run_dir) == _metrics_text(ref_dir)
  for a, b in zip(jax.tree.leaves(jax.device_get(out["state"].params)),
                  jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
