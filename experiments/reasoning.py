"""The demonstrations study: learning from teacher traces where the policy's own samples fail.

Task (``data.task="chain"``, :mod:`jaxrl_llm.data.reasoning`): chains of ``+`` / ``-`` that need
written steps (``"7+15-9="`` → ``"7+15=22;22-9=13;Answer: 13"``). Every run starts the same way: a
short SFT warm start on the **easy** problems' traces (3 operands in 0..20), then trains on the
**hard** problems (5 operands in 0..50: longer, with numbers the warm start has not added) and is
scored by held-out greedy accuracy on the hard test split (``final_answer``: the integer after the
last ``Answer:``). The level sizes were fixed before any method ran, from the warm start alone: on
the easy test split it answers about a third greedily; on the hard one its pass@8 is 3%.

Methods (``config(method)``):

* ``grpo`` -- plain GRPO on the hard prompts (the policy's own samples only);
* ``luffy`` -- LUFFY (docs/algorithms.md §12): groups of 7 samples + 1 verified teacher trace,
  advantages over the union, policy shaping ``p/(p + 0.1)`` on teacher tokens;
* ``srft`` -- SRFT (§13): one stage, the same mixed groups; entropy-weighted SFT and clipped
  off-policy RL on the traces, likelihood / unlikelihood on the policy's correct / wrong samples;
* ``sft`` -- more SFT, on the hard problems' traces (the same traces LUFFY sees);
* ``rft`` -- RFT / ReST^EM (§15): 2 rounds of 8 samples for each of 512 hard prompts from the
  current policy, verified paths de-duplicated by their equations, SFT from the warm start on
  them ∪ the easy traces (75 steps a round);
* ``reft`` -- ReFT (§14): PPO with a value head on the policy's trunk, terminal reward 1 / 0.1 / 0,
  k1 KL in the reward (β = 0.05), GAE γ = 1, λ = 0.95, vf_coef 5, value clip 0.2.
* ``prime`` -- PRIME (§10): an implicit PRM (from the warm start, β = 0.05) trained every step on
  the verifier's labels (``before``), the paper's leave-one-out advantage on its per-token rewards
  plus the outcome, K = 4 samples for each of 16 prompts, PPO clip 0.2; prompts filtered to
  accuracy in [0.2, 0.8] from 2× oversampled rounds (the paper oversamples 4×; 2× bounds the CPU
  cost), training on what survives after 4 rounds. The PRM's learning rate is twice the policy's,
  the paper's ratio (1e-6 vs 5e-7).

Reward models (``reward_model_config(kind)``): ``orm`` / ``prm`` -- the warm start writes 4 solutions
for each of 512 **easy** training prompts (and every held-out one), cut into steps at ``;``; each
step is labelled Math-Shepherd style by 8 completions from its prefix (the soft label is the
fraction that reach the answer), each solution by the verifier; then an outcome reward model (BCE
on the solution's verdict at its last token) or a process reward model (BCE at each step's last
token on the soft labels) on the warm start's trunk. Easy problems, because best-of-N needs a
policy that is sometimes right (on the hard ones the warm start's pass@8 is 3%).
"""

from __future__ import annotations

import dataclasses

from jaxrl_llm.algorithms.policy_gradient import PRESETS
from jaxrl_llm.config import (AlgorithmConfig, Config, DataConfig, InitConfig, LoggingConfig,
                              MeshConfig, ModelConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)

METHODS = ("grpo", "luffy", "srft", "sft", "reft", "rft", "prime")
# Outcome / process reward models on the same warm start (``reward_model_config``).
REWARD_MODELS = ("orm", "prm")
RL_STEPS = 150
MAX_NEW_TOKENS = 56


def _data(level: str) -> DataConfig:
  return DataConfig(task="chain", chain_level=level, chain_easy_operands=3,
                    chain_hard_operands=5, chain_max_operand=20, chain_hard_max_operand=50,
                    operators="+-",
                    train_size=4000, validation_size=100, test_size=300,
                    length_buckets="auto", dataset_seed=0)


