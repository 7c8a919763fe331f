"""Multi-process runs on CPU: 2 processes × 4 fake devices form the same 8-device mesh as this
test process, and a run launched that way equals the single-process run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrl_llm.config import save_json
from jaxrl_llm.parallel.launch import launch
from jaxrl_llm.rundir.artifacts import load_run
from jaxrl_llm.train import new_run_dir, read_metrics, run
from test_rl import tiny_rl_config
from conftest import replace

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, env=None, **kw):
  return subprocess.Popen([sys.executable, "-m", "jaxrl_llm.cli", *args], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO, **(env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, **kw)


def _close(a, b, where):
  """Same metrics: every key and integer-valued count exactly, floats to float tolerance (the
  two runs reduce across devices in different orders)."""
  assert a.keys() == b.keys(), where
  for k in a:
    if isinstance(a[k], float) and a[k] != round(a[k]):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=f"{where} {k}")
    else:
      assert a[k] == b[k], f"{where} {k}: {a[k]} != {b[k]}"


@pytest.fixture(scope="module")
def rl_config(data_dir):
  cfg = tiny_rl_config(data_dir)
  return replace(cfg, train=dict(steps=4, checkpoint_every=2, eval_every=0),
                 logging=dict(progress="plain", tensorboard=False))


@pytest.fixture(scope="module")
def single_run(rl_config, tmp_path_factory):
  """The uninterrupted single-process run (8 devices) that the 2-process runs must equal."""
  one = new_run_dir(rl_config, str(tmp_path_factory.mktemp("one")))
  run(rl_config, one)
  return one


def test_a_dead_peer_is_named_not_waited_for_forever(tmp_path):
  """Process 1 dies at once; process 0 would wait for it in a collective. The launcher stops it
  after the grace period and names process 1 and its status."""
  script = ("import os, sys, time\n"
            "if os.environ['JAXRL_LLM_PROCESS_ID'] == '1': sys.exit(3)\n"
            "time.sleep(120)\n")
  log = tmp_path / "log.txt"
  start = time.monotonic()
  with open(log, "w") as f:
    rc = launch([], processes=2, grace_s=1.0, log=f, program=[sys.executable, "-c", script])
  assert rc == 3 and time.monotonic() - start < 60
  assert "process 1 of 2 exited with status 3; stopped processes [0]" in log.read_text()
  # A process killed by a signal is named with it (a runtime abort says what it means).
  with open(log, "w") as f:
    rc = launch([], processes=2, grace_s=1.0, log=f, program=[
        sys.executable, "-c", "import os, signal\nos.kill(os.getpid(), signal.SIGABRT)"])
  assert rc == 1 and "exited with signal SIGABRT (the JAX runtime aborted" in log.read_text()


def test_a_process_that_never_joins_is_a_clear_error():
  env = {"JAXRL_LLM_COORDINATOR": "127.0.0.1:%d" % _free_port(), "JAXRL_LLM_NUM_PROCESSES": "2",
         "JAXRL_LLM_PROCESS_ID": "0", "JAXRL_LLM_INIT_TIMEOUT_S": "1"}
  proc = subprocess.run([sys.executable, "-c", "from jaxrl_llm.parallel import distributed; "
                         "distributed.initialize()"], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=REPO, **env), timeout=120)
  # JAX's runtime aborts the process; our line before it names the process and the deadline.
  assert proc.returncode != 0
  assert "process 0 of 2 joining the run at 127.0.0.1:" in proc.stderr
  assert "every process must join within 1 s" in proc.stderr
  from jaxrl_llm.parallel import distributed

  with pytest.raises(ValueError, match=r"JAXRL_LLM_PROCESS_ID=2 must be in \[0, "
                     r"JAXRL_LLM_NUM_PROCESSES=2\)"):
    distributed.initialize(dict(env, JAXRL_LLM_PROCESS_ID="2"))
  with pytest.raises(ValueError, match="JAXRL_LLM_COORDINATOR set but JAXRL_LLM_NUM_PROCESSES"):
    distributed.initialize({"JAXRL_LLM_COORDINATOR": "127.0.0.1:1"})


def _free_port():
  from jaxrl_llm.parallel.launch import free_port

  return free_port()


def _wait_for(predicate, proc, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def test_two_processes_killed_preempted_resumed_equal_one_process(rl_config, single_run,
                                                                   tmp_path):
  """An RL run as 2 processes × 4 devices: SIGKILL one process mid-run (the launcher stops the
  other and names the dead one), resume both; SIGTERM the launcher (forwarded: both processes
  agree on a step, checkpoint it and exit 143), resume again. Its metrics equal the
  uninterrupted 1-process × 8-device run's, and its checkpoint restores in one process."""
  one = single_run
  cfg_path = str(tmp_path / "cfg.json")
  save_json(rl_config, cfg_path)
  run_dir = str(tmp_path / "two")
  ckpts = os.path.join(run_dir, "checkpoints")
  launch_args = ["launch", "--processes", "2", "--devices-per-process", "4", "--grace-s", "5",
                 "--"]
  proc = _cli(*launch_args, "run", "--config", cfg_path, "--run-dir", run_dir)
  assert _wait_for(lambda: os.path.isdir(ckpts) and "2" in os.listdir(ckpts), proc), \
      proc.communicate()[0].decode()[-3000:]
  child = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[-1])
  os.kill(child, signal.SIGKILL)
  out = proc.communicate(timeout=300)[0].decode(errors="replace")
  assert proc.returncode != 0 and "exited with signal SIGKILL" in out, out[-3000:]
  assert read_metrics(run_dir)[-1]["step"] < 4
  # Resume on both processes, preempted by SIGTERM once step 3 is logged.
  proc = _cli(*launch_args, "resume", run_dir)
  _wait_for(lambda: any(r["step"] >= 3 for r in read_metrics(run_dir)), proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0].decode(errors="replace")
  # Either both stopped after step 3 (143) or the signal came during the last step (0).
  assert proc.returncode in (0, 143), out[-3000:]
  if proc.returncode == 143:
    assert "preempted (SIGTERM): stopped after step 3" in out
    proc = _cli(*launch_args, "resume", run_dir)
    out = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
  assert out.count("held-out test accuracy after RL") == 1  # Only process 0 reports.
  rows_one, rows_two = read_metrics(one), read_metrics(run_dir)
  assert [r["step"] for r in rows_two] == [1, 2, 3, 4]
  for a, b in zip(rows_one, rows_two):
    _close(a, b, f"step {a['step']}")
  # The 2-process checkpoint restores in this single process, to the same parameters. Adam
  # divides by the gradient's running RMS: where a gradient is ~0, reduction-order noise moves a
  # weight by a fraction of one step (lr 1e-3); 1e-5 is 1% of a step.
  a, b = load_run(one), load_run(run_dir)
  assert a.step == b.step == 4
  for x, y in zip(jax.tree.leaves(a.state["params"]), jax.tree.leaves(b.state["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


_SHARED_REWARDS = """
import sys
import numpy as np
from jaxrl_llm.parallel import distributed
distributed.initialize()
import jax
from jaxrl_llm.rewards.base import RewardError, RewardRunner, RewardSpec

seen = []
def length(prompts, completions, **_):
  seen.extend(completions)
  return [float(len(c)) if c != "boom" else float("nan") for c in completions]
def picky(prompts, completions, **_):
  if "boom" in completions:
    raise ValueError("boom")
  return [1.0] * len(completions)

comps = [f"c{'x' * i}" for i in range(7)]
runner = RewardRunner([RewardSpec("length", length, 1.0)], on_error="exclude")
res = runner(["p"] * 8, comps + ["boom"], {"answer": list(range(8))})
assert np.array_equal(res.total[:7], [1, 2, 3, 4, 5, 6, 7]) and np.isnan(res.total[7]), res.total
assert res.counts["length"]["nonfinite"] == 1, res.counts
assert len(seen) == 4, seen  # This process scored only its own half of the rows.
raising = RewardRunner([RewardSpec("picky", picky, 1.0)], on_error="raise", isolation="thread")
try:
  raising(["p"] * 8, comps + ["boom"])
except RewardError as e:
  print(f"process {jax.process_index()}: {e}", flush=True)
  sys.exit(0)
sys.exit(5)
"""


def test_rewards_are_scored_once_per_row_across_processes(tmp_path):
  """Each of 2 processes scores its own half of the rows and both get all the rewards; a reward
  that raises on one process's row stops both (one with the row, one pointing at the other)."""
  script = tmp_path / "rewards.py"
  script.write_text(_SHARED_REWARDS)
  from jaxrl_llm import cli

  assert cli.main(["launch", "--processes", "2", "--"]) == 2  # Nothing to launch.
  proc = subprocess.run(
      [sys.executable, "-c", "import sys; from jaxrl_llm.parallel.launch import launch; "
       f"sys.exit(launch([], processes=2, devices_per_process=1, program=[sys.executable, "
       f"{str(script)!r}]))"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "process 1: reward function 'picky' raised on row 7: ValueError('boom')" in proc.stdout
  assert "process 0: a reward function failed on another process" in proc.stdout
