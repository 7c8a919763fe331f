"""The three-stage RLHF pipeline on CPU: SFT → reward model → PPO with a critic and a KL leash.

One run, three resumable stages (``RUN_DIR/sft``, ``RUN_DIR/reward_model``, then PPO in ``RUN_DIR``):

1. **SFT** on demonstrations of the sorted-digits task, only 20% of which have the hidden property
   (digits sorted ascending), so the SFT policy rarely has it.
2. **Reward model** (Bradley–Terry, head on the SFT trunk) from preference pairs alone; its
   held-out pairwise accuracy is in ``RUN_DIR/reward_model/eval.json``.
3. **PPO** against the reward model (scores normalised by its training statistics), separate
   critic initialised from the SFT trunk, GAE (γ = 1, λ = 0.95), whitened advantages, clipped value
   loss, per-token k1 KL to the SFT policy in the reward (β = 0.05), a few critic warm-up steps.

The hidden property is never a training signal: ``sorted_digits_property`` has weight 0 and is the
``reward.accuracy`` metric, so ``reward/accuracy`` in ``metrics.jsonl`` is the property rate of the
sampled answers at every step and ``kl/ref`` their KL to the SFT policy. ``eval.json`` holds the
held-out property rate before and after PPO of one answer per test prompt sampled at temperature
1 with a fixed key (``train.eval_temperature``: greedy answers are degenerate here -- the argmax
repeats one digit, which is trivially sorted).
"""

from jaxrl_llm.config import (AlgorithmConfig, InitConfig, OptimizerConfig, RewardConfig,
                              RolloutConfig, TrainConfig)

from experiments import sorted_digits


def config():
  return sorted_digits.base(
      "rlhf-pipeline",
      init=InitConfig(sft_steps=300, sft_learning_rate=2e-3, sft_warmup_steps=30,
                      sft_batch_size=64, reward_model_steps=200,
                      reward_model_learning_rate=1e-3, reward_model_batch_size=64),
      optimizer=OptimizerConfig(learning_rate=3e-4, warmup_steps=5, end_learning_rate_ratio=1.0,
                                weight_decay=0.0, max_grad_norm=1.0),
      algorithm=AlgorithmConfig(name="ppo", loss_aggregation="token-mean", clip_low=0.2,
                                clip_high=0.2, dual_clip=3.0, kl_coef=0.05,
                                kl_placement="reward", kl_estimator="k1", gae_lambda=0.95,
                                value_clip=0.2, critic="separate", critic_learning_rate=1e-3,
                                critic_warmup_steps=5, epochs=2, minibatches=2),
      rollout=RolloutConfig(prompts_per_step=64, samples_per_prompt=2, max_new_tokens=8,
                            temperature=1.0),
      reward=RewardConfig(functions=("reward_model", "sorted_digits_property"),
                          weights=(1.0, 0.0), accuracy="sorted_digits_property"),
      train=TrainConfig(steps=150, checkpoint_every=50, keep_checkpoints=2, eval_every=50,
                        eval_examples=256, eval_batch_size=64, test_examples=0,
                        eval_temperature=1.0),
  )
