"""Sources: where a round's rows come from.

A source is ``fn(setup, params, rnd: Round) -> rows`` (see :mod:`jaxrl_llm.train.experience.core` for the rows layout):
rows for the round's prompts, ``group_ids`` 0..B−1 naming the prompt each row answers, with
response width ``T = rollout.max_new_tokens``. Built in:

* ``"policy"`` -- G = ``rollout.samples_per_prompt`` samples per prompt from the current policy
  (on-policy; the round's key).
* ``"demonstrations"`` -- ``rollout.demonstrations_per_prompt`` teacher traces per prompt (the
  split's ``demonstration`` field). With ``rollout.prefix_ratio_max < 1`` (LUFFY's prefix mode,
  docs/algorithms.md §12) each trace is cut to a random fraction in ``[prefix_ratio_min,
  prefix_ratio_max]`` of its tokens and the policy samples the rest: only the teacher's tokens
  are marked ``off_policy``. Which trace a prompt shows cycles with the number of times the
  prompt iterator has passed it, a function of the (checkpointed) prompt position, so a resumed
  run shows the same traces.

A *baseline* scores one extra answer per prompt without adding rows: ReMax's greedy rollout
(``baseline_for``) is chosen by the advantage estimator.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxrl_llm.config import ConfigError
from jaxrl_llm.rollout import SamplingConfig
from jaxrl_llm.rollout.sampler import pad_prompts
from jaxrl_llm.train.evaluate import decode_texts
from jaxrl_llm.parallel.distributed import device_get


def _rollout_rows(ro, group_ids, prompt_index) -> dict:
  n = len(group_ids)
  t = ro.sampler_logprobs.shape[1]
  return {
      "prompt_width": int(ro.tokens.shape[1] - t), "tokens": np.asarray(ro.tokens),
      "prompt_mask": np.asarray(ro.prompt_mask), "response_mask": np.asarray(ro.response_mask),
      "sampler_logp": np.asarray(ro.sampler_logprobs),
      "behaviour_logp": np.asarray(ro.sampler_logprobs_truncated),
      "lengths": np.asarray(ro.lengths), "finished": np.asarray(ro.finished),
      "group_ids": np.asarray(group_ids, np.int32),
      "prompt_index": np.asarray(prompt_index, np.int64),
      "is_demonstration": np.zeros(n, bool), "off_policy": np.zeros((n, t), bool),
  }


def policy_samples(setup, params, rnd) -> dict:
  """G on-policy samples per prompt (the sampler's group fan-out, rows ``b·G .. b·G + G − 1``)."""
  rc, tok = setup.config.rollout, setup.tokenizer
  g = rc.samples_per_prompt
  ro = setup.sampler.generate(params, rnd.prompts, rnd.lengths, sampling=setup.sampling,
                              max_new_tokens=rc.max_new_tokens,
                              stop_token_ids=[tok.eos_token_id], rng=rnd.key, num_samples=g)
  ro = device_get(ro)
  return _rollout_rows(ro, ro.group_ids, np.repeat(rnd.indices, g))


def _demo_tokens(setup, row: int, which: int) -> list[int]:
  cache = setup.demo_token_cache
  key = (row, which)
  if key not in cache:
    text = setup.splits["train"].demonstrations[row][which]
    tok = setup.tokenizer
    cache[key] = list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
  return cache[key]


def demonstrations(setup, params, rnd) -> dict:
  """``rollout.demonstrations_per_prompt`` teacher traces per prompt (whole, or a teacher prefix
  continued by the sampler). Traces longer than ``T`` are cut (``finished`` False)."""
  cfg = setup.config
  rc, tok = cfg.rollout, setup.tokenizer
  split = setup.splits["train"]
  if split.demonstrations is None:
    raise ConfigError("config field 'rollout.sources': 'demonstrations' needs training rows with "
                      "a 'demonstration' field (data.task='chain', or your JSONL's "
                      "'demonstration')")
  d, t, w = rc.demonstrations_per_prompt, rc.max_new_tokens, rnd.width
  n_rows = len(split)
  traces, groups, index = [], [], []
  for j, i in enumerate(rnd.indices):
    visit = (rnd.start + j) // n_rows  # how many times the iterator has passed this prompt
    available = len(split.demonstrations[i])
    for k in range(d):
      traces.append(_demo_tokens(setup, int(i), (visit * d + k) % available))
      groups.append(j)
      index.append(int(i))
  n = len(traces)
  groups = np.asarray(groups, np.int32)
  prompt_tokens = rnd.prompts[groups]
  prompt_lengths = rnd.lengths[groups]
  prompt_mask = np.arange(w)[None, :] >= (w - prompt_lengths)[:, None]
  resp = np.full((n, t), tok.pad_token_id, np.int32)
  resp_mask = np.zeros((n, t), bool)
  off = np.zeros((n, t), bool)
  sampler_logp = np.zeros((n, t), np.float32)
  lengths = np.zeros(n, np.int32)
  finished = np.zeros(n, bool)
  lo, hi = rc.prefix_ratio_min, rc.prefix_ratio_max
  if hi >= 1.0 and lo >= 1.0:  # whole traces
    for r, trace in enumerate(traces):
      k = min(len(trace), t)
      resp[r, :k] = trace[:k]
      resp_mask[r, :k] = off[r, :k] = True
      lengths[r], finished[r] = k, len(trace) <= t
  else:  # LUFFY's prefix mode: a teacher prefix, the policy's continuation.
    ratios = np.asarray(jax.random.uniform(jax.random.fold_in(rnd.key, 7919), (n,),
                                           minval=lo, maxval=hi))
    cut = [min(int(np.floor(ratio * (len(tr) - 1))), t - 1) for ratio, tr in zip(ratios, traces)]
    contexts = [np.concatenate([prompt_tokens[r, w - prompt_lengths[r]:],
                                np.asarray(traces[r][:cut[r]], np.int32)]) for r in range(n)]
    buckets = tuple(cfg.data.length_buckets) + (max(cfg.data.length_buckets) + t,)
    ctx_tokens, ctx_lengths = pad_prompts(contexts, buckets, tok.pad_token_id)
    ro = device_get(setup.sampler.generate(
        params, ctx_tokens, ctx_lengths, sampling=setup.sampling, max_new_tokens=t,
        stop_token_ids=[tok.eos_token_id], rng=jax.random.fold_in(rnd.key, 7907), num_samples=1))
    cw = ctx_tokens.shape[1]
    for r, trace in enumerate(traces):
      k = cut[r]
      resp[r, :k] = trace[:k]
      resp_mask[r, :k] = off[r, :k] = True
      rest = t - k
      cont = np.asarray(ro.response_mask[r, cw:cw + rest])
      resp[r, k:] = np.where(cont, ro.tokens[r, cw:cw + rest], tok.pad_token_id)
      resp_mask[r, k:] = cont
      sampler_logp[r, k:] = np.where(cont, ro.sampler_logprobs[r, :rest], 0.0)
      lengths[r] = k + int(cont.sum())
      finished[r] = bool(np.any(cont & (ro.tokens[r, cw:cw + rest] == tok.eos_token_id)))
  return {
      "prompt_width": w,
      "tokens": np.concatenate([prompt_tokens, resp], 1),
      "prompt_mask": np.concatenate([prompt_mask, np.zeros((n, t), bool)], 1),
      "response_mask": np.concatenate([np.zeros((n, w), bool), resp_mask], 1),
      "sampler_logp": sampler_logp, "behaviour_logp": sampler_logp.copy(),
      "lengths": lengths, "finished": finished, "group_ids": groups,
      "prompt_index": np.asarray(index, np.int64),
      "is_demonstration": np.ones(n, bool), "off_policy": off,
  }


def greedy_baseline(setup, params, rnd, info) -> tuple[np.ndarray, float, float]:
  """ReMax's baseline (docs/algorithms.md §7): the reward of one greedy answer per prompt.

  Returns:
    (float ``[B]`` baseline per group, generation seconds, reward seconds).
  """
  from jaxrl_llm.rewards import overlong_penalty
  from jaxrl_llm.train.experience.core import add_counts

  cfg = setup.config
  rc, ac, tok = cfg.rollout, cfg.algorithm, setup.tokenizer
  t0 = time.perf_counter()
  greedy = device_get(setup.sampler.generate(
      params, rnd.prompts, rnd.lengths, sampling=SamplingConfig(greedy=True),
      max_new_tokens=rc.max_new_tokens, stop_token_ids=[tok.eos_token_id], rng=rnd.key,
      num_samples=1))
  t_gen = time.perf_counter() - t0
  t0 = time.perf_counter()
  texts = decode_texts(tok, greedy.tokens[:, rnd.width:], tok.eos_token_id)
  res = setup.rewards([setup.prompt_texts[i] for i in rnd.indices], texts,
                      setup.splits["train"].row_columns(rnd.indices))
  add_counts(info["reward_counts"], res.counts)
  base = res.total
  if ac.overlong_buffer:
    base = base + overlong_penalty(greedy.lengths, max_length=rc.max_new_tokens,
                                   buffer=ac.overlong_buffer, factor=ac.overlong_penalty)
  return np.asarray(base), t_gen, time.perf_counter() - t0


SOURCES = {"policy": policy_samples, "demonstrations": demonstrations}


def baseline_for(config):
  """The baseline the advantage estimator needs (ReMax: the greedy rollout), or None."""
  return greedy_baseline if config.algorithm.resolved_advantage == "remax" else None
