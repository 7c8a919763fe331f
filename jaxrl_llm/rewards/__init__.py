"""Reward functions (layer 3, host side): ``(prompts, completions, **columns) -> float32[B]``.

``REWARD_FUNCTIONS`` maps the built-in names used in ``reward.functions`` to callables; a function
of your own is named by its import path (``"mypkg.rewards:score"``), which the run's config.json
records, so ``resume``, ``eval`` and ``run --config`` find it again in a new process. A research
script can also pass its own :class:`RewardSpec` list to the RL loop (such a run cannot be
resumed or evaluated from its config alone). Rewards that need run-time resources are
built from the config instead of looked up: ``reward_model`` (a trained reward-model run,
:mod:`jaxrl_llm.rewards.learned`). See :mod:`jaxrl_llm.rewards.base` for the
failure policy (time-outs, exceptions, NaN).
"""


from jaxrl_llm.imports import import_callable, import_object
from jaxrl_llm.rewards import (arithmetic, code, countdown, math, preference_task, reasoning,
                               text2sql)
from jaxrl_llm.rewards.base import (RewardError, RewardFn, RewardResult, RewardRunner, RewardSpec,
                                    call_with_timeout, overlong_penalty)

REWARD_FUNCTIONS = {
    "exact_match": arithmetic.exact_match,
    "integer_format": arithmetic.integer_format,
    "digit_match": arithmetic.digit_match,
    "last_number": arithmetic.last_number_match,
    "math_answer": math.math_answer,
    "gsm8k_answer": math.gsm8k_answer,
    "think_answer_format": math.think_answer_format,
    "boxed_format": math.boxed_format,
    "countdown": countdown.countdown,
    "sorted_digits_property": preference_task.sorted_digits_property,
    "sorted_digits_score": preference_task.sorted_digits_score,
    "code_unit_tests": code.code_unit_tests,
    "text2sql_execution": text2sql.text2sql_execution,
    "sql_format": text2sql.sql_format,
    "final_answer": reasoning.final_answer_match,
    "final_answer_partial": reasoning.final_answer_partial,
}


def get_reward_function(name: str) -> RewardFn:
  """The reward function ``name``: a built-in name (``REWARD_FUNCTIONS``) or an import path
  ``"package.module:function"`` of your own (it must be importable in every process that scores
  the run -- ``run``, ``resume``, ``eval`` -- e.g. from ``PYTHONPATH``).

  Raises:
    KeyError: an unknown built-in name (the message lists the known ones), or an import path
      that cannot be imported or does not name a callable (the message says why).
  """
  if ":" in name:
    try:
      return import_callable(name, "a reward function")
    except ImportError as e:
      raise KeyError(str(e)) from None
  if name not in REWARD_FUNCTIONS:
    raise KeyError(f"unknown reward function {name!r}; known: {sorted(REWARD_FUNCTIONS)}, or an "
                   "import path 'package.module:function' of your own")
  return REWARD_FUNCTIONS[name]


__all__ = ["import_object", "REWARD_FUNCTIONS", "RewardError", "RewardFn", "RewardResult", "RewardRunner",
           "RewardSpec", "call_with_timeout", "get_reward_function", "overlong_penalty"]
