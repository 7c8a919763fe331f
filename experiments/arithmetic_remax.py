"""ReMax on the arithmetic task: REINFORCE with the reward of a greedy rollout as baseline (Li et al., arXiv:2310.10505).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-remax``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("remax", rl_steps=300)
  return cfg
