"""``reasoning-rft``: the demonstrations study's RFT run (see :mod:`experiments.reasoning`)."""

from experiments import reasoning


def config():
  return reasoning.config("rft")
