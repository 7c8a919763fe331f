"""Host loops (layer 5): SFT and online RL training, checkpoints, metrics, evaluation, plots."""

from jaxrl_llm.algorithms.common import TrainState
from jaxrl_llm.rundir.checkpoint import Checkpointer, abstract_with_shardings
from jaxrl_llm.train.plotting import plot_run
from jaxrl_llm.train.sft_loop import SFTSetup, build, evaluate, new_run_dir, resume, train
from jaxrl_llm.train.tracking import MetricsWriter, Progress, read_metrics


def run(config, run_dir: str, *, resume: bool = False, **kwargs):
  """Trains ``config`` in ``run_dir`` with the loop its algorithm needs: SFT, online RL (the
  policy-gradient family and PPO), rejection-sampling fine-tuning (RFT), preference learning
  (DPO, reward models), or outcome / process reward models on step-labelled solutions."""
  if config.algorithm.name == "rft":
    from jaxrl_llm.train import rft_loop

    return rft_loop.train(config, run_dir, resume=resume, **kwargs)
  if config.algorithm.is_rl:
    from jaxrl_llm.train import rl_loop

    return rl_loop.train(config, run_dir, resume=resume, **kwargs)
  if config.algorithm.name == "reward_model" and config.algorithm.rm_objective in ("orm", "prm"):
    from jaxrl_llm.train import process_rm_loop

    return process_rm_loop.train(config, run_dir, resume=resume, **kwargs)
  if config.algorithm.is_preference:
    from jaxrl_llm.train import preference_loop

    return preference_loop.train(config, run_dir, resume=resume, **kwargs)
  return train(config, run_dir, resume=resume, **kwargs)


def resume_run(run_dir: str, **kwargs):
  """Continues the run in ``run_dir`` (any algorithm) from its newest complete checkpoint."""
  import os

  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory?")
  return run(load_json(path), run_dir, resume=True, **kwargs)

__all__ = ["Checkpointer", "MetricsWriter", "Progress", "SFTSetup", "TrainState",
           "abstract_with_shardings", "build", "evaluate", "new_run_dir", "plot_run",
           "read_metrics", "resume", "resume_run", "run", "train"]
