"""REINFORCE++ on the arithmetic task: token rewards with k1 in the reward, return-to-go, batch whitening (Hu, arXiv:2501.03262).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-reinforce-pp``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("reinforce_pp", rl_steps=300)
  return cfg
