"""The SFT host loop: data -> jitted, sharded ``update`` -> metrics, checkpoints, evaluation.

Run directory layout::

  RUN_DIR/config.json        resolved config (``jaxrl-llm run --config`` reproduces the run)
  RUN_DIR/tokenizer/         the tokenizer, saved as a transformers fast tokenizer
  RUN_DIR/metrics.jsonl      one line per step (deterministic values only)
  RUN_DIR/tensorboard/       TensorBoard event files (metrics plus throughput)
  RUN_DIR/checkpoints/N/     Orbax checkpoints (TrainState + data position), last K kept
  RUN_DIR/eval.json          final held-out (test split) exact match
  RUN_DIR/plots/curves.png   training curves
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms import sft
from jaxrl_llm.algorithms.common import (TrainState, make_optimizer, train_state_shardings,
                                         with_master_weights)
from jaxrl_llm.config.io import shrink_for_tests
from jaxrl_llm.config import AlgorithmConfig, Config, ConfigError, load_json, save_json
from jaxrl_llm.data.pipeline import (bucket_cap, has_split, resolve_buckets, sft_rows,
                                     write_data_report)
from jaxrl_llm.data import (SFTBatcher, build_char_tokenizer, encode_split, load_rows,
                            load_tokenizer, save_tokenizer)
from jaxrl_llm.models import Decoder, init_params
from jaxrl_llm.models.init import abstract_params, param_logical_axes
from jaxrl_llm.parallel import batch_size_multiple, make_mesh, replicated, tree_shardings
from jaxrl_llm.rundir.checkpoint import CheckpointCadence, Checkpointer, abstract_with_shardings
from jaxrl_llm.train.evaluate import exact_match, make_greedy_decode
from jaxrl_llm.train.tracking import MetricsWriter, Progress
from jaxrl_llm.parallel.distributed import device_get, primary_first


@dataclasses.dataclass
class SFTSetup:
  """Everything a run needs, built once from the config (host objects and jitted functions)."""

  config: Config
  model_config: Any
  mesh: Any
  tokenizer: Any
  splits: dict
  batcher: SFTBatcher
  model: Decoder
  tx: Any
  schedule: Any
  state_shardings: Any
  update: Any  # jitted update(state, batch) -> (state, metrics), state donated
  init_state: Any  # () -> TrainState, placed on the mesh (the configured starting weights)
  decode: Any
  max_new_tokens: int
  fresh_state: Any = None  # () -> a seeded fresh TrainState: pure, for shapes (jax.eval_shape)

  def put_batch(self, array: np.ndarray, batch_axis: int = 0) -> jax.Array:
    """Places a host batch array on the mesh, split along ``batch_axis`` over data and fsdp."""
    spec = [None] * array.ndim
    spec[batch_axis] = ("data", "fsdp")
    return jax.device_put(array, NamedSharding(self.mesh, P(*spec)))

  def put_train_batch(self, batch: dict) -> dict:
    return {k: self.put_batch(v, batch_axis=1) for k, v in batch.items()}


def validate_geometry(config: Config, mesh) -> None:
  """Batch sizes must split over the mesh's data x fsdp shards (errors name the field)."""
  shards = batch_size_multiple(mesh)
  micro = config.train.batch_size // config.train.grad_accum_steps
  if micro % shards:
    raise ConfigError(f"config field 'train.batch_size': micro-batch {micro} (batch_size / "
                      f"grad_accum_steps) must be a multiple of the {shards} batch shards "
                      f"(mesh data x fsdp)")
  if config.train.eval_batch_size % shards:
    raise ConfigError(f"config field 'train.eval_batch_size': {config.train.eval_batch_size} must "
                      f"be a multiple of the {shards} batch shards (mesh data x fsdp)")


