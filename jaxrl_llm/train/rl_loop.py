"""The online RL host loop (layer 5): prompts -> rollout -> rewards -> log-probs -> prepare -> update.

One step::

  prompts (deterministic iterator)  --Sampler.generate (G samples each)-->  Rollout
  decode on host  --RewardRunner (time-outs, NaN, exceptions)-->  scores [N]
  [DAPO] drop groups whose accuracy is constant, generate more until B groups survive
  [ReMax] greedy rollout of the same prompts -> baseline scores
  old_logp = logprobs(policy), ref_logp = logprobs(reference)   (fused kernel, jitted)
  advantages = prepare(...)                                       (jitted, pure)
  state, metrics = update(state, batch)    (K epochs x minibatches inside one jitted call)

Everything random is a pure function of the seed and the step: the sampler's key is
``fold_in(fold_in(purpose_key(seed, "sampling"), step), round)`` and the prompt iterator's state is
one integer (prompts consumed). Both go into every checkpoint with the ``TrainState`` (and the
adaptive KL coefficient and cumulative reward-failure counters), so a killed run resumes to exactly
the metrics and parameters of an uninterrupted one.

Run directory::

  RUN_DIR/config.json, tokenizer/, metrics.jsonl (deterministic), perf.jsonl (timings, tokens/s),
  tensorboard/, checkpoints/N/, sft/ (the warm-start SFT run, when init.sft_steps > 0),
  eval_before.json (held-out exact match at RL step 0), eval.json, plots/curves.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms import policy_gradient as pg
from jaxrl_llm.algorithms import ppo
from jaxrl_llm.algorithms import prime as prime_lib
from jaxrl_llm.algorithms.common import (TrainState, make_optimizer, train_state_shardings,
                                         with_master_weights)
from jaxrl_llm.config.io import shrink_for_tests
from jaxrl_llm.config import AlgorithmConfig, Config, ConfigError, InitConfig, save_json
from jaxrl_llm.config.schema import OFF_POLICY_LOSSES
from jaxrl_llm.data.pipeline import bucket_cap, has_split, resolve_buckets, write_data_report
from jaxrl_llm.data import (build_char_tokenizer, encode_split, load_rows, load_tokenizer,
                            save_tokenizer)
from jaxrl_llm.models import Decoder, init_params, lora
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.ops import AdaptiveKLController, FixedKLController
from jaxrl_llm.parallel import batch_size_multiple, make_mesh, replicated, tree_shardings
from jaxrl_llm.rewards import RewardError, RewardRunner, RewardSpec, get_reward_function
from jaxrl_llm.rollout import Sampler, SamplingConfig
from jaxrl_llm.train import experience, sft_loop
from jaxrl_llm.train.experience.core import add_counts
from jaxrl_llm.train.experience.filters import FILTERS, group_std
from jaxrl_llm.train.experience.sources import SOURCES
from jaxrl_llm.rundir.artifacts import policy_source
from jaxrl_llm.rundir.checkpoint import CheckpointCadence, Checkpointer, abstract_with_shardings
from jaxrl_llm.train.evaluate import decode_texts, make_greedy_decode
from jaxrl_llm.train.tracking import MetricsWriter, Progress
from jaxrl_llm.parallel.distributed import device_get, is_primary, primary_first


class PromptIterator:
  """Deterministic, resumable prompt order: ``indices(position, n) -> (rows, next_position)``.

  Epoch ``e`` visits the split in the permutation drawn from ``fold_in(data_key, e)``; the state is
  the number of prompts consumed.
  """

  def __init__(self, size: int, data_key: jax.Array, shuffle: bool = True):
    self.size, self.shuffle = size, shuffle
    self._key = data_key
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if self.shuffle:
        seed = rng_lib.numpy_seed(rng_lib.step_key(self._key, epoch))
        self._perms[epoch] = np.random.default_rng(seed).permutation(self.size)
      else:
        self._perms[epoch] = np.arange(self.size)
      while len(self._perms) > 2:
        self._perms.pop(min(self._perms))
    return self._perms[epoch]

  def indices(self, position: int, n: int) -> tuple[np.ndarray, int]:
    out = np.empty(n, np.int64)
    for j in range(n):
      epoch, offset = divmod(position + j, self.size)
      out[j] = self._perm(epoch)[offset]
    return out, position + n


@dataclasses.dataclass
class RLSetup:
  """Everything an RL run needs, built once from the config."""

  config: Config
  model_config: Any
  mesh: Any
  tokenizer: Any
  splits: dict
  prompt_texts: list
  model: Decoder
  tx: Any
  schedule: Any
  pg_config: pg.Config
  state_shardings: Any
  sampler: Sampler
  sampling: SamplingConfig
  rewards: RewardRunner
  prompts: PromptIterator
  update: Any  # jitted (state, batch) -> (state, metrics); state donated
  prepare: Any  # jitted (inputs) -> (advantages, diag)
  logprobs: Any  # jitted (params, tokens, attention_mask, mask) -> LogProbs
  decode: Any  # greedy decode for evaluation
  kl_controller: Any
  make_state: Any  # jitted params -> TrainState (in its shardings)
  init_state: Any  # () -> TrainState from a fresh seeded init
  reference: Any = None  # frozen reference params (None when algorithm.kl_coef == 0)
  # LoRA with a reference: jitted (base params, tokens, attention, mask) -> LogProbs of the base
  # model (adapters off); the reference is the policy's own frozen base.
  base_logprobs: Any = None
  ppo_config: Any = None  # ppo.Config when algorithm.name == "ppo"
  rollout_values: Any = None  # PPO: jitted (state, tokens, attention, mask) -> (old_logp, V_old)
  # The rollout stage: ([(name, source)], [(name, filter)]) (jaxrl_llm.train.experience).
  experience: Any = None
  demo_token_cache: dict = dataclasses.field(default_factory=dict)
  prime: Any = None  # PRIME's implicit PRM (PrimeModel) when algorithm.name == "prime"
  # reward.process_model_run: an ORM / PRM's StepRewardModelFunction (step rewards).
  process_scorer: Any = None

  def policy_params(self, state):
    """The decoder params that sample and are evaluated (PPO: the actor's policy part)."""
    if self.ppo_config is not None:
      return ppo.policy_params(state, self.ppo_config)
    return state.params

  def put_rows(self, array) -> jax.Array:
    """Places a host array on the mesh with its first (row) axis over data x fsdp."""
    spec = P(("data", "fsdp"), *([None] * (np.ndim(array) - 1)))
    return jax.device_put(np.asarray(array), NamedSharding(self.mesh, spec))


@dataclasses.dataclass
class PrimeModel:
  """PRIME's implicit PRM in a run: its jitted functions and frozen reference (docs §10).

  The PRM's ``TrainState`` is not kept here: the loop owns it (next to the policy's, in one
  checkpoint tree ``{"actor", "implicit_prm"}``) and passes it through :func:`prime_step`.
  """

  config: prime_lib.Config
  state_shardings: Any
  make_state: Any  # jitted params -> TrainState (its own optimizer)
  update: Any  # jitted (state, batch) -> (state, metrics, logp); state donated
  logprobs: Any  # jitted (params, tokens, attention, mask) -> float32 [N, T]
  token_rewards: Any  # jitted (prm_logp, ref_logp, mask) -> process rewards [N, T]
  reference: Any = None  # frozen reference params (the starting policy)


def reward_specs(config: Config) -> list[RewardSpec]:
  """The configured reward functions as :class:`RewardSpec` s (errors name ``reward.functions``)."""
  specs = []
  rc = config.reward
  for name, weight in zip(rc.functions, rc.weights):
    if name == "reward_model":  # A learned reward: built from its run directory.
      from jaxrl_llm.rewards.learned import reward_function

      # Bradley–Terry runs are normalised by their score statistics; an ORM / PRM gives a
      # probability that the solution is right.
      specs.append(RewardSpec(name, reward_function(rc.model_run, normalize=rc.model_normalize),
                              weight))
      continue
    try:
      fn = get_reward_function(name)
    except KeyError as e:
      raise ConfigError(f"config field 'reward.functions': {e.args[0]}") from None
    specs.append(RewardSpec(name, fn, weight))
  return specs


def _validate(config: Config, mesh) -> None:
  a, r = config.algorithm, config.rollout
  if not a.is_rl:
    raise ConfigError(f"config field 'algorithm.name': the RL loop needs an RL algorithm, got "
                      f"{a.name!r} (use the SFT loop)")
  shards = batch_size_multiple(mesh)
  per_group = r.samples_per_prompt * ("policy" in r.sources) + (
      r.demonstrations_per_prompt * ("demonstrations" in r.sources))
  rows = r.prompts_per_step * per_group
  if rows % shards:
    raise ConfigError(f"config field 'rollout.prompts_per_step': {r.prompts_per_step} prompts x "
                      f"{per_group} rows per prompt = {rows} rows must be a multiple of the "
                      f"{shards} batch shards (mesh data x fsdp)")
  parts = a.minibatches * a.micro_batches
  if rows % parts:
    raise ConfigError(f"config field 'algorithm.minibatches': {rows} rollout rows do not split "
                      f"into {a.minibatches} minibatches x {a.micro_batches} micro-batches")
  if a.name == "prime":
    if not config.reward.accuracy:
      raise ConfigError("config field 'reward.accuracy': PRIME trains its implicit PRM on outcome "
                        "labels; name the verifier (e.g. reward.accuracy=final_answer)")
    if "demonstrations" in r.sources:
      raise ConfigError("config field 'rollout.sources': PRIME trains on its own samples only")
  if a.resolved_advantage == "grpo_process" and not config.reward.process_model_run:
    raise ConfigError("config field 'reward.process_model_run': GRPO process supervision "
                      "(algorithm.advantage='grpo_process') needs a process reward model run")
  if config.reward.process_model_run and not (a.resolved_advantage == "grpo_process" or
                                              a.name == "ppo"):
    raise ConfigError("config field 'reward.process_model_run': step rewards are used by "
                      "algorithm.advantage='grpo_process' and by PPO only; leave it '' or pick "
                      "one of those")
  if a.resolved_advantage in ("grpo", "drgrpo", "rloo", "reinforce_pp_baseline", "prime",
                              "grpo_process") and \
      r.samples_per_prompt < 2:
    raise ConfigError(f"config field 'rollout.samples_per_prompt': the {a.resolved_advantage} "
                      "baseline needs at least 2 samples per prompt")
  if a.overlong_buffer > r.max_new_tokens:
    raise ConfigError(f"config field 'algorithm.overlong_buffer': {a.overlong_buffer} exceeds "
                      f"rollout.max_new_tokens={r.max_new_tokens}")
  if a.dynamic_sampling and not config.reward.accuracy:
    raise ConfigError("config field 'reward.accuracy': dynamic sampling filters groups on the "
                      "accuracy function; name one")
  if r.gen_prompts and r.gen_prompts * r.samples_per_prompt % shards:
    raise ConfigError(f"config field 'rollout.gen_prompts': {r.gen_prompts} x "
                      f"{r.samples_per_prompt} rows must be a multiple of {shards}")
  if config.train.eval_batch_size % shards:
    raise ConfigError(f"config field 'train.eval_batch_size': must be a multiple of the {shards} "
                      "batch shards")


def experience_stage(config: Config, train_split) -> tuple[list, list]:
  """The configured sources and filters (``rollout.sources`` / ``rollout.filters``, plus DAPO's
  ``"nonconstant_groups"`` when ``algorithm.dynamic_sampling``), checked before compiling."""
  rc, ac = config.rollout, config.algorithm
  names = list(rc.filters)
  if ac.dynamic_sampling and "nonconstant_groups" not in names:
    names.insert(0, "nonconstant_groups")
  sources = experience.resolve("sources", rc.sources, SOURCES)
  filters = experience.resolve("filters", names, FILTERS)
  if "demonstrations" in rc.sources:
    if train_split.demonstrations is None:
      raise ConfigError("config field 'rollout.sources': 'demonstrations' needs training rows with "
                        "a 'demonstration' field (data.task='chain', or your JSONL's "
                        "'demonstration')")
    if ac.resolved_policy_loss not in OFF_POLICY_LOSSES:
      raise ConfigError(f"config field 'algorithm.policy_loss': teacher tokens have no behaviour "
                        f"probability, so they need a ratio-free loss ({OFF_POLICY_LOSSES}), got "
                        f"{ac.resolved_policy_loss!r}")
    if config.algorithm.name == "ppo":
      raise ConfigError("config field 'rollout.sources': PPO trains on its own samples only")
  return sources, filters


def reward_model_stage_config(config: Config, run_dir: str) -> Config:
  """The reward-model run of an RLHF pipeline (``init.reward_model_steps``): trained in
  ``RUN_DIR/reward_model`` on the task's preference pairs, from the warm-started policy."""
  ic = config.init
  steps = ic.reward_model_steps
  return dataclasses.replace(
      config, experiment=f"{config.experiment}-reward-model",
      algorithm=AlgorithmConfig(name="reward_model", rm_objective="pairwise"),
      data=dataclasses.replace(config.data, preference_kind="pairs"),
      init=InitConfig(policy_run=os.path.join(run_dir, "sft") if ic.sft_steps else ic.policy_run),
      optimizer=dataclasses.replace(config.optimizer, learning_rate=ic.reward_model_learning_rate,
                                    warmup_steps=min(config.optimizer.warmup_steps, steps // 10),
                                    end_learning_rate_ratio=0.1, weight_decay=0.0),
      reward=dataclasses.replace(config.reward, functions=("exact_match",), weights=(1.0,),
                                 accuracy="", model_run=""),
      train=dataclasses.replace(config.train, steps=steps, batch_size=ic.reward_model_batch_size,
                                grad_accum_steps=1, eval_every=max(steps // 4, 1),
                                checkpoint_every=max(steps // 2, 1), keep_checkpoints=1,
                                test_examples=0))


def run_stages(config: Config, run_dir: str, *, devices=None) -> Config:
  """Runs the stages that precede RL and must exist before its reward functions are built:
  the SFT warm start (``init.sft_steps``) and the reward model (``init.reward_model_steps``).

  Each stage is its own resumable run in a subdirectory; a finished stage is only restored.
  Returns ``config`` with ``reward.model_run`` pointing at the trained reward model.
  """
  ic = config.init
  if ic.sft_steps:
    sft_loop.warm_start(config, run_dir, devices=devices)
  if not ic.reward_model_steps:
    return config
  from jaxrl_llm.train import preference_loop

  rm_dir = os.path.join(run_dir, "reward_model")
  os.makedirs(rm_dir, exist_ok=True)
  rm_config = reward_model_stage_config(config, run_dir)
  if not os.path.exists(os.path.join(rm_dir, "config.json")):
    save_json(rm_config, os.path.join(rm_dir, "config.json"))
  if not os.path.exists(os.path.join(rm_dir, preference_loop.STATS_FILE)):
    preference_loop.train(rm_config, rm_dir, resume=True, devices=devices)
  return staged_config(config, run_dir)


def staged_config(config: Config, run_dir: str) -> Config:
  """``config`` as RL sees it once :func:`run_stages` has run: the reward-model stage replaced by
  ``reward.model_run = RUN_DIR/reward_model``."""
  if not config.init.reward_model_steps:
    return config
  return dataclasses.replace(
      config, init=dataclasses.replace(config.init, reward_model_steps=0),
      reward=dataclasses.replace(config.reward,
                                 model_run=os.path.join(run_dir, "reward_model")))


def build(config: Config, run_dir: str, *, devices=None, reward_fns: Sequence[RewardSpec] | None
          = None, model_config=None, tokenizer=None) -> RLSetup:
  """Builds data, mesh, model, optimizer, sampler, rewards and the jitted functions.

  Every config error surfaces here, before anything is compiled. ``reward_fns`` replaces the
  configured reward functions (research scripts pass their own callables).
  """
  mesh = make_mesh(config.mesh, devices)
  _validate(config, mesh)
  tok_dir = os.path.join(run_dir, "tokenizer")
  with primary_first("tokenizer"):
    if tokenizer is None:
      if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        tokenizer = load_tokenizer(tok_dir)
      else:
        tokenizer = build_char_tokenizer()
        save_tokenizer(tokenizer, tok_dir)
    elif not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      save_tokenizer(tokenizer, tok_dir)  # The run directory stays self-contained.
  if model_config is None:
    model_config = config.model.with_vocab(len(tokenizer))
  else:  # A Hugging Face policy's shapes, with this run's adapters.
    model_config = dataclasses.replace(model_config, lora=config.model.lora)
  dc, tc, rc, ac = config.data, config.train, config.rollout, config.algorithm
  if ac.name == "ppo":
    sft_loop.lora_not_supported(model_config, "PPO's actor-critic state")
  if ac.name == "prime":
    sft_loop.lora_not_supported(model_config, "PRIME's implicit PRM")
  max_len = bucket_cap(config, model_config.max_seq_len - rc.max_new_tokens)
  if model_config.positions == "learned" and max_len + rc.max_new_tokens > model_config.max_seq_len:
    raise ConfigError(f"config field 'rollout.max_new_tokens': largest prompt bucket {max_len} + "
                      f"{rc.max_new_tokens} exceeds model.max_seq_len={model_config.max_seq_len}")
  splits = {"train": encode_split(load_rows(dc, "train"), tokenizer, split="train",
                                  max_len=max_len, on_bad_row=dc.on_bad_row,
                                  on_overlong=dc.on_overlong, answer_budget=0,
                                  chat_template=dc.chat_template)}
  for name in ("validation", "test"):
    if has_split(dc, name):
      splits[name] = encode_split(load_rows(dc, name), tokenizer, split=name, max_len=max_len,
                                  on_bad_row=dc.on_bad_row, on_overlong=dc.on_overlong,
                                  answer_budget=0, chat_template=dc.chat_template)
  config = resolve_buckets(config, splits, max_len)
  dc = config.data
  prompt_texts = tokenizer.batch_decode([p.tolist() for p in splits["train"].prompts],
                                        skip_special_tokens=True)
  specs = list(reward_fns) if reward_fns is not None else reward_specs(config)
  runner = RewardRunner(specs, timeout_s=config.reward.timeout_s,
                        row_timeout_s=min(config.reward.row_timeout_s, config.reward.timeout_s),
                        isolation=config.reward.isolation, memory_mb=config.reward.memory_mb,
                        on_error=config.reward.on_error,
                        fallback_reward=config.reward.fallback_reward)
  names = [s.name for s in specs]
  if config.reward.accuracy and config.reward.accuracy not in names:
    raise ConfigError(f"config field 'reward.accuracy': {config.reward.accuracy!r} is not one of "
                      f"the reward functions {names}")
  stage = experience_stage(config, splits["train"])

  model = Decoder(model_config)
  tx, schedule = make_optimizer(config.optimizer, tc.steps * ac.epochs * ac.minibatches)
  if tc.update_mask and ac.name == "ppo":
    raise ConfigError("config field 'train.update_mask': subnetwork-only training covers SFT and "
                      "the policy-gradient family, not PPO's actor-critic state")
  tx = sft_loop.param_optimizer(tx, config, model_config)
  pg_config = pg.config_from(ac, temperature=rc.temperature, max_new_tokens=rc.max_new_tokens)
  abstract = abstract_params(model_config)
  param_shardings = tree_shardings(abstract, param_logical_axes(model_config), mesh)
  dropout_key = rng_lib.purpose_key(config.seed, "dropout")
  rows = NamedSharding(mesh, P(("data", "fsdp"), None))
  ppo_config = rollout_values = None
  if ac.name == "ppo":
    ppo_config = ppo.config_from(ac, temperature=rc.temperature, max_new_tokens=rc.max_new_tokens)
    critic_tx = critic_schedule = None
    if not ppo_config.shared:
      critic_opt = dataclasses.replace(
          config.optimizer, learning_rate=ac.critic_learning_rate or config.optimizer.learning_rate)
      critic_tx, critic_schedule = make_optimizer(critic_opt,
                                                  tc.steps * ac.epochs * ac.minibatches)
      critic_tx = with_master_weights(critic_tx, model_config.param_dtype)
    state_shardings = ppo.state_shardings(ppo_config, model_config, tx, critic_tx, abstract,
                                          param_shardings, mesh)
    make_state = jax.jit(lambda p: ppo.init_state(p, model_config, ppo_config, tx, critic_tx,
                                                  dropout_key), out_shardings=state_shardings)
    update_fn = ppo.make_update(model.apply, model_config, tx, schedule, critic_tx,
                                critic_schedule, ppo_config)
    prepare = jax.jit(lambda inputs: ppo.prepare(inputs, ppo_config))
    rollout_values = jax.jit(
        lambda state, t, a, m: ppo.rollout_logprobs_and_values(model.apply, model_config, state,
                                                               t, a, m, ppo_config),
        out_shardings=(rows, rows))
  else:
    state_shardings = train_state_shardings(tx, abstract, param_shardings, mesh)
    make_state = jax.jit(lambda p: TrainState.create(p, tx, dropout_key),
                         out_shardings=state_shardings)
    update_fn = pg.make_update(model.apply, model_config, tx, schedule, pg_config)
    num_groups = rc.prompts_per_step
    prepare = jax.jit(lambda inputs: pg.prepare(inputs, pg_config, num_groups=num_groups))
  process_scorer = None
  if config.reward.process_model_run:
    from jaxrl_llm.rewards.learned import StepRewardModelFunction

    process_scorer = StepRewardModelFunction(config.reward.process_model_run)
  prime_model = None
  if ac.name == "prime":
    prime_model = _build_prime(ac, model, model_config, abstract, param_shardings, mesh, rows,
                               dropout_key)

  def init_state():  # A fresh policy (also the abstract-shape source for restores).
    return make_state(init_params(model_config, rng_lib.purpose_key(config.seed, "init"),
                                  mesh)[0])

  update = jax.jit(update_fn, out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,))

  def logprobs(params, tokens, attention_mask, mask):
    return pg.response_logprobs(model.apply, params, model_config, tokens, attention_mask, mask,
                                temperature=rc.temperature)

  logprobs = jax.jit(logprobs, out_shardings=rows)
  base_logprobs = None
  if ac.uses_reference and model_config.lora.rank:
    # LoRA: the KL reference is the policy's own frozen base with the adapters off (no copy).
    base_cfg = lora.base_config(model_config)
    base_model = Decoder(base_cfg)
    base_logprobs = jax.jit(
        lambda params, tokens, attention, mask: pg.response_logprobs(
            base_model.apply, params, base_cfg, tokens, attention, mask,
            temperature=rc.temperature),
        out_shardings=rows)
  sampler = Sampler(model_config, pad_id=tokenizer.pad_token_id, mesh=mesh,
                    refill=rc.sampler == "refill", slots=rc.slots)
  sampling = SamplingConfig(temperature=rc.temperature, top_k=rc.top_k, top_p=rc.top_p,
                            min_p=rc.min_p)
  decode = make_greedy_decode(model_config, max_new_tokens=rc.max_new_tokens,
                              eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                              mesh=mesh, temperature=tc.eval_temperature,
                              key=rng_lib.purpose_key(config.seed, "eval"))
  if ac.kl_controller == "adaptive":
    kl_controller = AdaptiveKLController(ac.kl_coef, target_kl=ac.kl_target,
                                         horizon=ac.kl_horizon)
  else:
    kl_controller = FixedKLController(ac.kl_coef)
  prompts = PromptIterator(len(splits["train"]), rng_lib.purpose_key(config.seed, "data"),
                           shuffle=dc.shuffle)
  return RLSetup(config=config, model_config=model_config, mesh=mesh, tokenizer=tokenizer,
                 splits=splits, prompt_texts=prompt_texts, model=model, tx=tx, schedule=schedule,
                 pg_config=pg_config, state_shardings=state_shardings, sampler=sampler,
                 sampling=sampling, rewards=runner, prompts=prompts, update=update,
                 prepare=prepare, logprobs=logprobs, decode=decode, kl_controller=kl_controller,
                 make_state=make_state, init_state=init_state, ppo_config=ppo_config,
                 rollout_values=rollout_values, experience=stage, prime=prime_model,
                 process_scorer=process_scorer, base_logprobs=base_logprobs)


def _build_prime(ac, model, model_config, abstract, param_shardings, mesh, rows, key
                 ) -> PrimeModel:
  """The implicit PRM's optimizer, state shardings (the policy's layout, on the same mesh) and
  jitted functions."""
  cfg = prime_lib.config_from(ac)
  tx = with_master_weights(prime_lib.make_optimizer(ac), model_config.param_dtype)
  shardings = train_state_shardings(tx, abstract, param_shardings, mesh)
  make_state = jax.jit(lambda p: TrainState.create(p, tx, key), out_shardings=shardings)
  update = jax.jit(prime_lib.make_update(model.apply, model_config, tx, cfg),
                   out_shardings=(shardings, replicated(mesh), rows), donate_argnums=(0,))
  logprobs = jax.jit(lambda params, t, a, m: prime_lib.prm_logprobs(model.apply, params,
                                                                    model_config, t, a, m),
                     out_shardings=rows)
  rewards = jax.jit(lambda lp, ref, m: prime_lib.process_rewards(lp, ref, m, cfg),
                    out_shardings=rows)
  return PrimeModel(config=cfg, state_shardings=shardings, make_state=make_state, update=update,
                    logprobs=logprobs, token_rewards=rewards)


# --------------------------------------------------------------------------------------------
# Rollout assembly (host side).


def collect_rollout(setup: RLSetup, params, step: int, position: int):
  """One step's batch from the rollout stage (:func:`jaxrl_llm.train.experience.collect`: sources,
  scoring, baseline, filters).

  Returns:
    (host batch dict, next prompt position, info dict, timings dict). The batch holds
    ``tokens int32[N, L]``, ``prompt_mask``, ``response_mask`` bool ``[N, L]``, ``sampler_logp
    float32[N, T]``, ``lengths``, ``finished``, ``group_ids`` (0..B−1), ``scores`` (total reward,
    NaN = unscorable), ``accuracy``, per-function rewards ``reward/<name>``, ``baseline_scores``,
    ``trainable``, ``is_demonstration`` and ``off_policy`` (teacher tokens).
  """
  return experience.collect(setup, params, step, position)


# --------------------------------------------------------------------------------------------
# One step.


def rollout_metrics(batch: dict, info: dict, num_groups: int) -> dict:
  """Deterministic host metrics of a rollout batch (rewards, accuracy, lengths, groups)."""
  trainable = batch["trainable"]
  out = {}
  s = batch["scores"][trainable]
  out["reward/mean"] = float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
  out["reward/std"] = float(np.nanstd(s)) if np.isfinite(s).any() else float("nan")
  out["reward/unscorable_fraction"] = float(np.mean(~np.isfinite(s))) if len(s) else 0.0
  for k, v in batch.items():
    if k.startswith("reward/"):
      v = v[trainable]
      out[f"{k}/mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
      out[f"{k}/std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
  # Accuracy and lengths describe the policy's own samples; teacher traces get their own metrics.
  demo = batch.get("is_demonstration", np.zeros_like(trainable))
  own = trainable & ~demo
  acc = batch["accuracy"][own]
  if np.isfinite(acc).any():
    out["reward/accuracy"] = float(np.nanmean(acc))
  if demo.any():
    verified = batch["accuracy"][demo]
    out["demonstrations/accuracy"] = (float(np.nanmean(verified)) if np.isfinite(verified).any()
                                      else float("nan"))
    out["demonstrations/trained_fraction"] = float(np.mean(trainable[demo]))
  lengths = batch["lengths"][own]
  # No trainable row (dynamic sampling kept nothing and on_exhausted='train'): zeros, not a crash.
  out["response/length_mean"] = float(np.mean(lengths)) if len(lengths) else 0.0
  out["response/length_max"] = float(np.max(lengths)) if len(lengths) else 0.0
  out["response/clipped_fraction"] = (float(np.mean(~batch["finished"][own]))
                                      if len(lengths) else 0.0)
  std = group_std(batch["scores"], batch["group_ids"], num_groups)
  real = np.unique(batch["group_ids"][trainable])
  out["groups/zero_variance_fraction"] = float(np.mean(std[real] == 0)) if len(real) else 0.0
  out["rollout/gen_rounds"] = float(info["gen_rounds"])
  out["rollout/dropped_groups"] = float(info["dropped_groups"])
  out["rollout/short_groups"] = float(info["short_groups"])
  return out


def _train_mask(setup: RLSetup, batch: dict) -> np.ndarray:
  """bool ``[N, T]``: the response tokens that are trained on (trainable rows; DAPO's overlong
  filter drops truncated rows)."""
  width = batch["prompt_width"]
  mask = batch["response_mask"][:, width:] & batch["trainable"][:, None]
  if setup.config.algorithm.overlong_filter:
    mask = mask & batch["finished"][:, None]
  return mask


def prime_step(setup: RLSetup, prm_state, batch: dict):
  """PRIME's implicit PRM on one rollout batch (docs/algorithms.md §10): one cross-entropy update
  on the outcome labels (``reward.accuracy`` of the policy's own scorable rows) and the per-token
  process rewards, computed with the updated PRM (``prime_update="before"``) or the PRM as it was
  (``"after"``).

  Returns:
    (new PRM state, process rewards float32 ``[N, T]`` on the mesh, host metrics ``prm/*``).
  """
  pm = setup.prime
  put = setup.put_rows
  tokens = put(batch["tokens"])
  attention = put(batch["prompt_mask"] | batch["response_mask"])
  mask = put(_train_mask(setup, batch))
  ref = pm.logprobs(pm.reference, tokens, attention, mask)
  acc = batch["accuracy"]
  demo = batch.get("is_demonstration", np.zeros_like(batch["trainable"]))
  fields = {"tokens": tokens, "attention_mask": attention, "mask": mask, "ref_logp": ref,
            "labels": put(np.nan_to_num(acc, nan=0.0).astype(np.float32)),
            "label_valid": put(batch["trainable"] & ~demo & np.isfinite(acc))}
  prm_state, metrics, logp = pm.update(prm_state, fields)
  if pm.config.update == "before":
    logp = pm.logprobs(prm_state.params, tokens, attention, mask)
  process = pm.token_rewards(logp, ref, mask)
  metrics = {k: float(v) for k, v in device_get(metrics).items()}
  return prm_state, process, metrics


def token_char_ends(tokenizer, ids) -> np.ndarray:
  """int ``[len(ids)]``: the length of the decoded text up to and including each token (so token
  ``t`` holds characters ``[ends[t−1], ends[t])``). Per-token pieces when they decode to the
  whole text, else prefix decodes (byte-level tokens that split a character)."""
  ids = [int(x) for x in ids]
  full = tokenizer.decode(ids, skip_special_tokens=True)
  pieces = [len(tokenizer.decode([x], skip_special_tokens=True)) for x in ids]
  ends = np.cumsum(pieces) if ids else np.zeros(0, np.int64)
  if not ids or ends[-1] != len(full):
    ends = np.asarray([len(tokenizer.decode(ids[:t + 1], skip_special_tokens=True))
                       for t in range(len(ids))], np.int64)
  return np.asarray(ends, np.int64)


def process_step_rewards(setup: RLSetup, batch: dict) -> tuple[np.ndarray, np.ndarray]:
  """Step rewards of every response from ``reward.process_model_run`` (docs/algorithms.md §18).

  Each response is decoded as the reward functions saw it, cut into steps at the PRM run's
  delimiter and scored; a step's reward is ``reward.process_coef`` × its probability of being
  right, placed on the response token that holds the step's last character (character offsets
  of the sampled tokens themselves, no re-tokenisation).

  Returns:
    (step rewards float32 ``[N, S]`` (NaN = none), positions int32 ``[N, S]`` (response-token
    index, −1 = none)).
  """
  tok = setup.tokenizer
  width = batch["prompt_width"]
  eos = tok.eos_token_id
  prompts = tok.batch_decode(batch["tokens"][:, :width].tolist(), skip_special_tokens=True)
  ids_rows, texts, ends_rows = [], [], []
  for r in range(len(batch["tokens"])):
    ids = [int(x) for x, m in zip(batch["tokens"][r, width:], batch["response_mask"][r, width:])
           if m]
    if eos in ids:
      ids = ids[:ids.index(eos)]
    ids_rows.append(ids)
    ends_rows.append(token_char_ends(tok, ids))
    texts.append(tok.decode(ids, skip_special_tokens=True))
  _, probs, step_ends = setup.process_scorer.steps(prompts, texts)
  num = max(1, max(len(p) for p in probs))
  rewards = np.full((len(texts), num), np.nan, np.float32)
  positions = np.full((len(texts), num), -1, np.int32)
  coef = setup.config.reward.process_coef
  for r, (p, e, cum) in enumerate(zip(probs, step_ends, ends_rows)):
    for k, (prob, end) in enumerate(zip(p, e)):
      hit = np.nonzero(cum >= end)[0]
      if len(hit) and np.isfinite(prob):
        positions[r, k] = int(hit[0])
        rewards[r, k] = coef * float(prob)
  return rewards, positions


def train_batch(setup: RLSetup, batch: dict, state, kl_coef: float, step: int = 0,
                process_rewards=None):
  """Computes old/ref log-probs and advantages; returns the device batch for ``update``.

  Args:
    process_rewards: PRIME's implicit per-token rewards (:func:`prime_step`).
  Returns:
    (device batch, prepare diagnostics (host floats), the rows' per-row mean KL-to-reference).
  """
  ac = setup.config.algorithm
  mask = _train_mask(setup, batch)
  scores = batch["scores"].copy()
  if not ac.truncated_in_stats:
    scores[~batch["finished"]] = np.nan
  put = setup.put_rows
  tokens = put(batch["tokens"])
  attention = put(batch["prompt_mask"] | batch["response_mask"])
  mask_d = put(mask)
  old = None  # the update computes it itself (pg.reuses_update_logp)
  if setup.ppo_config is not None:
    old, old_values = setup.rollout_values(state, tokens, attention, mask_d)
  elif not pg.reuses_update_logp(ac):
    old = setup.logprobs(state.params, tokens, attention, mask_d).logp
  if setup.reference is not None:
    ref = setup.logprobs(setup.reference, tokens, attention, mask_d).logp
  elif setup.base_logprobs is not None:  # LoRA: the reference is the frozen base, adapters off.
    ref = setup.base_logprobs(lora.base_of(setup.policy_params(state)), tokens, attention,
                              mask_d).logp
  else:
    ref = put(np.zeros(mask.shape, np.float32))
  inputs = {"scores": put(scores), "mask": mask_d, "ref_logp": ref,
            "kl_coef": jnp.asarray(kl_coef, jnp.float32)}
  if old is not None:
    inputs["old_logp"] = old
  extra = {}
  if setup.process_scorer is not None:
    step_rewards, step_positions = process_step_rewards(setup, batch)
    step_rewards[~batch["trainable"]] = np.nan
    inputs.update(step_rewards=put(step_rewards), step_positions=put(step_positions))
  if setup.ppo_config is not None:
    adv, returns, diag = setup.prepare(dict(inputs, old_values=old_values))
    extra = {"returns": returns, "old_values": old_values,
             "train_actor": jnp.asarray(ppo.actor_trains_at(setup.ppo_config, step))}
  else:
    more = {}
    if setup.prime is not None:
      if process_rewards is None:
        raise ValueError("PRIME needs the implicit PRM's process_rewards (see prime_step)")
      more["process_rewards"] = process_rewards
    if ac.adv_stats == "on_policy":
      more["is_demonstration"] = put(batch["is_demonstration"])
    adv, diag = setup.prepare(dict(inputs, group_ids=put(batch["group_ids"].astype(np.int32)),
                                   baseline_scores=put(batch["baseline_scores"]), **more))
  device_batch = {"tokens": tokens, "attention_mask": attention, "mask": mask_d,
                  "advantages": adv, "ref_logp": ref, "sampler_logp": put(batch["sampler_logp"]),
                  **extra}
  if old is not None:
    device_batch["old_logp"] = old
  if setup.sampling.truncates:
    device_batch["behaviour_logp"] = put(batch["behaviour_logp"])
  if "demonstrations" in setup.config.rollout.sources:
    device_batch["off_policy"] = put(batch["off_policy"] & mask)
  if ac.resolved_policy_loss == "srft":
    # SRFT's self-rollout split: a row is positive when its verifier says correct.
    verdict = batch["accuracy"] if setup.config.reward.accuracy else batch["scores"]
    device_batch["positive"] = put(np.nan_to_num(verdict, nan=0.0) >= 1.0)
  return device_batch, diag


def evaluate(setup: RLSetup, params, split: str, limit: int = 0) -> dict[str, float]:
  """Accuracy on ``split`` (``limit`` rows; 0 = all) of greedy answers (or of one sample per
  prompt at ``train.eval_temperature``, with a fixed key).

  Scored by the ``reward.accuracy`` function (exact string match when none is named), through
  the same guarded runner as training rewards; an unscorable answer counts as wrong.

  Returns:
    ``{"accuracy": float, "examples": int}``.
  """
  from jaxrl_llm.data import prompt_batches

  tc, cfg = setup.config.train, setup.config
  tok = setup.tokenizer
  name = cfg.reward.accuracy
  spec = next((s for s in setup.rewards.specs if s.name == name), None)
  runner = RewardRunner([spec], timeout_s=cfg.reward.timeout_s, on_error="exclude") if spec \
      else None
  correct = total = 0
  for batch in prompt_batches(setup.splits[split], batch_size=tc.eval_batch_size,
                              buckets=cfg.data.length_buckets, pad_id=tok.pad_token_id,
                              limit=limit):
    generated = device_get(setup.decode(params, batch["tokens"], batch["attention_mask"]))
    texts = decode_texts(tok, generated, tok.eos_token_id)
    n = int(batch["valid"].sum())
    texts, answers = texts[:n], batch["answers"][:n]
    if runner is None:
      hits = [float(t.strip() == a.strip()) for t, a in zip(texts, answers)]
    else:
      prompts = tok.batch_decode(np.asarray(batch["tokens"][:n]).tolist(),
                                 skip_special_tokens=True)
      # The raw value, not the weighted total: an accuracy metric may carry weight 0.
      hits = np.nan_to_num(runner(prompts, texts, batch["columns"]).per_function[name]).tolist()
    correct += float(np.sum(hits))
    total += n
  return {"accuracy": correct / max(total, 1), "examples": total}


# --------------------------------------------------------------------------------------------
# The loop.


def _initial_params(config: Config, run_dir: str, setup: RLSetup, *, devices):
  """Policy params at RL step 0: the SFT warm start, a Hugging Face checkpoint, or a fresh init."""
  ic = config.init
  mc = setup.model_config
  if not (ic.sft_steps or ic.policy_run or ic.hf_checkpoint):
    return setup.policy_params(setup.init_state())
  params = sft_loop.starting_policy(config, run_dir, mc, setup.mesh, devices=devices)
  # The policy's layout (PPO's state nests it inside the actor, so not state_shardings.params).
  shardings = tree_shardings(abstract_params(mc), param_logical_axes(mc), setup.mesh)
  return jax.device_put(params, shardings)


def train(config: Config, run_dir: str, *, resume: bool = False, devices=None,
          stop_after: int | None = None, reward_fns: Sequence[RewardSpec] | None = None
          ) -> dict[str, Any]:
  """Runs (or resumes) online RL in ``run_dir``; returns the final state and metrics.

  Args:
    resume: continue from the newest complete checkpoint (fresh start if none).
    stop_after: stop after this RL step (tests); checkpoints are still written on schedule.
    reward_fns: reward functions to use instead of the configured names.
  """
  config = shrink_for_tests(config)
  hf_model_config, hf_tokenizer = policy_source(config)
  _validate(config, make_mesh(config.mesh, devices))  # Before any stage runs.
  os.makedirs(run_dir, exist_ok=True)
  if not resume:
    if is_primary():
      save_json(config, os.path.join(run_dir, "config.json"))
  config = run_stages(config, run_dir, devices=devices)
  setup = build(config, run_dir, devices=devices, reward_fns=reward_fns,
                model_config=hf_model_config, tokenizer=hf_tokenizer)
  tc, lc, ac = config.train, config.logging, config.algorithm
  init = _initial_params(config, run_dir, setup, devices=devices)
  make_state = setup.make_state
  # The reference is the starting policy, frozen; it is not kept at all when β = 0. With LoRA it
  # is the frozen base inside the policy's own params (train_batch), so nothing is copied.
  setup.reference = (jax.tree.map(jnp.copy, init)
                     if ac.uses_reference and not setup.model_config.lora.rank else None)
  if setup.prime is not None:  # PRIME: the implicit PRM and its reference start as the policy.
    setup.prime.reference = (setup.reference if setup.reference is not None
                             else jax.tree.map(jnp.copy, init))
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=tc.keep_checkpoints,
                      async_save=tc.async_checkpointing)
  cadence = CheckpointCadence(tc.checkpoint_every, tc.checkpoint_minutes)
  latest = ckpt.latest_step() if resume else None
  kl_state = setup.kl_controller.init()
  counts: dict = {}
  if latest is not None:
    abstract = abstract_with_shardings(jax.eval_shape(make_state, init), setup.state_shardings)
    if setup.prime is not None:
      abstract = {"actor": abstract, "implicit_prm": abstract_with_shardings(
          jax.eval_shape(setup.prime.make_state, init), setup.prime.state_shardings)}
    restored, extra = ckpt.restore(latest, abstract)
    state, prm_state = _from_checkpoint(restored, setup.prime is not None)
    start, position = int(extra["step"]), int(extra["prompt_position"])
    kl_state = kl_state._replace(coef=jnp.asarray(extra["kl_coef"], jnp.float32))
    counts = extra["reward_counts"]
  else:
    state = make_state(init)
    prm_state = (setup.prime.make_state(jax.tree.map(jnp.copy, init))
                 if setup.prime is not None else None)
    start, position = 0, 0
  del init
  progress = Progress(tc.steps, start, mode=lc.progress, log_every=lc.log_every)
  writer = MetricsWriter(run_dir, tensorboard=lc.tensorboard,
                         resume_step=start if latest is not None else None)
  if latest is not None:
    progress.message(f"resumed from step {start} of {tc.steps}")
  perf_path = os.path.join(run_dir, "perf.jsonl")
  before_path = os.path.join(run_dir, "eval_before.json")
  if "test" in setup.splits and not os.path.exists(before_path):
    ev = evaluate(setup, setup.policy_params(state), "test", tc.test_examples)
    with open(before_path if is_primary() else os.devnull, "w") as f:
      json.dump({"test/accuracy": ev["accuracy"], "test/examples": ev["examples"]}, f)
    progress.message(f"held-out test accuracy before RL: {ev['accuracy']:.4f} "
                     f"({ev['examples']} examples)")
  if start == 0:
    progress.message(f"run dir: {run_dir}")
    progress.message(write_data_report(run_dir, setup.splits, setup.config.data.length_buckets))
  last = stop_after if stop_after is not None else tc.steps
  metrics_host: dict[str, Any] = {}

  def extra_state(done, position, kl_state, counts):
    return {"step": done, "prompt_position": position, "kl_coef": float(kl_state.coef),
            "reward_counts": counts}

  for step in range(start, min(last, tc.steps)):
    t_step = time.perf_counter()
    try:
      batch, new_position, info, times = collect_rollout(setup, setup.policy_params(state), step,
                                                           position)
    except RewardError:
      # Never lose work: checkpoint what we have (the state before this step), then stop.
      if step not in ckpt.all_steps() and step > 0:
        ckpt.save(step, _checkpoint_tree(state, prm_state),
                  extra_state(step, position, kl_state, counts), force=True)
      cadence.close()
      ckpt.close()
      writer.close()
      setup.rewards.close()
      raise
    position = new_position
    add_counts(counts, info["reward_counts"])
    t0 = time.perf_counter()
    process, prm_metrics = None, {}
    if setup.prime is not None:
      prm_state, process, prm_metrics = prime_step(setup, prm_state, batch)
    device_batch, diag = train_batch(setup, batch, state, float(kl_state.coef), step,
                                     process_rewards=process)
    jax.block_until_ready(device_batch["advantages"])
    t_lp = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics = setup.update(state, device_batch)
    metrics = device_get(metrics)
    t_up = time.perf_counter() - t0
    diag = device_get(diag)
    if ac.kl_controller == "adaptive":
      kl_state = setup.kl_controller.update(kl_state, diag["kl_ref_seq"],
                                            float(batch["trainable"].sum()))
    done = step + 1
    line = {k: float(v) for k, v in metrics.items()}
    line.update({k: float(v) for k, v in diag.items() if k != "kl_ref_seq"})
    if "kl_ref_seq" in diag:
      line["kl/ref"] = float(diag["kl_ref_seq"])
    line["kl/coef"] = float(kl_state.coef)
    line.update(prm_metrics)
    line.update(rollout_metrics(batch, info, config.rollout.prompts_per_step))
    for name, c in counts.items():
      for k, v in c.items():
        line[f"reward/{name}/{k}_total"] = float(v)
    if tc.eval_every and done % tc.eval_every == 0 and "validation" in setup.splits:
      ev = evaluate(setup, setup.policy_params(state), "validation", tc.eval_examples)
      line["eval/accuracy"] = ev["accuracy"]
      progress.message(f"step {done}: validation accuracy {ev['accuracy']:.3f}")
    final = done == tc.steps
    if final and "test" in setup.splits:
      ev = evaluate(setup, setup.policy_params(state), "test", tc.test_examples)
      line["test/accuracy"] = ev["accuracy"]
      line["test/examples"] = ev["examples"]
    writer.write(done, line)
    elapsed = time.perf_counter() - t_step
    tokens = int(batch["response_mask"].sum())
    perf = {"step": done, "time/generate_s": times["generate"], "time/reward_s": times["reward"],
            "time/logprobs_s": t_lp, "time/update_s": t_up, "time/step_s": elapsed,
            "perf/tokens_per_s": tokens / max(elapsed, 1e-9),
            "rollout/compilations": setup.sampler.compilations}
    perf.update(setup.rewards.timing())  # per-function p50 / p99 wall time per call.
    if is_primary():
      with open(perf_path, "a") as f:
        f.write(json.dumps(perf) + "\n")
    writer.add_scalars(done, {k: v for k, v in perf.items() if k != "step"})
    progress.update(done, line["train/loss"], perf["perf/tokens_per_s"],
                    {"reward": line["reward/mean"]} |
                    ({"acc": line["reward/accuracy"]} if "reward/accuracy" in line else {}))
    if cadence.due(done, final):
      ckpt.save(done, _checkpoint_tree(state, prm_state),
                extra_state(done, position, kl_state, counts), force=final or cadence.preempted)
    cadence.stop_if_preempted(done, final, ckpt, writer, progress, setup.rewards)
    metrics_host = line
    if final:
      _finish(run_dir, line, progress)
  cadence.close()
  ckpt.close()
  writer.close()
  progress.close()
  setup.rewards.close()  # reward worker processes; later calls run on threads.
  return {"state": state, "metrics": metrics_host, "run_dir": run_dir, "setup": setup,
          "prm_state": prm_state}


def _checkpoint_tree(state, prm_state):
  """What a checkpoint holds: the policy's state, and PRIME's PRM state beside it."""
  return state if prm_state is None else {"actor": state, "implicit_prm": prm_state}


def _from_checkpoint(tree, has_prm: bool):
  """``(policy state, PRM state or None)`` from a restored checkpoint tree."""
  return (tree["actor"], tree["implicit_prm"]) if has_prm else (tree, None)


def _finish(run_dir: str, line: dict, progress: Progress) -> None:
  result = {k: v for k, v in line.items() if k.startswith("test/")}
  before_path = os.path.join(run_dir, "eval_before.json")
  if os.path.exists(before_path) and "test/accuracy" in result:
    with open(before_path) as f:
      before = json.load(f)
    result["test/accuracy_before"] = before["test/accuracy"]
    result["test/improvement"] = result["test/accuracy"] - before["test/accuracy"]
  from jaxrl_llm.train.plotting import write_results

  if is_primary():
    write_results(run_dir, result, progress)
  if "test/accuracy" in result:
    msg = f"held-out test accuracy after RL: {result['test/accuracy']:.4f}"
    if "test/accuracy_before" in result:
      msg += (f" (before: {result['test/accuracy_before']:.4f}, "
              f"{100 * result['test/improvement']:+.1f} points)")
    progress.message(msg)


def build_for_eval(config: Config, run_dir: str, **kwargs) -> RLSetup:
  """:func:`build` for a run directory's config, Hugging Face start included (``jaxrl-llm eval``)."""
  hf_model_config, hf_tokenizer = policy_source(config)
  return build(staged_config(config, run_dir), run_dir, model_config=hf_model_config,
               tokenizer=hf_tokenizer, **kwargs)


def resume(run_dir: str, **kwargs) -> dict[str, Any]:
  """Continues the RL run in ``run_dir`` from its newest complete checkpoint."""
  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory?")
  return train(load_json(path), run_dir, resume=True, **kwargs)
