"""``reasoning-luffy``: the demonstrations study's luffy run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("luffy")