def build(config: Config, run_dir: str, *, devices=None, quiet: bool = False) -> SFTSetup:
  """Builds tokenizer, data, mesh, model, optimizer and the jitted functions for ``config``.

  Every config error surfaces here, before anything is compiled.
  """
  mesh = make_mesh(config.mesh, devices)
  validate_geometry(config, mesh)
  tok_dir = os.path.join(run_dir, "tokenizer")
  # Starting from another run's policy or a Hugging Face checkpoint: its model and tokenizer.
  from jaxrl_llm.rundir.artifacts import policy_source

  source_model, source_tokenizer = policy_source(config)
  with primary_first("tokenizer"):
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
      tokenizer = load_tokenizer(tok_dir)
    else:
      tokenizer = source_tokenizer or build_char_tokenizer()
      save_tokenizer(tokenizer, tok_dir)
  model_config = (dataclasses.replace(source_model, lora=config.model.lora) if source_model
                  else config.model.with_vocab(len(tokenizer)))
  dc, tc = config.data, config.train
  max_len = bucket_cap(config, model_config.max_seq_len)

  train = encode_split(sft_rows(load_rows(dc, "train"), dc, "train"), tokenizer, split="train",
                       max_len=max_len,
                       on_bad_row=dc.on_bad_row, on_overlong=dc.on_overlong,
                       chat_template=dc.chat_template)
  longest_answer = max(len(a) for a in train.answers)
  max_new_tokens = tc.max_new_tokens or longest_answer + 1
  if max_new_tokens >= max_len:
    raise ConfigError(f"config field 'train.max_new_tokens': {max_new_tokens} leaves no room for "
                      f"a prompt in the largest bucket {max_len}")
  splits = {"train": train}
  for name in ("validation", "test"):
    if has_split(dc, name):
      # Evaluation prompts plus the decode budget must fit the largest bucket.
      splits[name] = encode_split(sft_rows(load_rows(dc, name), dc, name), tokenizer, split=name,
                                  max_len=max_len, on_bad_row=dc.on_bad_row,
                                  on_overlong=dc.on_overlong, answer_budget=max_new_tokens,
                                  chat_template=dc.chat_template)
  config = resolve_buckets(config, splits, max_len)
  dc = config.data
  buckets = dc.length_buckets

  batcher = SFTBatcher(train, batch_size=tc.batch_size, grad_accum_steps=tc.grad_accum_steps,
                       buckets=buckets, pad_id=tokenizer.pad_token_id,
                       data_key=rng_lib.purpose_key(config.seed, "data"), shuffle=dc.shuffle)
  model = Decoder(model_config)
  tx, schedule = make_optimizer(config.optimizer, tc.steps)
  tx = param_optimizer(tx, config, model_config)

  init_key = rng_lib.purpose_key(config.seed, "init")
  dropout_key = rng_lib.purpose_key(config.seed, "dropout")
  abstract = abstract_params(model_config)
  param_shardings = tree_shardings(abstract, param_logical_axes(model_config), mesh)

  def make_state(params):
    return TrainState.create(params, tx, dropout_key)

  state_shardings = train_state_shardings(tx, abstract, param_shardings, mesh)

  def fresh_state():
    params, _ = init_params(model_config, init_key, mesh)
    return jax.jit(make_state, out_shardings=state_shardings)(params)

  def init_state():
    params = jax.device_put(starting_policy(config, run_dir, model_config, mesh, devices=devices),
                            param_shardings)
    return jax.jit(make_state, out_shardings=state_shardings)(params)

  algo = sft.Config(loss_aggregation=config.algorithm.loss_aggregation,
                    use_dropout=model_config.dropout_rate > 0)
  update_fn = sft.make_update(model.apply, model_config, tx, schedule, algo)
  batch_sharding = NamedSharding(mesh, P(None, ("data", "fsdp"), None))
  update = jax.jit(update_fn,
                   in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,))
  decode = make_greedy_decode(model_config, max_new_tokens=max_new_tokens,
                              eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                              mesh=mesh)
  return SFTSetup(config=config, model_config=model_config, mesh=mesh, tokenizer=tokenizer,
                  splits=splits, batcher=batcher, model=model, tx=tx, schedule=schedule,
                  state_shardings=state_shardings, update=update, init_state=init_state,
                  fresh_state=fresh_state,
                  decode=decode, max_new_tokens=max_new_tokens)


