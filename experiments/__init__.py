"""Runnable studies. Each module defines ``config() -> jaxrl_llm.config.Config``.

``EXPERIMENTS`` is the one place that turns an experiment name into its module: a plain dict, no
registry decorators.
"""

import importlib

EXPERIMENTS = {
    "sft-arithmetic": "experiments.sft_arithmetic",
    "arithmetic-grpo": "experiments.arithmetic_grpo",
}


def get_experiment(name: str):
  """Returns the complete :class:`~jaxrl_llm.config.Config` of experiment ``name``."""
  if name not in EXPERIMENTS:
    import difflib

    close = difflib.get_close_matches(name, list(EXPERIMENTS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown experiment {name!r}{hint} (known: {', '.join(sorted(EXPERIMENTS))})")
  return importlib.import_module(EXPERIMENTS[name]).config()
