"""Clip-Cov on the arithmetic task: GRPO advantages with the gradient of a few high-covariance tokens removed (Cui et al., arXiv:2505.22617).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-clip-cov``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("clip_cov", rl_steps=300)
  return cfg