def evaluate(setup: SFTSetup, params, split: str, limit: int = 0) -> dict[str, float]:
  """Greedy exact match on ``split`` (``limit`` rows; 0 = all)."""
  tc = setup.config.train
  return exact_match(setup.decode, params, setup.splits[split], setup.tokenizer,
                     batch_size=tc.eval_batch_size, buckets=setup.config.data.length_buckets,
                     limit=limit)


def new_run_dir(config: Config, run_dir: str | None = None) -> str:
  """Creates the run directory, refusing one that already holds a run.

  The config itself is written by :func:`train` once setup has succeeded, so a run that fails
  validation leaves no half-made run behind.
  """
  if run_dir is None:
    # Every process of a multi-process run must name the same directory: process 0's clock.
    from jaxrl_llm.parallel.distributed import broadcast_int

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(broadcast_int(int(time.time()))))
    name = config.logging.run_name or f"{config.experiment}-{stamp}"
    run_dir = os.path.join(config.logging.runs_root, name)
  if os.path.exists(os.path.join(run_dir, "config.json")):
    raise FileExistsError(f"{run_dir} already holds a run; use `jaxrl-llm resume {run_dir}` "
                          "or choose another --run-dir")
  os.makedirs(run_dir, exist_ok=True)
  return run_dir


def train(config: Config, run_dir: str, *, resume: bool = False, devices=None,
          stop_after: int | None = None, final_eval: bool = True) -> dict[str, Any]:
  """Runs (or resumes) SFT in ``run_dir``; returns the final metrics.

  Args:
    resume: continue from the newest complete checkpoint in ``run_dir`` (fresh start if none).
    stop_after: stop after this global step (tests); checkpoints are still written on schedule.
    final_eval: evaluate the test split after the last step (the RL warm start skips it: the RL
      loop measures its own starting point).
  """
  config = shrink_for_tests(config)
  setup = build(config, run_dir, devices=devices)
  if not resume:
    save_json(config, os.path.join(run_dir, "config.json"))
  tc, lc = config.train, config.logging
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=tc.keep_checkpoints,
                      async_save=tc.async_checkpointing)
  cadence = CheckpointCadence(tc.checkpoint_every, tc.checkpoint_minutes)
  start_step, position = 0, 0
  latest = ckpt.latest_step() if resume else None
  if latest is not None:
    abstract = abstract_with_shardings(jax.eval_shape(setup.fresh_state), setup.state_shardings)
    state, extra = ckpt.restore(latest, abstract)
    start_step, position = int(extra["step"]), int(extra["data_position"])
  else:  # Fresh start (also a resume that finds no complete checkpoint yet).
    state = setup.init_state()
  writer = MetricsWriter(run_dir, tensorboard=lc.tensorboard,
                         resume_step=start_step if latest is not None else None)
  progress = Progress(tc.steps, start_step, mode=lc.progress, log_every=lc.log_every)
  if latest is not None:
    progress.message(f"resumed from step {start_step} of {tc.steps}")
  data_stats = {}
  for split in setup.splits.values():
    data_stats.update(split.stats.as_metrics(split.name))
  if start_step == 0:
    progress.message(f"run dir: {run_dir}")
    progress.message(write_data_report(run_dir, setup.splits, setup.config.data.length_buckets))
  if start_step >= tc.steps:
    progress.message(f"{run_dir} is already complete ({start_step}/{tc.steps} steps)")
  last = stop_after if stop_after is not None else tc.steps
  metrics_host: dict[str, Any] = {}
  t_last = time.perf_counter()
  for step in range(start_step, min(last, tc.steps)):
    host_batch, position = setup.batcher.batch(position)
    state, metrics = setup.update(state, setup.put_train_batch(host_batch))
    metrics_host = {k: float(v) for k, v in device_get(metrics).items()}
    now = time.perf_counter()
    tokens = int(host_batch["attention_mask"].sum())
    tokens_per_s = tokens / max(now - t_last, 1e-9)
    t_last = now
    done = step + 1
    line = dict(metrics_host)
    if done == 1 or done == tc.steps:
      line.update({k: v for k, v in data_stats.items()})
    if tc.eval_every and (done % tc.eval_every == 0 or done == tc.steps) and "validation" in setup.splits:
      ev = evaluate(setup, state.params, "validation", tc.eval_examples)
      line["eval/exact_match"] = ev["exact_match"]
      progress.message(f"step {done}: validation exact match {ev['exact_match']:.3f} "
                       f"({ev['examples']} examples)")
    final = done == tc.steps
    if final and final_eval and "test" in setup.splits:
      ev = evaluate(setup, state.params, "test", tc.test_examples)
      line["test/exact_match"] = ev["exact_match"]
      line["test/examples"] = ev["examples"]
    writer.write(done, line, extra_tb={"perf/tokens_per_s": tokens_per_s})
    progress.update(done, metrics_host["train/loss"], tokens_per_s)
    if cadence.due(done, final):
      ckpt.save(done, state, {"step": done, "data_position": position},
                force=final or cadence.preempted)
    cadence.stop_if_preempted(done, final, ckpt, writer, progress)
    if final:
      _finish(run_dir, line, progress)
  cadence.close()
  ckpt.close()
  writer.close()
  progress.close()
  return {"state": state, "metrics": metrics_host, "run_dir": run_dir}


