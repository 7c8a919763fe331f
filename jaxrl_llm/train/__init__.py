"""Host loops (layer 5): SFT training, checkpoints, metrics, evaluation and plots."""

from jaxrl_llm.algorithms.common import TrainState
from jaxrl_llm.train.checkpoint import Checkpointer, abstract_with_shardings
from jaxrl_llm.train.plotting import plot_run
from jaxrl_llm.train.sft_loop import SFTSetup, build, evaluate, new_run_dir, resume, train
from jaxrl_llm.train.tracking import MetricsWriter, Progress, read_metrics

__all__ = ["Checkpointer", "MetricsWriter", "Progress", "SFTSetup", "TrainState",
           "abstract_with_shardings", "build", "evaluate", "new_run_dir", "plot_run",
           "read_metrics", "resume", "train"]
