"""DAPO on the arithmetic task: clip-higher (0.2/0.28), dynamic sampling of non-constant groups, token-level loss and soft overlong punishment (Yu et al., arXiv:2503.14476).

Same task, model and SFT warm start as ``arithmetic-grpo``; only the algorithm differs (and
300 RL steps instead of 700, so that it runs in a few minutes).
Run: ``jaxrl-llm run arithmetic-dapo``.
"""
import dataclasses

from experiments import arithmetic_grpo


def config():
  cfg = arithmetic_grpo.config("dapo", rl_steps=300, overlong_buffer=2)

  # Over-sample prompts so that dynamic sampling fills the batch in one or two rounds.
  return dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, gen_prompts=48))
