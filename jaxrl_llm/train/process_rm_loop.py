"""The host loop for outcome and process reward models (docs/algorithms.md §18).

``algorithm.name=reward_model`` with ``rm_objective=orm|prm`` on step-labelled solutions
(``data.preference_kind=steps``, ``data.source=jsonl``: ``DIR/{train,validation,test}.jsonl``
rows ``{"prompt", "steps", "labels", "outcome"?}``, e.g. written by ``jaxrl-llm label-steps``).
The model is a scalar head on the starting policy's trunk (``init.policy_run`` or the in-run SFT
warm start, as for the other reward models); batches are deterministic and resumable; held-out
evaluation reports

* ``step_accuracy`` / ``step_auc`` -- each labelled step's probability against its label
  (> 0.5 = right), the AUC threshold-free;
* ``outcome_accuracy`` / ``outcome_auc`` -- the solution score against the outcome;
* ``best_of_n`` -- for every prompt with several solutions, the outcome of the one the model
  scores highest (PRM: ``rm_scoring`` product / min / last step; ORM: the final probability),
  next to ``best_of_n_random`` (the mean outcome: what an uninformed pick gets) and
  ``best_of_n_oracle`` (some solution is right).

Run directory: config.json, tokenizer/, metrics.jsonl, checkpoints/, eval.json, plots/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.algorithms import process_rm
from jaxrl_llm.algorithms import reward_model as rm_lib
from jaxrl_llm.algorithms.common import (TrainState, make_optimizer, train_state_shardings,
                                         with_master_weights)
from jaxrl_llm.config import Config, ConfigError, save_json
from jaxrl_llm.config.io import shrink_for_tests
from jaxrl_llm.data import steps as steps_lib
from jaxrl_llm.data.pipeline import EpochOrder, bucket_cap, pick_bucket, resolve_buckets
from jaxrl_llm.models.init import abstract_params
from jaxrl_llm.parallel import make_mesh, replicated
from jaxrl_llm.rundir.checkpoint import CheckpointCadence, Checkpointer, abstract_with_shardings
from jaxrl_llm.train.tracking import MetricsWriter, Progress
from jaxrl_llm.parallel.distributed import device_get, is_primary


def auc(scores, labels) -> float:
  """Area under the ROC curve of ``scores`` for ``labels > 0.5``: the probability that a positive
  scores above a negative, ties counting ½ (Mann–Whitney). NaN when a class is absent."""
  s = np.asarray(scores, np.float64)
  y = np.asarray(labels) > 0.5
  pos, neg = int(y.sum()), int((~y).sum())
  if not pos or not neg:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  ranks = np.empty(len(s), np.float64)
  sorted_s = s[order]
  i = 0
  while i < len(s):  # average ranks over ties
    j = i
    while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
    i = j + 1
  return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def best_of_n(prompts, solution_scores, outcome) -> dict[str, float]:
  """Best-of-N over groups of solutions sharing a prompt (groups of ≥ 2 with known outcomes).

  Returns:
    ``best_of_n`` (mean outcome of each group's highest-scored solution; the first on ties),
    ``best_of_n_random`` (mean outcome), ``best_of_n_oracle`` (fraction of groups with a right
    solution), ``best_of_n_groups``.
  """
  groups: dict[str, list[int]] = {}
  for i, p in enumerate(prompts):
    if np.isfinite(outcome[i]):
      groups.setdefault(p, []).append(i)
  picked, mean, oracle = [], [], []
  for idx in groups.values():
    if len(idx) < 2:
      continue
    s = np.asarray(solution_scores)[idx]
    o = np.asarray(outcome)[idx]
    picked.append(o[int(np.argmax(s))])
    mean.append(o.mean())
    oracle.append(o.max())
  if not picked:
    return {"best_of_n_groups": 0.0}
  return {"best_of_n": float(np.mean(picked)), "best_of_n_random": float(np.mean(mean)),
          "best_of_n_oracle": float(np.mean(oracle)), "best_of_n_groups": float(len(picked))}


class StepBatcher(EpochOrder):
  """Deterministic, resumable batches of step-labelled solutions:
  ``batch(position) -> (host arrays, next position)``."""

  def __init__(self, split: steps_lib.EncodedStepSplit, *, batch_size: int, buckets, pad_id: int,
               data_key, shuffle: bool = True):
    self.split, self.batch_size, self.buckets = split, batch_size, tuple(buckets)
    self.pad_id, self.shuffle, self._data_key, self._perms = pad_id, shuffle, data_key, {}
    self.num_steps = split.max_steps

  @property
  def num_examples(self) -> int:
    return len(self.split)

  def batch(self, position: int):
    idx = self.indices(position)
    length = pick_bucket(max(self.split.length(i) for i in idx), self.buckets)
    out = steps_lib.step_batch(self.split, idx, length, self.num_steps, self.pad_id)
    out["valid"] = np.ones(len(idx), bool)
    return out, position + self.batch_size


def eval_batches(split: steps_lib.EncodedStepSplit, batch_size: int, buckets, pad_id: int,
                 num_steps: int, limit: int = 0):
  """Fixed-size batches over a split in order; filler rows (``valid`` false) pad the last."""
  n = len(split) if not limit else min(limit, len(split))
  for start in range(0, n, batch_size):
    idx = list(range(start, min(start + batch_size, n)))
    valid = np.zeros(batch_size, bool)
    valid[:len(idx)] = True
    idx += [idx[-1]] * (batch_size - len(idx))
    length = pick_bucket(max(split.length(i) for i in idx), buckets)
    out = steps_lib.step_batch(split, idx, length, num_steps, pad_id)
    out["valid"] = valid
    yield out


@dataclasses.dataclass
class StepRMSetup:
  """Everything an ORM / PRM run needs, built once from the config."""

  config: Config
  model_config: Any
  mesh: Any
  tokenizer: Any
  splits: dict
  batcher: StepBatcher
  algo: process_rm.Config
  tx: Any
  schedule: Any
  state_shardings: Any
  update: Any  # jitted (state, batch) -> (state, metrics); state donated
  score: Any  # jitted (params, batch) -> process_rm.scores dict
  make_state: Any
  num_steps: int = 1

  def put(self, batch: dict) -> dict:
    """Host arrays onto the mesh, rows over data x fsdp."""
    return {k: jax.device_put(np.asarray(v), NamedSharding(
        self.mesh, P(("data", "fsdp"), *([None] * (np.ndim(v) - 1))))) for k, v in batch.items()}


def algo_config(config: Config) -> process_rm.Config:
  a = config.algorithm
  return process_rm.Config(objective=a.rm_objective, orm_per_token=a.rm_orm_per_token,
                           hard_labels=a.rm_hard_labels, last_step_only=a.rm_last_step_only,
                           scoring=a.rm_scoring)


def _read_splits(config: Config) -> dict[str, tuple[list, int]]:
  dc = config.data
  out = {}
  for split in ("train", "validation", "test"):
    path = os.path.join(dc.jsonl_dir, f"{split}.jsonl")
    if os.path.exists(path):
      out[split] = steps_lib.read_step_jsonl(path, split, ratings=dc.step_ratings,
                                             neutral=dc.step_neutral, on_bad_row=dc.on_bad_row)
  if "train" not in out:
    raise ConfigError(f"config field 'data.jsonl_dir': {dc.jsonl_dir!r} has no train.jsonl")
  return out


def build(config: Config, run_dir: str, *, devices=None) -> StepRMSetup:
  """Builds data, mesh, model, optimizer and the jitted functions. Config errors surface here."""
  a, dc, tc = config.algorithm, config.data, config.train
  if a.name != "reward_model" or a.rm_objective not in ("orm", "prm"):
    raise ConfigError("config field 'algorithm.rm_objective': the step-level loop trains 'orm' or "
                      f"'prm' reward models, got {a.name!r} / {a.rm_objective!r}")
  if dc.preference_kind != "steps":
    raise ConfigError(f"config field 'data.preference_kind': {a.rm_objective!r} reward models "
                      f"train on 'steps' (step-labelled solutions), got {dc.preference_kind!r}")
  if tc.grad_accum_steps != 1:
    raise ConfigError("config field 'train.grad_accum_steps': ORM / PRM training takes one batch "
                      f"per step; set it to 1 (got {tc.grad_accum_steps})")
  mesh = make_mesh(config.mesh, devices)
  from jaxrl_llm.parallel import batch_size_multiple

  shards = batch_size_multiple(mesh)
  for field in ("batch_size", "eval_batch_size"):
    if getattr(tc, field) % shards:
      raise ConfigError(f"config field 'train.{field}': must be a multiple of the {shards} batch "
                        "shards (mesh data x fsdp)")
  from jaxrl_llm.rundir.artifacts import run_tokenizer

  tokenizer, model_config = run_tokenizer(config, run_dir)
  max_len = bucket_cap(config, model_config.max_seq_len)
  splits = {}
  for name, (rows, skipped) in _read_splits(config).items():
    if rows:
      splits[name] = steps_lib.encode_step_split(
          rows, tokenizer, split=name, max_len=max_len, delimiter=dc.step_delimiter,
          final_delimiter=dc.step_final_delimiter, on_bad_row=dc.on_bad_row, skipped=skipped)
  config = resolve_buckets(config, splits, max_len)
  num_steps = max(s.max_steps for s in splits.values())
  batcher = StepBatcher(splits["train"], batch_size=tc.batch_size,
                        buckets=config.data.length_buckets, pad_id=tokenizer.pad_token_id,
                        data_key=rng_lib.purpose_key(config.seed, "data"), shuffle=dc.shuffle)
  batcher.num_steps = num_steps
  algo = algo_config(config)
  tx, schedule = make_optimizer(config.optimizer, tc.steps)
  from jaxrl_llm.train.sft_loop import lora_not_supported

  lora_not_supported(model_config, "outcome / process reward models")
  tx = with_master_weights(tx, model_config.param_dtype)
  policy_abstract = abstract_params(model_config)
  abstract = jax.eval_shape(lambda p: rm_lib.init_params(p, model_config, jax.random.PRNGKey(0)),
                            policy_abstract)
  shardings = rm_lib.param_shardings(abstract, model_config, mesh)
  state_shardings = train_state_shardings(tx, abstract, shardings, mesh)
  dropout_key = rng_lib.purpose_key(config.seed, "dropout")
  make_state = jax.jit(lambda p: TrainState.create(p, tx, dropout_key),
                       out_shardings=state_shardings)
  update = jax.jit(process_rm.make_update(model_config, tx, schedule, algo),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))
  score = jax.jit(lambda params, batch: process_rm.scores(params, model_config, batch, algo))
  return StepRMSetup(config=config, model_config=model_config, mesh=mesh, tokenizer=tokenizer,
                     splits=splits, batcher=batcher, algo=algo, tx=tx, schedule=schedule,
                     state_shardings=state_shardings, update=update, score=score,
                     make_state=make_state, num_steps=num_steps)


def evaluate(setup: StepRMSetup, params, split: str, limit: int = 0) -> dict[str, float]:
  """Held-out step and outcome accuracy / AUC and best-of-N of ``split`` (see the module doc)."""
  data = setup.splits[split]
  tc = setup.config.train
  step_p, step_y, sol, outcome, prompts = [], [], [], [], []
  for host in eval_batches(data, tc.eval_batch_size, setup.config.data.length_buckets,
                           setup.tokenizer.pad_token_id, setup.num_steps, limit):
    out = device_get(setup.score(params, setup.put(host)))
    keep = host["valid"]
    labels = host["labels"][keep]
    ok = np.asarray(out["step_valid"])[keep] & np.isfinite(labels)
    step_p.append(np.asarray(out["steps"])[keep][ok])
    step_y.append(labels[ok])
    sol.append(np.asarray(out["solution"])[keep])
    outcome.append(host["outcome"][keep])
  n = sum(len(s) for s in sol)
  prompts = data.prompts[:n]
  step_p, step_y = np.concatenate(step_p), np.concatenate(step_y)
  sol, outcome = np.concatenate(sol), np.concatenate(outcome)
  metrics: dict[str, float] = {"examples": float(n)}
  if setup.algo.objective == "prm":
    metrics["steps"] = float(len(step_y))
  if len(step_y) and setup.algo.objective == "prm":  # an ORM has no step predictions
    metrics["step_accuracy"] = float(np.mean((step_p > 0.5) == (step_y > 0.5)))
    metrics["step_auc"] = auc(step_p, step_y)
  known = np.isfinite(outcome)
  if known.any():
    metrics["outcome_accuracy"] = float(np.mean((sol[known] > 0.5) == (outcome[known] > 0.5)))
    metrics["outcome_auc"] = auc(sol[known], outcome[known])
  metrics.update(best_of_n(prompts, sol, outcome))
  return metrics


def _start_params(config: Config, run_dir: str, setup: StepRMSetup, devices):
  """The reward model's first params: the starting policy's trunk and a fresh head."""
  from jaxrl_llm.train import sft_loop

  policy = sft_loop.starting_policy(config, run_dir, setup.model_config, setup.mesh,
                                    devices=devices)
  return rm_lib.init_params(policy, setup.model_config, rng_lib.purpose_key(config.seed, "init"))


def label_stage(config: Config, run_dir: str, *, devices=None) -> Config:
  """``data.step_labels``: the starting policy's solutions labelled in ``RUN_DIR/steps``
  (:func:`jaxrl_llm.train.label_steps.label_steps`; the SFT warm start first, when configured):
  ``data.step_prompts`` training prompts and ``train.eval_examples`` of each held-out split
  (0: all).
  A finished stage (``labels.json`` present) is only read back. Returns ``config`` reading those
  files."""
  dc, ic = config.data, config.init
  if not dc.step_labels:
    return config
  if ic.sft_steps:
    from jaxrl_llm.train import sft_loop

    sft_loop.warm_start(config, run_dir, devices=devices)
    policy_run = os.path.join(run_dir, "sft")
  elif ic.policy_run:
    policy_run = ic.policy_run
  else:
    raise ConfigError("config field 'data.step_labels': labelling needs a policy to write "
                      "solutions: set init.sft_steps or init.policy_run")
  steps_dir = os.path.join(run_dir, "steps")
  if not os.path.exists(os.path.join(steps_dir, "labels.json")):
    from jaxrl_llm.train.label_steps import label_steps

    label_steps(policy_run, steps_dir, method=dc.step_labels, samples=dc.step_samples,
                rollouts=dc.step_rollouts, prompts=dc.step_prompts,
                held_out_prompts=config.train.eval_examples,
                delimiter=dc.step_delimiter, seed=config.seed,
                progress=lambda *_: None)
  return dataclasses.replace(config, data=dataclasses.replace(
      dc, source="jsonl", jsonl_dir=steps_dir, step_labels=""))


def _write_data_report(run_dir: str, setup: StepRMSetup) -> None:
  """``RUN_DIR/data_report.json``: the length buckets used (``"auto"`` resolved, which readers
  such as :class:`jaxrl_llm.rewards.learned.StepRewardModelFunction` need) and per split the
  solutions, skipped rows and token lengths."""
  report: dict[str, Any] = {"length_buckets": list(setup.config.data.length_buckets)}
  for name, split in setup.splits.items():
    needed = np.asarray(split.needed)
    report[name] = {"rows": len(split), "bad_rows": split.skipped,
                    "steps": int(sum(len(p) for p in split.positions)),
                    "tokens_needed": {"p50": int(np.percentile(needed, 50)),
                                      "p99": int(np.percentile(needed, 99)),
                                      "max": int(needed.max())}}
  if is_primary():
    with open(os.path.join(run_dir, "data_report.json"), "w") as f:
      json.dump(report, f, indent=1)


def train(config: Config, run_dir: str, *, resume: bool = False, devices=None,
          stop_after: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) ORM / PRM training in ``run_dir``; returns the final state and metrics."""
  config = shrink_for_tests(config)
  os.makedirs(run_dir, exist_ok=True)
  if not resume:
    save_json(config, os.path.join(run_dir, "config.json"))
  config = label_stage(config, run_dir, devices=devices)
  setup = build(config, run_dir, devices=devices)
  tc, lc = config.train, config.logging
  start_params = _start_params(config, run_dir, setup, devices)
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
  del start_params
  writer = MetricsWriter(run_dir, tensorboard=lc.tensorboard,
                         resume_step=start if latest is not None else None)
  progress = Progress(tc.steps, start, mode=lc.progress, log_every=lc.log_every)
  if latest is not None:
    progress.message(f"resumed from step {start} of {tc.steps}")
  if start == 0:
    _write_data_report(run_dir, setup)
  if latest is None:
    sizes = ", ".join(f"{k} {len(v)} solutions" + (f" ({v.skipped} bad rows skipped)"
                                                   if v.skipped else "")
                      for k, v in setup.splits.items())
    progress.message(f"run dir: {run_dir}; {sizes}")
  last = stop_after if stop_after is not None else tc.steps
  line: dict[str, Any] = {}
  t_last = time.perf_counter()
  for step in range(start, min(last, tc.steps)):
    host, position = setup.batcher.batch(position)
    state, metrics = setup.update(state, setup.put(host))
    line = {k: float(v) for k, v in device_get(metrics).items()}
    now = time.perf_counter()
    rows_per_s = tc.batch_size / max(now - t_last, 1e-9)
    t_last = now
    done = step + 1
    final = done == tc.steps
    if tc.eval_every and (done % tc.eval_every == 0 or final) and "validation" in setup.splits:
      ev = evaluate(setup, state.params, "validation", tc.eval_examples)
      line.update({f"eval/{k}": v for k, v in ev.items()})
      key = "step_auc" if setup.algo.objective == "prm" else "outcome_auc"
      if key in ev:
        progress.message(f"step {done}: validation {key} {ev[key]:.3f}")
    if final and "test" in setup.splits:
      ev = evaluate(setup, state.params, "test", tc.test_examples)
      line.update({f"test/{k}": v for k, v in ev.items()})
    writer.write(done, line, extra_tb={"perf/rows_per_s": rows_per_s})
    progress.update(done, line["train/loss"], rows_per_s)
    if cadence.due(done, final):
      ckpt.save(done, state, {"step": done, "data_position": position},
                force=final or cadence.preempted)
    cadence.stop_if_preempted(done, final, ckpt, writer, progress)
    if final:
      result = {k: v for k, v in line.items() if k.startswith("test/")}
      from jaxrl_llm.train.plotting import write_results

      write_results(run_dir, result, progress)
      shown = {k: round(v, 4) for k, v in result.items()}
      progress.message(f"held-out results: {shown}")
  cadence.close()
  ckpt.close()
  writer.close()
  progress.close()
  return {"state": state, "metrics": line, "run_dir": run_dir, "setup": setup}


def resume(run_dir: str, **kwargs) -> dict[str, Any]:
  """Continues the ORM / PRM run in ``run_dir`` from its newest complete checkpoint."""
  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir} has no config.json; is it a run directory?")
  return train(load_json(path), run_dir, resume=True, **kwargs)


__all__ = ["StepBatcher", "StepRMSetup", "auc", "best_of_n", "build", "eval_batches",
           "evaluate", "resume", "train"]
