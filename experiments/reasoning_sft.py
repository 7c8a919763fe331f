"""``reasoning-sft``: the demonstrations study's sft run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("sft")
