"""Runnable studies. Each module defines ``config() -> jaxrl_llm.config.Config``.

``EXPERIMENTS`` is the one place that turns an experiment name into its module: a plain dict, no
registry decorators.
"""

import importlib

EXPERIMENTS = {
    "sft-arithmetic": "experiments.sft_arithmetic",
    "gsm8k-hf": "experiments.gsm8k_hf",
    "arithmetic-grpo": "experiments.arithmetic_grpo",
    "arithmetic-drgrpo": "experiments.arithmetic_drgrpo",
    "arithmetic-dapo": "experiments.arithmetic_dapo",
    "arithmetic-gspo": "experiments.arithmetic_gspo",
    "arithmetic-rloo": "experiments.arithmetic_rloo",
    "arithmetic-reinforce-pp": "experiments.arithmetic_reinforce_pp",
    "arithmetic-reinforce-pp-baseline": "experiments.arithmetic_reinforce_pp_baseline",
    "arithmetic-remax": "experiments.arithmetic_remax",
    "arithmetic-clip-cov": "experiments.arithmetic_clip_cov",
    "arithmetic-kl-cov": "experiments.arithmetic_kl_cov",
    "text2sql-grpo": "experiments.text2sql_grpo",
    "text2sql-hf": "experiments.text2sql_hf",
    "rlhf-pipeline": "experiments.rlhf_pipeline",
    "reward-model-sorted-digits": "experiments.reward_model_sorted_digits",
    "dpo-sorted-digits": "experiments.dpo_sorted_digits",
}


def get_experiment(name: str):
  """Returns the complete :class:`~jaxrl_llm.config.Config` of experiment ``name``."""
  if name not in EXPERIMENTS:
    import difflib

    close = difflib.get_close_matches(name, list(EXPERIMENTS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown experiment {name!r}{hint} (known: {', '.join(sorted(EXPERIMENTS))})")
  return importlib.import_module(EXPERIMENTS[name]).config()
