"""Reward model (Bradley–Terry) on sorted-digits comparisons: held-out pairwise accuracy.

Starts from a short SFT warm start on the task's demonstrations (in ``RUN_DIR/sft``), then trains a
scalar head on the policy trunk from preference pairs. ``eval.json`` holds the held-out test
accuracy; ``reward_model.json`` the score statistics RL normalises with.
"""

from jaxrl_llm.config import AlgorithmConfig

from experiments import sorted_digits


def config():
  return sorted_digits.base(
      "reward-model-sorted-digits", data=sorted_digits.data("pairs"),
      init=sorted_digits.sft_init(),
      algorithm=AlgorithmConfig(name="reward_model", rm_objective="pairwise"))
