"""``reasoning-prime``: PRIME with an online implicit PRM on the reasoning task.

See :mod:`experiments.reasoning`.
"""

from experiments import reasoning


def config():
  return reasoning.config("prime")
