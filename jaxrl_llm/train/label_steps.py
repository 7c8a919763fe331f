"""Step labels for process reward models from a policy's own solutions (``jaxrl-llm label-steps``;
docs/algorithms.md §18).

For each prompt of a run's task the policy writes ``samples`` solutions (temperature 1), which are
cut into steps at the delimiter. Each step then gets a label:

* ``mc`` -- Math-Shepherd (Wang et al., arXiv:2312.08935): from the prefix that ends with step k,
  the policy writes ``rollouts`` completions; the soft label is the fraction whose final answer
  the run's verifier (``reward.accuracy``) accepts (the hard label, "some completion gets there",
  is ``label > 0``: ``algorithm.rm_hard_labels``). The last step's label is the solution's own
  verdict.
* ``exact`` -- the reasoning task's programmatic labels (``data.task=chain``,
  :func:`jaxrl_llm.data.steps.chain_step_labels`): a step is right when it and every step before
  it are.

Every row also carries the solution's ``outcome`` (the verifier on the whole solution), so the
same files train outcome reward models. Output: ``DIR/{train,validation,test}.jsonl`` of
``{"prompt", "steps", "labels", "outcome"}`` rows (the task's own splits, so held-out prompts stay
held out) and ``DIR/labels.json`` (counts, settings). Monte-Carlo verdicts are cached in
``DIR/step_cache.jsonl`` as they are computed -- keyed by prompt, prefix and settings -- so a killed
labelling run resumes where it stopped and a rerun with the same settings costs nothing.
Everything is a pure function of the seed: the same command writes the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from jaxrl_llm.data.steps import StepSolution, chain_step_labels
from jaxrl_llm.parallel.distributed import device_get

SPLITS = ("train", "validation", "test")


def _key(*parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


class _Cache:
  """Append-only JSONL of ``{"key", "value"}``; a torn last line (a kill mid-write) is ignored."""

  def __init__(self, path: str):
    self.path, self.data = path, {}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        for line in f:
          try:
            row = json.loads(line)
            self.data[row["key"]] = row["value"]
          except (json.JSONDecodeError, KeyError, TypeError):
            continue
    self.hits = 0

  def get(self, key: str):
    if key in self.data:
      self.hits += 1
      return self.data[key]
    return None

  def put_many(self, items: dict[str, Any]) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      for key, value in items.items():
        self.data[key] = value
        f.write(json.dumps({"key": key, "value": value}) + "\n")
      f.flush()
      os.fsync(f.fileno())


def _split_steps(text: str, delimiter: str) -> list[str]:
  return [s for s in text.split(delimiter) if s.strip()]


def policy_sampler(art, policy_run: str):
  """``(setup, params)``: the run's data, model, sampler and verifier as an RL setup (whatever the
  run trained: SFT, RL, ...; only its sampler, splits and rewards are used) and its newest
  policy params on the mesh."""
  from jaxrl_llm.config import AlgorithmConfig
  from jaxrl_llm.train import rl_loop

  config = art.config
  sampling_config = dataclasses.replace(
      rl_loop.staged_config(config, policy_run),
      algorithm=AlgorithmConfig(name="grpo", kl_coef=0.0),
      rollout=dataclasses.replace(config.rollout, prompts_per_step=8, samples_per_prompt=2,
                                  gen_prompts=0, sources=("policy",), filters=()),
      train=dataclasses.replace(config.train, eval_batch_size=8))
  scratch = tempfile.mkdtemp(prefix="jaxrl-sampler-")
  try:
    setup = rl_loop.build(sampling_config, scratch, model_config=art.model_config,
                          tokenizer=art.tokenizer)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return setup, jax.device_put(art.policy_params(), setup.state_shardings.params)


def label_steps(policy_run: str, out_dir: str, *, method: str = "mc", samples: int = 4,
                rollouts: int = 8, prompts: int = 0, delimiter: str = ";", seed: int = 0,
                batch_prompts: int = 16, splits=SPLITS, progress=print,
                held_out_prompts: int | None = None) -> dict[str, Any]:
  """Writes step-labelled solutions of ``policy_run``'s policy on its own task (module doc).

  Args:
    method: ``"mc"`` (Monte-Carlo completions) or ``"exact"`` (``data.task=chain`` only).
    samples: solutions per prompt; rollouts: completions per step prefix (``mc``).
    prompts: prompts per split (0 = all); held_out_prompts: for validation / test instead, when
      given (0 = all).
    delimiter: the step delimiter; solutions carry no delimiter after the last step (the
      policy's own format), so train with ``data.step_final_delimiter=false``.
  Returns:
    the stats written to ``labels.json``.
  """
  from jaxrl_llm.config import ConfigError
  from jaxrl_llm.rewards import RewardRunner
  from jaxrl_llm.rollout.sampler import pad_prompts
  from jaxrl_llm.rundir.artifacts import load_run
  from jaxrl_llm.train.evaluate import decode_texts

  if method not in ("mc", "exact"):
    raise ValueError(f"method must be 'mc' or 'exact', got {method!r}")
  if samples < 1 or rollouts < 1:
    raise ValueError("samples and rollouts must be >= 1")
  art = load_run(policy_run)
  config = art.config
  if method == "exact" and config.data.task != "chain":
    raise ValueError(f"exact step labels exist for the reasoning task (data.task=chain) only; "
                     f"{policy_run!r} trains {config.data.task!r}: use the mc method")
  name = config.reward.accuracy
  if not name:
    raise ConfigError(f"config field 'reward.accuracy' of {policy_run!r}: label-steps needs the "
                      "verifier that decides a final answer")
  os.makedirs(out_dir, exist_ok=True)
  setup, params = policy_sampler(art, policy_run)
  spec = next(s for s in setup.rewards.specs if s.name == name)
  runner = RewardRunner([spec], timeout_s=config.reward.timeout_s, on_error="exclude")
  tok, rc = setup.tokenizer, setup.config.rollout
  eos = tok.eos_token_id
  cache = _Cache(os.path.join(out_dir, "step_cache.jsonl"))
  settings = dict(method=method, samples=samples, rollouts=rollouts, delimiter=delimiter,
                  seed=seed, policy_step=art.step, max_new_tokens=rc.max_new_tokens)
  base_key = jax.random.key(seed)

  def generate(ids_list, k, key, budget):
    width = -(-max(len(x) for x in ids_list) // 16) * 16
    tokens, lengths = pad_prompts(ids_list, (width,), tok.pad_token_id)
    ro = device_get(setup.sampler.generate(
        params, tokens, lengths, sampling=setup.sampling, max_new_tokens=budget,
        stop_token_ids=[eos], rng=key, num_samples=k))
    return decode_texts(tok, device_get(ro.tokens)[:, width:], eos)

  def verdicts(prompt_texts, texts, columns) -> np.ndarray:
    out = runner(prompt_texts, texts, columns).per_function[name]
    return (np.nan_to_num(np.asarray(out, np.float64)) >= 1.0).astype(np.float64)

  stats: dict[str, Any] = {"settings": settings, "policy_run": os.path.abspath(policy_run),
                           "splits": {}}
  for split in splits:
    if split not in setup.splits:
      continue
    data = setup.splits[split]
    cap = prompts if split == "train" or held_out_prompts is None else held_out_prompts
    n = len(data) if not cap else min(cap, len(data))
    rows_out: list[dict] = []
    for start in range(0, n, batch_prompts):
      idx = list(range(start, min(start + batch_prompts, n)))
      prompt_ids = [list(np.asarray(data.prompts[i])) for i in idx]
      prompt_texts = tok.batch_decode([p for p in prompt_ids], skip_special_tokens=True)
      key = jax.random.fold_in(jax.random.fold_in(base_key, SPLITS.index(split)), start)
      sols = generate(prompt_ids, samples, key, rc.max_new_tokens)
      rows = np.repeat(np.asarray(idx), samples)
      ptexts = [prompt_texts[j // samples] for j in range(len(sols))]
      outcome = verdicts(ptexts, sols, data.row_columns(rows))
      pending = []  # (row j, step k, prefix text) needing Monte-Carlo labels
      labelled: list[list] = []
      for j, text in enumerate(sols):
        steps = _split_steps(text, delimiter)
        if method == "exact":
          sol = chain_step_labels(ptexts[j], delimiter.join(steps)) if steps else None
          labelled.append(list(sol.labels) if sol else [])
          continue
        labels: list = [None] * len(steps)
        if steps:
          labels[-1] = float(outcome[j])
        for k in range(len(steps) - 1):
          prefix = delimiter.join(steps[:k + 1]) + delimiter
          ck = _key(ptexts[j], prefix, settings)
          got = cache.get(ck)
          if got is None:
            pending.append((j, k, prefix, ck))
          else:
            labels[k] = got
        labelled.append(labels)
      for p0 in range(0, len(pending), batch_prompts):
        part = pending[p0:p0 + batch_prompts]
        ids = [prompt_ids[j // samples] + list(tok(prefix, add_special_tokens=False)["input_ids"])
               for j, _, prefix, _ in part]
        # Room for the rest of a solution: the generation budget less the shortest prefix,
        # rounded up to a multiple of 8 (few sampler compilations).
        shortest = min(len(x) - len(prompt_ids[j // samples]) for x, (j, _, _, _) in zip(ids, part))
        budget = -(-max(rc.max_new_tokens - shortest, 8) // 8) * 8
        ckey = jax.random.fold_in(key, 1 + p0)
        comps = generate(ids, rollouts, ckey, budget)
        full = [part[r // rollouts][2] + c for r, c in enumerate(comps)]
        who = [part[r // rollouts][0] for r in range(len(comps))]
        v = verdicts([ptexts[j] for j in who], full, data.row_columns(rows[who]))
        fresh = {}
        for q, (j, k, _, ck) in enumerate(part):
          frac = float(v[q * rollouts:(q + 1) * rollouts].mean())
          labelled[j][k] = frac
          fresh[ck] = frac
        cache.put_many(fresh)
      for j, text in enumerate(sols):
        steps = _split_steps(text, delimiter)
        if not steps:
          continue  # an empty solution has no step to label
        rows_out.append({"prompt": ptexts[j], "steps": steps, "labels": labelled[j],
                         "outcome": float(outcome[j])})
      progress(f"label-steps: {split} {min(start + batch_prompts, n)}/{n} prompts")
    path = os.path.join(out_dir, f"{split}.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      for row in rows_out:
        f.write(json.dumps(row) + "\n")
    os.replace(path + ".tmp", path)
    steps_n = sum(len(r["steps"]) for r in rows_out)
    stats["splits"][split] = {
        "prompts": n, "solutions": len(rows_out), "steps": steps_n,
        "outcome_mean": float(np.mean([r["outcome"] for r in rows_out])) if rows_out else 0.0,
        "step_label_mean": float(np.mean([x for r in rows_out for x in r["labels"]
                                          if x is not None])) if steps_n else 0.0}
  stats["cache_hits"] = cache.hits
  setup.rewards.close()
  with open(os.path.join(out_dir, "labels.json"), "w", encoding="utf-8") as f:
    json.dump(stats, f, indent=2, sort_keys=True)
  return stats


def as_solution(row: dict) -> StepSolution:
  """A written row back as a :class:`StepSolution`."""
  return StepSolution(row["prompt"], tuple(row["steps"]), tuple(row["labels"]), row["outcome"])


__all__ = ["as_solution", "label_steps", "policy_sampler"]
