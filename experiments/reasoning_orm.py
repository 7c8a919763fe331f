"""``reasoning-orm``: an outcome reward model on the warm start's verified solutions.

See :mod:`experiments.reasoning` (``reward_model_config``).
"""

from experiments import reasoning


def config():
  return reasoning.reward_model_config("orm")