def _finish(run_dir: str, line: dict, progress: Progress) -> None:
  result = {k: v for k, v in line.items() if k.startswith("test/")}
  from jaxrl_llm.train.plotting import write_results

  write_results(run_dir, result, progress)
  if "test/exact_match" in result:
    progress.message(f"held-out test exact match: {result['test/exact_match']:.4f} "
                     f"({result['test/examples']} examples)")


def param_optimizer(tx, config: Config, model_config):
  """The optimizer around ``tx`` that a loop's params get: with LoRA (``model.lora.rank > 0``)
  only the adapters train (:func:`jaxrl_llm.models.lora.adapters_only`, float32 adapters, no state
  for the base); otherwise every param, masked by ``train.update_mask`` and with a float32 master
  copy when ``model.param_dtype`` is narrower."""
  if model_config.lora.rank:
    if config.train.update_mask:
      raise ConfigError("config field 'train.update_mask': subnetwork-only training and LoRA "
                        "(model.lora.rank) cannot be combined; set one of them")
    from jaxrl_llm.models import lora
    from jaxrl_llm.models.init import abstract_params

    return lora.adapters_only(tx, abstract_params(model_config))
  return with_master_weights(subnetwork_only(tx, config), model_config.param_dtype)


def lora_not_supported(model_config, what: str) -> None:
  """A ConfigError naming ``model.lora.rank`` for the loops LoRA does not cover yet."""
  if model_config.lora.rank:
    raise ConfigError(f"config field 'model.lora.rank': LoRA covers SFT, DPO and the "
                      f"policy-gradient family (GRPO, Dr. GRPO, DAPO, RLOO, ...) so far, not "
                      f"{what}; set model.lora.rank=0")


def starting_policy(config: Config, run_dir: str, model_config, mesh, *, devices=None):
  """The policy params a run starts from: its SFT warm start (``init.sft_steps``, trained or
  restored in ``RUN_DIR/sft``), another run's policy (``init.policy_run``, LoRA merged), a Hugging
  Face checkpoint (``init.hf_checkpoint``) or a fresh seeded init; with ``model.lora`` adapters
  added (:func:`with_adapters`). Not yet placed on the mesh (callers put it in their layout)."""
  ic = config.init
  if ic.sft_steps:
    params = warm_start(config, run_dir, devices=devices)
  elif ic.policy_run:
    from jaxrl_llm.rundir.artifacts import load_run

    params = load_run(ic.policy_run).policy_params(config.model.param_dtype)
  elif ic.hf_checkpoint:
    from jaxrl_llm.models.hf import load_hf

    params, _ = load_hf(ic.hf_checkpoint, mesh=mesh, param_dtype=config.model.param_dtype,
                        dtype=config.model.dtype)
  else:
    params, _ = init_params(model_config, rng_lib.purpose_key(config.seed, "init"), mesh)
  return with_adapters(params, model_config, rng_lib.purpose_key(config.seed, "lora"))


