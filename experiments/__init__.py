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
    "reasoning-grpo": "experiments.reasoning_grpo",
    "reasoning-luffy": "experiments.reasoning_luffy",
    "reasoning-srft": "experiments.reasoning_srft",
    "reasoning-sft": "experiments.reasoning_sft",
    "reasoning-reft": "experiments.reasoning_reft",
    "reasoning-rft": "experiments.reasoning_rft",
    "reasoning-prime": "experiments.reasoning_prime",
    "reasoning-orm": "experiments.reasoning_orm",
    "reasoning-prm": "experiments.reasoning_prm",
}


def _load_path(name: str):
  """The ``config`` of a ``.py`` file, or the object at an import path ``module:attr``."""
  import importlib.util
  import os

  if name.endswith(".py"):
    if not os.path.isfile(name):
      raise KeyError(f"experiment file {name!r} does not exist")
    module_name = "_jaxrl_experiment_" + os.path.splitext(os.path.basename(name))[0]
    spec = importlib.util.spec_from_file_location(module_name, name)
    module = importlib.util.module_from_spec(spec)
    try:
      spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- user code.
      raise KeyError(f"experiment file {name!r} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "config"):
      raise KeyError(f"experiment file {name!r} defines no config() function")
    obj = module.config
  else:
    from jaxrl_llm.rewards import import_object

    try:
      obj = import_object(name)
    except ImportError as e:
      raise KeyError(str(e)) from None
  value = obj() if callable(obj) else obj
  from jaxrl_llm.config import Config

  if not isinstance(value, Config):
    raise KeyError(f"experiment {name!r} gave a {type(value).__name__}, not a "
                   "jaxrl_llm.config.Config")
  return value


def get_experiment(name: str):
  """Returns the complete :class:`~jaxrl_llm.config.Config` of experiment ``name``: a built-in
  name (``EXPERIMENTS``), a ``.py`` file defining ``config()``, or an import path
  ``package.module:attr`` naming such a function (or a Config)."""
  if name.endswith(".py") or ":" in name:
    return _load_path(name)
  if name not in EXPERIMENTS:
    import difflib

    close = difflib.get_close_matches(name, list(EXPERIMENTS), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown experiment {name!r}{hint} (known: {', '.join(sorted(EXPERIMENTS))})")
  return importlib.import_module(EXPERIMENTS[name]).config()
