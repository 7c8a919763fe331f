"""``reasoning-prm``: a process reward model on Monte-Carlo step labels (Math-Shepherd).

See :mod:`experiments.reasoning` (``reward_model_config``).
"""

from experiments import reasoning


def config():
  return reasoning.reward_model_config("prm")
