"""Dr. GRPO on the arithmetic task: mean-centred advantages (no std) and a constant normaliser C = the generation budget (Liu et al., arXiv:2503.20783).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs.
Run: ``jaxrl-llm run arithmetic-drgrpo``.
"""
from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("drgrpo")
  return cfg
