"""``reasoning-reft``: the demonstrations study's reft run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("reft")