def reward_model_config(kind: str = "prm") -> Config:
  """The ``reasoning-orm`` / ``reasoning-prm`` experiment (one of :data:`REWARD_MODELS`)."""
  if kind not in REWARD_MODELS:
    raise ValueError(f"unknown reward model {kind!r}; known: {REWARD_MODELS}")
  base = config("grpo")
  data = dataclasses.replace(_data("easy"), preference_kind="steps", step_labels="mc",
                             step_delimiter=";", step_final_delimiter=False, step_samples=4,
                             step_rollouts=8, step_prompts=512)
  return dataclasses.replace(
      base, experiment=f"reasoning-{kind}", data=data,
      algorithm=AlgorithmConfig(name="reward_model", rm_objective=kind, rm_scoring="product"),
      optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=20, end_learning_rate_ratio=0.1,
                                weight_decay=0.0, max_grad_norm=1.0),
      train=TrainConfig(steps=300, batch_size=64, grad_accum_steps=1, checkpoint_every=100,
                        keep_checkpoints=2, eval_every=100, eval_examples=0,
                        eval_batch_size=64, test_examples=0))


def config(method: str = "luffy") -> Config:
  """The ``reasoning-<method>`` experiment (one of :data:`METHODS`)."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")
  warm = InitConfig(sft_steps=400, sft_learning_rate=1e-3, sft_warmup_steps=40,
                    sft_batch_size=64, sft_overrides=("data.chain_level=easy",))
  common = dict(
      experiment=f"reasoning-{method}",
      seed=0,
      model=ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512,
                        max_seq_len=16 + MAX_NEW_TOKENS, tie_embeddings=True),
      data=_data("hard"),
      mesh=MeshConfig(data=-1),
      logging=LoggingConfig(log_every=10),
  )
  reward = RewardConfig(functions=("final_answer",), weights=(1.0,), accuracy="final_answer")
  train = TrainConfig(steps=RL_STEPS, checkpoint_every=50, keep_checkpoints=2, eval_every=25,
                      eval_examples=100, eval_batch_size=128, test_examples=0,
                      max_new_tokens=MAX_NEW_TOKENS)
  optimizer = OptimizerConfig(learning_rate=2e-4, warmup_steps=10, end_learning_rate_ratio=1.0,
                              weight_decay=0.0, max_grad_norm=1.0)
  rollout = RolloutConfig(prompts_per_step=8, samples_per_prompt=8,
                          max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
  if method == "sft":
    # The warm start, then SFT on the hard traces for as many steps as the RL runs take.
    return Config(**common, init=warm,
                  algorithm=AlgorithmConfig(name="sft"),
                  optimizer=dataclasses.replace(optimizer, learning_rate=1e-3),
                  train=dataclasses.replace(train, batch_size=64), reward=reward)
  if method == "rft":
    return Config(**common, init=warm, rollout=rollout, reward=reward,
                  algorithm=AlgorithmConfig(name="rft", rft_rounds=2, rft_prompts=512,
                                            rft_dedup="steps", rft_restart=True),
                  optimizer=dataclasses.replace(optimizer, learning_rate=1e-3),
                  train=dataclasses.replace(train, steps=RL_STEPS // 2, batch_size=64))
  if method == "grpo":
    algorithm = AlgorithmConfig(**PRESETS["grpo"])
  elif method in ("luffy", "srft"):
    algorithm = AlgorithmConfig(**PRESETS[method])
    rollout = dataclasses.replace(rollout, samples_per_prompt=7, demonstrations_per_prompt=1,
                                  sources=("policy", "demonstrations"),
                                  filters=("verified_demonstrations",))
  elif method == "prime":
    algorithm = AlgorithmConfig(**dict(PRESETS["prime"],
                                       prime_learning_rate=2 * optimizer.learning_rate,
                                       max_gen_rounds=4, on_exhausted="train"))
    rollout = dataclasses.replace(rollout, prompts_per_step=16, samples_per_prompt=4,
                                  gen_prompts=32, filters=("accuracy_band",),
                                  accuracy_band_low=0.2, accuracy_band_high=0.8)
  else:  # reft
    algorithm = AlgorithmConfig(name="ppo", loss_aggregation="seq-mean-token-mean", clip_low=0.2,
                                clip_high=0.2, kl_coef=0.05, kl_placement="reward",
                                kl_estimator="k1", gae_lambda=0.95, gamma=1.0, value_clip=0.2,
                                vf_coef=5.0, critic="shared", epochs=2, minibatches=2)
    reward = RewardConfig(functions=("final_answer_partial", "final_answer"), weights=(1.0, 0.0),
                          accuracy="final_answer")
  return Config(**common, init=warm, algorithm=algorithm, optimizer=optimizer, rollout=rollout,
                reward=reward, train=train)
