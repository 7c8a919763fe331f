"""``reasoning-grpo``: the demonstrations study's grpo run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("grpo")
