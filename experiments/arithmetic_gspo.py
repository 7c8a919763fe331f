"""GSPO on the arithmetic task: a length-normalised sequence ratio with tiny clip ranges (Zheng et al., arXiv:2507.18071).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-gspo``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("gspo", rl_steps=300)
  return cfg
