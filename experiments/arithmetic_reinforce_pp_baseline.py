"""REINFORCE++-baseline on the arithmetic task: group-mean baseline then batch whitening, k2 KL in the loss (Hu, arXiv:2501.03262).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-reinforce-pp-baseline``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("reinforce_pp_baseline", rl_steps=300)
  return cfg