def with_adapters(params, model_config, key):
  """A base tree from any source (fresh, warm start, another run, a HF checkpoint) with adapters
  added for ``model.lora`` (unchanged when it has them or LoRA is off)."""
  if not model_config.lora.rank:
    return params
  from jaxrl_llm.models import lora

  return lora.add_adapters(params, model_config, key)


def subnetwork_only(tx, config: Config):
  """``tx`` followed by :func:`jaxrl_llm.analysis.sparsity.masked_updates` of the changed set of
  ``train.update_mask`` (a finished run), or ``tx`` itself when none is named."""
  run = config.train.update_mask
  if not run:
    return tx
  import optax

  from jaxrl_llm.analysis.sparsity import masked_updates, update_mask

  try:
    mask = update_mask(run)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f"config field 'train.update_mask': {e}") from None
  return optax.chain(tx, masked_updates(mask))


def warm_start_config(config: Config) -> Config:
  """The SFT run that warm-starts ``config``'s policy (``init.sft_*``; same model, data, seed).

  Preference data (``data.preference_kind``) is swapped for the task's demonstrations; preference
  pairs from JSONL (e.g. ``jaxrl-llm label``'s output) use the synthetic task's generated
  demonstrations, and a ConfigError for tasks that have none.
  """
  ic = config.init
  data = dataclasses.replace(config.data, preference_kind="", step_labels="")
  if config.data.preference_kind and config.data.source == "jsonl":
    # Preference pairs are not demonstrations: a synthetic task has its own (generated locally);
    # for anything else the user must start from a policy.
    if config.data.task in ("arithmetic", "custom", "math") or ":" in config.data.task:
      raise ConfigError(
          "config field 'init.sft_steps': the SFT warm start needs demonstrations, but "
          "data.jsonl_dir holds preference pairs; set init.sft_steps=0 and init.policy_run=RUN "
          "(a trained policy run) or init.hf_checkpoint=DIR")
    data = dataclasses.replace(data, source="tfds", jsonl_dir="")
  # The warm start trains every parameter: with LoRA it makes the frozen base (and reference).
  warm = dataclasses.replace(
      config, experiment=f"{config.experiment}-sft",
      model=dataclasses.replace(config.model, lora=dataclasses.replace(config.model.lora, rank=0)),
      algorithm=AlgorithmConfig(name="sft"),
      init=dataclasses.replace(ic, sft_steps=0, sft_overrides=()),
      data=data,
      optimizer=dataclasses.replace(config.optimizer, learning_rate=ic.sft_learning_rate,
                                    warmup_steps=ic.sft_warmup_steps),
      train=dataclasses.replace(config.train, steps=ic.sft_steps, batch_size=ic.sft_batch_size,
                                grad_accum_steps=1, eval_every=0,
                                checkpoint_every=max(ic.sft_steps // 2, 1), keep_checkpoints=1))
  if ic.sft_overrides:
    from jaxrl_llm.config import apply_overrides

    try:
      warm = apply_overrides(warm, ic.sft_overrides)
    except ConfigError as e:
      raise ConfigError(f"config field 'init.sft_overrides': {e}") from None
  return warm


def warm_start(config: Config, run_dir: str, *, devices=None):
  """Runs (or restores, when finished) the SFT warm start of ``config`` in ``RUN_DIR/sft``;
  returns its final policy params. Used by the RL and preference loops (``init.sft_steps``)."""
  sft_dir = os.path.join(run_dir, "sft")
  os.makedirs(sft_dir, exist_ok=True)
  sft_config = warm_start_config(config)
  if not os.path.exists(os.path.join(sft_dir, "config.json")):
    save_json(sft_config, os.path.join(sft_dir, "config.json"))
  return train(sft_config, sft_dir, resume=True, devices=devices, final_eval=False)["state"].params


def resume(run_dir: str, **kwargs) -> dict[str, Any]:
  """Continues the run in ``run_dir`` from its newest complete checkpoint."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory?")
  return train(load_json(path), run_dir, resume=True, **kwargs)
