"""KL-Cov on the arithmetic task: GRPO advantages with a KL penalty on the highest-covariance tokens (Cui et al., arXiv:2505.22617).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-kl-cov``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("kl_cov", rl_steps=300)
  return cfg
