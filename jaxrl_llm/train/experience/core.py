"""Composition of the rollout stage: rounds of sources → scoring → baseline → filters.

Host code. A *rows* dict is one round's (or one step's) rows as numpy arrays: ``prompt_width``
(int ``W``), ``tokens int32[n, W+T]``, ``prompt_mask`` / ``response_mask`` bool ``[n, W+T]``,
``sampler_logp`` / ``behaviour_logp`` float32 ``[n, T]``, ``lengths int32[n]``, ``finished
bool[n]``, ``group_ids int32[n]`` (the round's prompt 0..B−1), ``prompt_index int64[n]`` (the
row of the training split), ``is_demonstration bool[n]``, ``off_policy bool[n, T]``; after
scoring also ``scores`` / ``accuracy`` float32 ``[n]`` (NaN = unscorable), ``reward/<name>`` and
``baseline_scores``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.config import ConfigError
from jaxrl_llm.rewards import overlong_penalty
from jaxrl_llm.rollout.sampler import pad_prompts
from jaxrl_llm.train.evaluate import decode_texts


@dataclasses.dataclass(frozen=True)
class Round:
  """One generation round: the prompts every source of the round answers.

  Attributes:
    step: the RL step; index: the round within the step (0, 1, ... under dynamic sampling).
    indices: int ``[B]`` rows of the training split; start: the prompt iterator's position of
      the first of them (a demonstration source derives which trace to show from it).
    prompts: int32 ``[B, W]`` left-padded; lengths: int32 ``[B]``; key: this round's PRNG key.
  """

  step: int
  index: int
  indices: np.ndarray
  start: int
  prompts: np.ndarray
  lengths: np.ndarray
  key: jax.Array

  @property
  def width(self) -> int:
    return int(self.prompts.shape[1])

  @property
  def num_groups(self) -> int:
    return int(self.prompts.shape[0])


def resolve(kind: str, names, registry: dict[str, Callable]) -> list[tuple[str, Callable]]:
  """``(name, function)`` for each configured name: a built-in (``registry``) or an import path
  ``"package.module:function"``. Raises ConfigError naming ``rollout.<kind>``."""
  from jaxrl_llm.imports import import_callable, is_import_path

  out = []
  for name in names:
    if name in registry:
      out.append((name, registry[name]))
    elif is_import_path(name):
      try:
        out.append((name, import_callable(name, f"a rollout {kind[:-1]}")))
      except ImportError as e:
        raise ConfigError(f"config field 'rollout.{kind}': {e}") from None
    else:
      raise ConfigError(f"config field 'rollout.{kind}': unknown {kind[:-1]} {name!r}; known: "
                        f"{sorted(registry)}, or an import path 'mypkg.module:function'")
  return out


def left_pad(rows: dict, width: int, pad_id: int) -> dict:
  """Left-pads the prompt region of ``rows`` to ``width`` prompt columns."""
  extra = width - rows["prompt_width"]
  if extra == 0:
    return rows
  n = rows["tokens"].shape[0]
  out = dict(rows, prompt_width=width)
  out["tokens"] = np.concatenate([np.full((n, extra), pad_id, np.int32), rows["tokens"]], 1)
  for k in ("prompt_mask", "response_mask"):
    out[k] = np.concatenate([np.zeros((n, extra), bool), rows[k]], 1)
  return out


def concat_rows(parts: list[dict], pad_id: int) -> dict:
  """Rows of several parts as one rows dict (prompt regions padded to the widest)."""
  width = max(p["prompt_width"] for p in parts)
  parts = [left_pad(p, width, pad_id) for p in parts]
  out = {"prompt_width": width}
  for k in parts[0]:
    if k != "prompt_width":
      out[k] = np.concatenate([p[k] for p in parts], 0)
  return out


def score_rows(setup, rows: dict, info: dict) -> dict:
  """``rows`` with ``scores``, ``accuracy`` and ``reward/<name>`` from the run's guarded reward
  runner (plus DAPO's overlong shaping when configured)."""
  cfg = setup.config
  rc, ac = cfg.rollout, cfg.algorithm
  tok = setup.tokenizer
  width = rows["prompt_width"]
  idx = rows["prompt_index"]
  completions = decode_texts(tok, rows["tokens"][:, width:], tok.eos_token_id)
  prompt_text = [setup.prompt_texts[i] for i in idx]
  result = setup.rewards(prompt_text, completions, setup.splits["train"].row_columns(idx))
  add_counts(info["reward_counts"], result.counts)
  scores = result.total.copy()
  per_fn = dict(result.per_function)
  if ac.overlong_buffer:
    pen = overlong_penalty(rows["lengths"], max_length=rc.max_new_tokens,
                           buffer=ac.overlong_buffer, factor=ac.overlong_penalty)
    per_fn["overlong"] = pen
    scores = scores + pen
  accuracy = per_fn[cfg.reward.accuracy] if cfg.reward.accuracy else np.full_like(scores, np.nan)
  out = dict(rows, scores=scores.astype(np.float32), accuracy=accuracy.astype(np.float32))
  for name, values in per_fn.items():
    out[f"reward/{name}"] = values.astype(np.float32)
  return out


def add_counts(total: dict, counts: dict) -> None:
  for name, c in counts.items():
    slot = total.setdefault(name, {"errors": 0, "nonfinite": 0, "timeouts": 0})
    for k, v in c.items():
      slot[k] += int(v)


def _select_groups(rows: dict, keep: list[int], offset: int) -> dict:
  """The rows of groups ``keep`` (in that order), group ids renumbered from ``offset``."""
  sel = np.concatenate([np.nonzero(rows["group_ids"] == gi)[0] for gi in keep])
  part = {k: (v if k == "prompt_width" else v[sel]) for k, v in rows.items()}
  remap = {gi: offset + j for j, gi in enumerate(keep)}
  part["group_ids"] = np.asarray([remap[x] for x in part["group_ids"]], np.int32)
  return part


def collect(setup, params, step: int, position: int):
  """Generates, scores and filters one step's batch.

  Returns:
    (host rows dict with ``trainable bool[N]``, next prompt position, info dict (reward failure
    counts, ``generated_groups``, ``dropped_groups``, ``gen_rounds``, ``short_groups``), timings
    ``{"generate", "reward"}`` in seconds).
  """
  from jaxrl_llm.train.experience.filters import Keep
  from jaxrl_llm.train.experience.sources import baseline_for

  cfg = setup.config
  rc, ac = cfg.rollout, cfg.algorithm
  tok = setup.tokenizer
  want = rc.prompts_per_step
  per_round = rc.gen_prompts or want
  split = setup.splits["train"]
  base_key = rng_lib.step_key(rng_lib.purpose_key(cfg.seed, "sampling"), step)
  sources, filters = setup.experience
  baseline = baseline_for(cfg)
  kept: list[dict] = []
  n_kept = 0
  rounds = 0
  info: dict[str, Any] = {"reward_counts": {}, "dropped_groups": 0, "generated_groups": 0}
  times = {"generate": 0.0, "reward": 0.0}
  rows = None
  while n_kept < want:
    if rounds >= ac.max_gen_rounds:
      if ac.on_exhausted == "raise":
        raise RuntimeError(
            f"dynamic sampling: only {n_kept} of {want} groups passed the filters "
            f"{[n for n, _ in filters]} after algorithm.max_gen_rounds={ac.max_gen_rounds} "
            f"generation rounds at step {step}; raise max_gen_rounds, or set "
            "algorithm.on_exhausted='train'")
      break
    start = position
    idx, position = setup.prompts.indices(position, per_round)
    prompts, lengths = pad_prompts([split.prompts[i] for i in idx], cfg.data.length_buckets,
                                   tok.pad_token_id)
    rnd = Round(step=step, index=rounds, indices=np.asarray(idx), start=start, prompts=prompts,
                lengths=lengths, key=jax.random.fold_in(base_key, rounds))
    t0 = time.perf_counter()
    parts = [fn(setup, params, rnd) for _, fn in sources]
    rows = concat_rows(parts, tok.pad_token_id) if len(parts) > 1 else parts[0]
    times["generate"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = score_rows(setup, rows, info)
    times["reward"] += time.perf_counter() - t0
    if baseline is not None:
      base, t_gen, t_rew = baseline(setup, params, rnd, info)
      rows["baseline_scores"] = base[rows["group_ids"]].astype(np.float32)
      times["generate"] += t_gen
      times["reward"] += t_rew
    else:
      rows["baseline_scores"] = np.zeros_like(rows["scores"])
    rounds += 1
    info["generated_groups"] += per_round
    keep_groups = np.ones(per_round, bool)
    rows["trainable"] = np.ones(len(rows["scores"]), bool)
    for _, fn in filters:
      verdict: Keep = fn(setup, rows, per_round)
      if verdict.groups is not None:
        keep_groups &= verdict.groups
      if verdict.rows is not None:
        # A row a filter drops stays in the batch (static shapes) but trains on nothing and is
        # left out of its group's statistics.
        rows["trainable"] &= verdict.rows
        rows["scores"] = np.where(verdict.rows, rows["scores"], np.nan).astype(np.float32)
    info["dropped_groups"] += int(per_round - keep_groups.sum())
    keep = [int(g) for g in np.nonzero(keep_groups)[0]][:want - n_kept]
    if keep:
      kept.append(_select_groups(rows, keep, n_kept))
      n_kept += len(keep)
  if n_kept < want:  # on_exhausted == "train": fill with untrainable copies (static shapes).
    filler = dict(kept[-1] if kept else rows)
    per_group = len(filler["tokens"]) // max(len(np.unique(filler["group_ids"])), 1)
    need = (want - n_kept) * per_group
    reps = -(-need // len(filler["tokens"]))
    fill = {k: (v if k == "prompt_width" else np.concatenate([v] * reps)[:need])
            for k, v in filler.items()}
    fill["group_ids"] = np.repeat(np.arange(n_kept, want, dtype=np.int32), per_group)
    fill["trainable"] = np.zeros(need, bool)
    kept.append(fill)
  info["gen_rounds"] = rounds
  info["short_groups"] = want - n_kept
  return concat_rows(kept, tok.pad_token_id), position, info, times
