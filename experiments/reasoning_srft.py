"""``reasoning-srft``: the demonstrations study's SRFT run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("srft")
