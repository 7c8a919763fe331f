"""The host loop for learning from a fixed preference dataset: reward models and DPO.

``algorithm.name='reward_model'`` trains a scalar head on the policy trunk (Bradley–Terry pairs,
Plackett–Luce rankings, or ratings); ``algorithm.name='dpo'`` trains the policy itself against a
frozen reference (DPO, cDPO, robust DPO, IPO, hinge; listwise DPO on rankings). Both read the same
batches (:class:`jaxrl_llm.data.preference.PreferenceBatcher`) and share this loop: data ->
jitted, sharded ``update`` -> metrics, periodic held-out evaluation, Orbax checkpoints with exact
resume (state + data position).

Where the starting policy comes from (``init``): a short SFT warm start inside the run
(``RUN_DIR/sft``), another run's policy (``init.policy_run``), or a fresh init. For DPO that
policy is also the frozen reference; reference log-probs are computed on the fly for each batch by
one jitted forward pass (the reference never changes, so caching them per example is a valid
memory-for-compute trade that this loop does not make yet).

Run directory: as the SFT loop (config.json, tokenizer/, metrics.jsonl, checkpoints/, eval.json),
plus for reward models ``reward_model.json`` -- the mean and standard deviation of the model's
scores on its training responses, which :class:`jaxrl_llm.rewards.learned.RewardModelFunction`
uses to normalise rewards for RL. On the synthetic ``sorted_digits`` task a DPO run also measures
the policy's *hidden-property rate* (sampled answers whose digits are sorted) before and after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms import dpo as dpo_lib
from jaxrl_llm.algorithms import reward_model as rm_lib
from jaxrl_llm.algorithms.common import (TrainState, make_optimizer, train_state_shardings,
                                         with_master_weights)
from jaxrl_llm.config.io import shrink_for_tests
from jaxrl_llm.config import Config, ConfigError, save_json
from jaxrl_llm.data import preference as pref
from jaxrl_llm.data.arithmetic import default_data_dir
from jaxrl_llm.data.pipeline import bucket_cap, resolve_buckets
from jaxrl_llm.models import Decoder
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel import make_mesh, replicated, tree_shardings
from jaxrl_llm.train import sft_loop
from jaxrl_llm.rundir.checkpoint import CheckpointCadence, Checkpointer, abstract_with_shardings
from jaxrl_llm.train.tracking import MetricsWriter, Progress
from jaxrl_llm.parallel.distributed import device_get, is_primary

STATS_FILE = "reward_model.json"


@dataclasses.dataclass
class PreferenceSetup:
  """Everything a preference run needs, built once from the config."""

  config: Config
  model_config: Any
  mesh: Any
  tokenizer: Any
  kind: str  # pairs / rankings / ratings
  splits: dict
  batcher: Any
  model: Decoder
  tx: Any
  schedule: Any
  state_shardings: Any
  update: Any
  evaluate_batch: Any  # jitted (params, batch) -> metrics dict
  reference_logprobs: Any  # DPO: jitted (ref_params, batch) -> ref fields; else None
  make_state: Any
  num_responses: int
  policy_shardings: Any = None
  algo: Any = None  # dpo.Config or reward_model.Config
  score: Any = None  # reward models: jitted (params, tokens, attention, last_index) -> [N]

  def put(self, batch: dict, batch_axis: int) -> dict:
    """Host arrays onto the mesh, rows split over data x fsdp along ``batch_axis``."""
    out = {}
    for k, v in batch.items():
      spec = [None] * np.ndim(v)
      spec[batch_axis] = ("data", "fsdp")
      out[k] = jax.device_put(np.asarray(v), NamedSharding(self.mesh, P(*spec)))
    return out


def _kind(config: Config) -> str:
  kind = config.data.preference_kind
  if not kind:
    raise ConfigError("config field 'data.preference_kind': preference training needs 'pairs', "
                      "'rankings' or 'ratings'")
  a = config.algorithm
  want = {"pairwise": "pairs", "ranking": "rankings", "rating": "ratings", "orm": "steps",
          "prm": "steps"}
  if a.name == "reward_model" and want[a.rm_objective] != kind:
    raise ConfigError(f"config field 'algorithm.rm_objective': {a.rm_objective!r} trains on "
                      f"{want[a.rm_objective]}, but data.preference_kind={kind!r}")
  if kind == "steps" and a.name != "reward_model":
    raise ConfigError("config field 'data.preference_kind': step-labelled solutions train outcome "
                      "or process reward models (algorithm.name=reward_model, rm_objective=orm "
                      "or prm)")
  if a.name == "dpo" and kind == "ratings":
    raise ConfigError("config field 'data.preference_kind': DPO needs pairs or rankings, not "
                      "ratings")
  if a.name == "dpo" and kind == "rankings" and a.dpo_variant != "dpo":
    raise ConfigError(f"config field 'algorithm.dpo_variant': listwise DPO on rankings exists only "
                      f"for 'dpo', got {a.dpo_variant!r}")
  return kind


def preference_rows(config: Config, kind: str) -> dict[str, list]:
  """Raw rows per split: the user's JSONL (``data.source='jsonl'``) or the synthetic task, both
  through the TFDS preference builder."""
  dc = config.data
  data_dir = dc.data_dir or default_data_dir()
  if dc.source == "jsonl":
    jsonl_dir = dc.jsonl_dir
  elif dc.task == "sorted_digits":
    name = (f"n{dc.train_size}-{dc.validation_size}-{dc.test_size}_s{dc.dataset_seed}")
    root = os.path.join(data_dir, "sorted_digits_jsonl", name)
    if not os.path.exists(root):
      # Written aside and renamed whole, so an interrupted write is never read back.
      tmp = f"{root}.tmp-{os.getpid()}"
      pref.write_synthetic_preference_jsonl(tmp, seed=dc.dataset_seed, train_size=dc.train_size,
                                            validation_size=dc.validation_size,
                                            test_size=dc.test_size)
      try:
        os.replace(tmp, root)
      except OSError:  # Another process finished first: same seed, same files.
        shutil.rmtree(tmp, ignore_errors=True)
    jsonl_dir = os.path.join(root, kind)
  else:
    raise ConfigError(f"config field 'data.task': no preference data for task {dc.task!r}; use "
                      "'sorted_digits' or data.source='jsonl'")
  sources = pref.prepare_preference(jsonl_dir, kind, data_dir, on_bad_row=dc.on_bad_row)
  return {split: pref.load_split_rows(src) for split, src in sources.items()}


def _policy_start(config: Config, run_dir: str, setup: PreferenceSetup, devices):
  """Initial policy params (:func:`jaxrl_llm.train.sft_loop.starting_policy`), on the mesh."""
  return jax.device_put(sft_loop.starting_policy(config, run_dir, setup.model_config, setup.mesh,
                                                 devices=devices), setup.policy_shardings)


def build(config: Config, run_dir: str, *, devices=None) -> PreferenceSetup:
  """Builds data, mesh, model, optimizer and the jitted functions. Config errors surface here."""
  a, dc, tc = config.algorithm, config.data, config.train
  if not a.is_preference:
    raise ConfigError(f"config field 'algorithm.name': the preference loop trains 'dpo' or "
                      f"'reward_model', got {a.name!r}")
  kind = _kind(config)
  mesh = make_mesh(config.mesh, devices)
  sft_loop.validate_geometry(config, mesh)  # Same batch geometry rules as SFT.
  from jaxrl_llm.rundir.artifacts import run_tokenizer

  tokenizer, model_config = run_tokenizer(config, run_dir)
  max_len = bucket_cap(config, model_config.max_seq_len)
  rows = preference_rows(config, kind)
  splits = {name: pref.encode_preference_split(r, tokenizer, kind=kind, split=name,
                                               max_len=max_len, on_bad_row=dc.on_bad_row,
                                               on_overlong=dc.on_overlong)
            for name, r in rows.items() if r}
  config = resolve_buckets(config, splits, max_len)
  dc = config.data
  num_responses = 1 if kind == "ratings" else max(s.max_responses for s in splits.values())
  batcher = pref.PreferenceBatcher(
      splits["train"], batch_size=tc.batch_size, buckets=dc.length_buckets,
      pad_id=tokenizer.pad_token_id, data_key=rng_lib.purpose_key(config.seed, "data"),
      shuffle=dc.shuffle, num_responses=None if kind == "ratings" else num_responses)
  model = Decoder(model_config)
  tx, schedule = make_optimizer(config.optimizer, tc.steps)
  if a.name == "dpo":
    tx = sft_loop.param_optimizer(tx, config, model_config)
  else:
    sft_loop.lora_not_supported(model_config, "reward models")
    tx = with_master_weights(tx, model_config.param_dtype)
  policy_abstract = abstract_params(model_config)
  policy_shardings = tree_shardings(policy_abstract, param_logical_axes(model_config), mesh)
  dropout_key = rng_lib.purpose_key(config.seed, "dropout")
  if a.name == "dpo":
    algo = dpo_lib.Config(variant=a.dpo_variant, beta=a.beta,
                          label_smoothing=a.label_smoothing,
                          ipo_length_normalize=a.ipo_length_normalize)
    abstract, shardings = policy_abstract, policy_shardings
    update_fn = dpo_lib.make_update(model.apply, model_config, tx, schedule, algo)
    eval_fn = lambda params, batch: dpo_lib.evaluate_pairs(model.apply, params, model_config,
                                                           batch, algo)
    if model_config.lora.rank:
      # The reference is the policy's own frozen base with the adapters off: ref_fn gets the
      # policy params and drops the adapters (nothing is copied).
      from jaxrl_llm.models import lora

      base_cfg = lora.base_config(model_config)
      ref_fn = jax.jit(lambda params, batch: dpo_lib.reference_logprobs(
          Decoder(base_cfg).apply, lora.base_of(params), base_cfg, batch))
    else:
      ref_fn = jax.jit(lambda ref, batch: dpo_lib.reference_logprobs(model.apply, ref,
                                                                     model_config, batch))
    score = None
  else:
    algo = rm_lib.Config(objective=a.rm_objective, margin=a.rm_margin,
                         center_coef=a.rm_center_coef, rating_loss=a.rm_rating_loss)
    abstract = jax.eval_shape(lambda p: rm_lib.init_params(p, model_config,
                                                           jax.random.PRNGKey(0), algo),
                              policy_abstract)
    shardings = rm_lib.param_shardings(abstract, model_config, mesh)
    update_fn = rm_lib.make_update(model_config, tx, schedule, algo)
    eval_fn = lambda params, batch: rm_lib.evaluate(params, model_config, batch, algo)
    ref_fn = None
    score = rm_lib.make_scorer(model_config)
  if config.init.hf_checkpoint:
    raise NotImplementedError("init.hf_checkpoint for DPO / reward models is not wired yet: "
                              "start from an SFT run of it with init.policy_run")
  state_shardings = train_state_shardings(tx, abstract, shardings, mesh)
  make_state = jax.jit(lambda p: TrainState.create(p, tx, dropout_key),
                       out_shardings=state_shardings)
  update = jax.jit(update_fn, out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,))
  evaluate_batch = jax.jit(eval_fn, out_shardings=replicated(mesh))
  return PreferenceSetup(config=config, model_config=model_config, mesh=mesh,
                         tokenizer=tokenizer, kind=kind, splits=splits, batcher=batcher,
                         model=model, tx=tx, schedule=schedule, state_shardings=state_shardings,
                         update=update, evaluate_batch=evaluate_batch,
                         reference_logprobs=ref_fn, make_state=make_state,
                         num_responses=num_responses, policy_shardings=policy_shardings,
                         algo=algo, score=score)


# --------------------------------------------------------------------------------------------
# Evaluation.


def _accumulate(batch: dict, accum: int) -> dict:
  """``[B, ...]`` host arrays -> ``[A, B / A, ...]`` (the update's micro-batch axis)."""
  return {k: np.asarray(v).reshape((accum, -1) + np.shape(v)[1:]) for k, v in batch.items()}


def _device_batch(setup: PreferenceSetup, host: dict, reference, accum: int) -> dict:
  batch = setup.put(_accumulate(host, accum), batch_axis=1)
  if setup.reference_logprobs is not None:
    batch.update(setup.reference_logprobs(reference, batch))
  return batch


def evaluate(setup: PreferenceSetup, params, reference, split: str, limit: int = 0
             ) -> dict[str, float]:
  """Held-out metrics of ``split`` (reward-model accuracy / DPO reward accuracy and margins),
  averaged over its rows (filler rows of the last batch excluded)."""
  tc = setup.config.train
  totals: dict[str, float] = {}
  rows = 0
  for host in pref.eval_batches(setup.splits[split], tc.eval_batch_size,
                                buckets=setup.config.data.length_buckets,
                                pad_id=setup.tokenizer.pad_token_id,
                                num_responses=None if setup.kind == "ratings"
                                else setup.num_responses, limit=limit):
    valid = host.pop("row_valid")
    # Filler rows of the last batch get weight 0 (`valid` is over ranked positions, or rows).
    host["valid"] = host["valid"] & (valid[:, None] if host["valid"].ndim == 2 else valid)
    batch = setup.put(host, batch_axis=0)
    if setup.reference_logprobs is not None:
      batch.update(setup.reference_logprobs(reference, batch))
    metrics = device_get(setup.evaluate_batch(params, batch))
    n = int(valid.sum())
    for k, v in metrics.items():
      totals[k] = totals.get(k, 0.0) + float(v) * n
    rows += n
  return {k: v / max(rows, 1) for k, v in totals.items()} | {"examples": rows}


def hidden_property_rate(setup: PreferenceSetup, params, *, prompts: int = 256, seed: int = 0,
                         max_new_tokens: int = 8) -> dict[str, float]:
  """Synthetic ``sorted_digits`` task: the fraction of sampled answers (temperature 1, fixed
  key) with the hidden property, and of greedy answers."""
  from jaxrl_llm.rewards.preference_task import sorted_digits_property
  from jaxrl_llm.rollout import Sampler, SamplingConfig
  from jaxrl_llm.rollout.sampler import pad_prompts
  from jaxrl_llm.train.evaluate import decode_texts

  tok = setup.tokenizer
  texts = [pref.synthetic_prompt(3 + i % 4) for i in range(prompts)]
  ids = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
  tokens, lengths = pad_prompts(ids, setup.config.data.length_buckets, tok.pad_token_id)
  sampler = Sampler(setup.model_config, pad_id=tok.pad_token_id, mesh=setup.mesh)
  out = {}
  for name, sampling in (("sampled", SamplingConfig(temperature=1.0)),
                         ("greedy", SamplingConfig(greedy=True))):
    ro = sampler.generate(params, tokens, lengths, sampling=sampling,
                          max_new_tokens=max_new_tokens, stop_token_ids=[tok.eos_token_id],
                          rng=jax.random.PRNGKey(seed))
    answers = decode_texts(tok, device_get(ro.tokens)[:, tokens.shape[1]:], tok.eos_token_id)
    out[f"property_rate_{name}"] = float(np.mean(sorted_digits_property(texts, answers)))
  return out


def score_stats(setup: PreferenceSetup, params, limit: int = 1024) -> dict[str, float]:
  """Mean and std of a reward model's scores over training responses (for RL normalisation)."""
  scores = []
  for host in pref.eval_batches(setup.splits["train"], setup.config.train.eval_batch_size,
                                buckets=setup.config.data.length_buckets,
                                pad_id=setup.tokenizer.pad_token_id,
                                num_responses=None if setup.kind == "ratings"
                                else setup.num_responses, limit=limit):
    valid = host.pop("row_valid")
    length = host["tokens"].shape[-1]
    flat = setup.put({"tokens": host["tokens"].reshape(-1, length),
                      "attention_mask": host["attention_mask"].reshape(-1, length),
                      "last_index": host["last_index"].reshape(-1)}, batch_axis=0)
    s = np.asarray(device_get(setup.score(params, flat["tokens"], flat["attention_mask"],
                                              flat["last_index"]))).reshape(
                                                  host["last_index"].shape)
    # Padded response slots of short rankings have an all-False response mask.
    ok = valid if s.ndim == 1 else valid[:, None] & host["response_mask"].any(-1)
    scores.append(s[ok])
  flat = np.concatenate(scores)
  return {"score_mean": float(flat.mean()), "score_std": float(flat.std()),
          "scored_responses": int(flat.size)}


# --------------------------------------------------------------------------------------------
# The loop.


def train(config: Config, run_dir: str, *, resume: bool = False, devices=None,
          stop_after: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) reward-model or DPO training in ``run_dir``; returns the final state.

  Args:
    resume: continue from the newest complete checkpoint (fresh start if none).
    stop_after: stop after this step (tests); checkpoints are still written on schedule.
  """
  config = shrink_for_tests(config)
  os.makedirs(run_dir, exist_ok=True)
  setup = build(config, run_dir, devices=devices)
  if not resume:
    save_json(config, os.path.join(run_dir, "config.json"))
  a, tc, lc = config.algorithm, config.train, config.logging
  is_dpo = a.name == "dpo"
  synthetic = config.data.task == "sorted_digits" and config.data.source != "jsonl"
  policy = _policy_start(config, run_dir, setup, devices)
  lora_ref = setup.model_config.lora.rank > 0  # The reference lives in the policy's params.
  reference = jax.tree.map(jnp.copy, policy) if is_dpo and not lora_ref else None
  ref_of = lambda state: state.params if lora_ref else reference
  if is_dpo:
    start_params = policy
  else:
    start_params = rm_lib.init_params(policy, setup.model_config,
                                      rng_lib.purpose_key(config.seed, "init"), setup.algo)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=tc.keep_checkpoints,
                      async_save=tc.async_checkpointing)
  cadence = CheckpointCadence(tc.checkpoint_every, tc.checkpoint_minutes)
  latest = ckpt.latest_step() if resume else None
  if latest is not None:
    abstract = abstract_with_shardings(jax.eval_shape(setup.make_state, start_params),
                                       setup.state_shardings)
    state, extra = ckpt.restore(latest, abstract)
    start, position = int(extra["step"]), int(extra["data_position"])
  else:
    state = setup.make_state(start_params)
    start, position = 0, 0
  del start_params, policy
  writer = MetricsWriter(run_dir, tensorboard=lc.tensorboard,
                         resume_step=start if latest is not None else None)
  progress = Progress(tc.steps, start, mode=lc.progress, log_every=lc.log_every)
  if latest is not None:
    progress.message(f"resumed from step {start} of {tc.steps}")
  before_path = os.path.join(run_dir, "eval_before.json")
  if is_dpo and synthetic and not os.path.exists(before_path):
    before = hidden_property_rate(setup, state.params, seed=config.seed)
    with open(before_path if is_primary() else os.devnull, "w") as f:
      json.dump({f"test/{k}": v for k, v in before.items()}, f)
    progress.message(f"policy before DPO: hidden-property rate {before['property_rate_sampled']:.3f}"
                     f" sampled, {before['property_rate_greedy']:.3f} greedy")
  if start == 0:
    progress.message(f"run dir: {run_dir}")
  last = stop_after if stop_after is not None else tc.steps
  line: dict[str, Any] = {}
  t_last = time.perf_counter()
  for step in range(start, min(last, tc.steps)):
    host, position = setup.batcher.batch(position)
    batch = _device_batch(setup, host, ref_of(state), tc.grad_accum_steps)
    state, metrics = setup.update(state, batch)
    line = {k: float(v) for k, v in device_get(metrics).items()}
    now = time.perf_counter()
    rows_per_s = tc.batch_size / max(now - t_last, 1e-9)
    t_last = now
    done = step + 1
    final = done == tc.steps
    if tc.eval_every and (done % tc.eval_every == 0 or final) and "validation" in setup.splits:
      ev = evaluate(setup, state.params, ref_of(state), "validation", tc.eval_examples)
      line.update({f"eval/{k}": v for k, v in ev.items()})
      key = "rm/accuracy" if not is_dpo else "dpo/reward_accuracy"
      if key in ev:
        progress.message(f"step {done}: validation {key} {ev[key]:.3f}")
    if final and "test" in setup.splits:
      ev = evaluate(setup, state.params, ref_of(state), "test", tc.test_examples)
      line.update({f"test/{k}": v for k, v in ev.items()})
    if final and is_dpo and synthetic:
      after = hidden_property_rate(setup, state.params, seed=config.seed)
      line.update({f"test/{k}": v for k, v in after.items()})
    writer.write(done, line, extra_tb={"perf/rows_per_s": rows_per_s})
    progress.update(done, line["train/loss"], rows_per_s)
    if cadence.due(done, final):
      ckpt.save(done, state, {"step": done, "data_position": position},
                force=final or cadence.preempted)
    cadence.stop_if_preempted(done, final, ckpt, writer, progress)
    if final:
      if not is_dpo:
        stats = score_stats(setup, state.params)
        with open(os.path.join(run_dir, STATS_FILE) if is_primary() else os.devnull, "w") as f:
          json.dump(stats, f, indent=2)
      _finish(run_dir, line, progress)
  cadence.close()
  ckpt.close()
  writer.close()
  progress.close()
  return {"state": state, "metrics": line, "run_dir": run_dir, "setup": setup}


def _finish(run_dir: str, line: dict, progress: Progress) -> None:
  result = {k: v for k, v in line.items() if k.startswith("test/")}
  before_path = os.path.join(run_dir, "eval_before.json")
  if os.path.exists(before_path):
    with open(before_path) as f:
      before = json.load(f)
    for k, v in before.items():
      result[k.replace("test/", "test/before_")] = v
  from jaxrl_llm.train.plotting import write_results

  write_results(run_dir, result, progress)
  shown = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
  progress.message(f"held-out results: {shown}")


def resume(run_dir: str, **kwargs) -> dict[str, Any]:
  """Continues the preference run in ``run_dir`` from its newest complete checkpoint."""
  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory?")
  return train(load_json(path), run_dir, resume=True, **kwargs)
