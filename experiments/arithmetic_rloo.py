"""RLOO on the arithmetic task: the leave-one-out baseline with a sequence-level k1 penalty in the reward (Ahmadian et al., arXiv:2402.14740).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-rloo``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("rloo", rl_steps=300)
  return cfg
