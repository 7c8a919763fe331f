"""Rejection-sampling fine-tuning (RFT; ReST^EM when iterated): sample → verify → de-duplicate →
fine-tune (docs/algorithms.md §15).

Each round ``r``:

1. samples ``rollout.samples_per_prompt`` (K) answers for each of ``algorithm.rft_prompts``
   training prompts (all when 0) from the current policy (round 0: the warm start) with the
   rollout stage's ``"policy"`` source, at ``rollout.temperature``;
2. keeps the answers the ``reward.accuracy`` verifier accepts, de-duplicated per problem by
   ``algorithm.rft_dedup`` (``"steps"``: the list of equations, :func:`trace_steps` -- the
   paper's criterion; ``"text"``; ``"none"``) and capped at ``algorithm.rft_max_per_problem``;
3. fine-tunes with token-mean NLL on the accepted paths (∪ the warm start's SFT data when
   ``algorithm.rft_include_sft_data``), starting from the warm start every round
   (``algorithm.rft_restart``, ReST^EM) or from the previous round, for ``train.steps`` steps;
4. scores the result with the same greedy verifier on the validation and test splits.

Run directory: ``config.json``, ``sft/`` (the warm start), ``rounds/<r>/`` (``accepted.jsonl``,
``data/`` and the round's SFT run), ``metrics.jsonl`` (one line per round: acceptance rate,
distinct paths per problem, problems with an accepted path, accuracy), ``eval_before.json`` and
``eval.json``. Every round is resumable; a finished round is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from jaxrl_llm.config import AlgorithmConfig, Config, ConfigError, save_json
from jaxrl_llm.config.io import shrink_for_tests
from jaxrl_llm.data.pipeline import load_rows, sft_rows
from jaxrl_llm.data.reasoning import trace_steps
from jaxrl_llm.rollout.sampler import pad_prompts
from jaxrl_llm.rundir.artifacts import load_run
from jaxrl_llm.train import rl_loop, sft_loop
from jaxrl_llm.train.evaluate import decode_texts
from jaxrl_llm.train.tracking import MetricsWriter, Progress
from jaxrl_llm.parallel.distributed import barrier, device_get, is_primary


def path_key(text: str, mode: str) -> Any:
  """What makes two accepted paths the same under ``algorithm.rft_dedup``."""
  if mode == "steps":
    steps = trace_steps(text)
    return steps if steps else text.strip()
  if mode == "text":
    return text.strip()
  return None  # "none": every path is distinct


def select_paths(texts: list[str], accepted: np.ndarray, *, dedup: str, cap: int) -> list[str]:
  """The accepted ``texts`` of one problem, de-duplicated (first occurrence kept) and capped
  (``cap`` 0 = no cap)."""
  out, seen = [], set()
  for text, ok in zip(texts, accepted):
    if not ok:
      continue
    key = path_key(text, dedup)
    if key is not None:
      if key in seen:
        continue
      seen.add(key)
    out.append(text)
    if cap and len(out) >= cap:
      break
  return out


def _sampling_config(config: Config) -> Config:
  # The rollout stage and evaluation of the RL loop, built for sampling only.
  return dataclasses.replace(config, algorithm=AlgorithmConfig(name="grpo", kl_coef=0.0),
                             init=dataclasses.replace(config.init, sft_steps=0, policy_run="",
                                                      hf_checkpoint=""))


def _round_config(config: Config, round_dir: str, start_run: str) -> Config:
  data_dir = os.path.join(round_dir, "data")
  return dataclasses.replace(
      config, experiment=f"{config.experiment}-round",
      algorithm=AlgorithmConfig(name="sft", loss_aggregation="token-mean"),
      data=dataclasses.replace(config.data, task="custom", source="jsonl", jsonl_dir=data_dir,
                               prompt_template="", sft_target="answer", chain_level="easy"),
      init=dataclasses.replace(config.init, sft_steps=0, sft_overrides=(), policy_run=start_run,
                               hf_checkpoint=""),
      train=dataclasses.replace(config.train, eval_every=0))


def plain_rows(rows) -> list[dict]:
  """``{"prompt", "answer"}`` text rows (TFDS gives bytes) for the round's JSONL."""
  text = lambda v: bytes(v).decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)  # noqa: E731
  return [{"prompt": text(r["prompt"]), "answer": text(r["answer"])} for r in rows]


def _write_jsonl(path: str, rows: list[dict]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path if is_primary() else os.devnull, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
  barrier(f"wrote {path}")  # Every process reads it next.


def sample_round(setup, params, config: Config, round_index: int) -> tuple[list[dict], dict]:
  """Samples, verifies and selects one round's paths. Returns (accepted rows
  ``{"prompt", "answer"}``, statistics)."""
  ac, rc = config.algorithm, config.rollout
  tok, split = setup.tokenizer, setup.splits["train"]
  n = len(split) if not ac.rft_prompts else min(ac.rft_prompts, len(split))
  order = np.random.default_rng(config.seed + 7919 * round_index).permutation(len(split))[:n]
  k = rc.samples_per_prompt
  key = jax.random.fold_in(jax.random.key(config.seed), 1000 + round_index)
  batch = max(8, 256 // k // 8 * 8)  # prompts per sampler call (a multiple of the mesh's rows)
  rows, distinct, solved, sampled_ok = [], [], 0, 0
  for start in range(0, n, batch):
    real = order[start:start + batch]
    idx = np.concatenate([real, np.repeat(real[-1:], batch - len(real))])  # static shapes
    prompts, lengths = pad_prompts([split.prompts[i] for i in idx],
                                   setup.config.data.length_buckets, tok.pad_token_id)
    ro = device_get(setup.sampler.generate(
        params, prompts, lengths, sampling=setup.sampling, max_new_tokens=rc.max_new_tokens,
        stop_token_ids=[tok.eos_token_id], rng=jax.random.fold_in(key, start), num_samples=k))
    texts = decode_texts(tok, ro.tokens[:, prompts.shape[1]:], tok.eos_token_id)
    flat = np.repeat(real, k)
    texts = texts[:len(flat)]
    prompt_text = [setup.prompt_texts[i] for i in flat]
    result = setup.rewards(prompt_text, texts, split.row_columns(flat))
    verdict = np.nan_to_num(result.per_function[config.reward.accuracy], nan=0.0) >= 1.0
    sampled_ok += int(verdict.sum())
    for j, i in enumerate(real):
      paths = select_paths(texts[j * k:(j + 1) * k], verdict[j * k:(j + 1) * k],
                           dedup=ac.rft_dedup, cap=ac.rft_max_per_problem)
      if paths:
        solved += 1
        distinct.append(len(paths))
      rows.extend({"prompt": setup.prompt_texts[i], "answer": p} for p in paths)
  stats = {"rft/acceptance_rate": sampled_ok / max(n * k, 1),
           "rft/problems_solved_fraction": solved / max(n, 1),
           "rft/distinct_paths_per_problem": float(np.mean(distinct)) if distinct else 0.0,
           "rft/accepted_paths": float(len(rows)), "rft/prompts": float(n)}
  return rows, stats


def train(config: Config, run_dir: str, *, resume: bool = False, devices=None) -> dict[str, Any]:
  """Runs (or resumes) RFT in ``run_dir``; returns the final metrics."""
  config = shrink_for_tests(config)
  ac = config.algorithm
  sft_loop.lora_not_supported(config.model, "RFT / ReST-EM rounds")
  if not config.reward.accuracy:
    raise ConfigError("config field 'reward.accuracy': RFT keeps the paths this verifier accepts")
  if not (config.init.sft_steps or config.init.policy_run or config.init.hf_checkpoint):
    raise ConfigError("config field 'init.sft_steps': RFT samples from a trained policy; give a "
                      "warm start (init.sft_steps), init.policy_run or init.hf_checkpoint")
  os.makedirs(run_dir, exist_ok=True)
  setup = rl_loop.build(_sampling_config(config), run_dir, devices=devices)
  if not resume or not os.path.exists(os.path.join(run_dir, "config.json")):
    save_json(config, os.path.join(run_dir, "config.json"))
  if config.init.sft_steps:
    base = sft_loop.warm_start(config, run_dir, devices=devices)
    base_run = os.path.join(run_dir, "sft")
  elif config.init.policy_run:
    base_run = config.init.policy_run
    base = jax.device_put(load_run(base_run).policy_params(), setup.state_shardings.params)
  else:
    raise ConfigError("config field 'init.hf_checkpoint': RFT from a Hugging Face checkpoint is "
                      "not wired yet; start from init.policy_run or a warm start")
  lc = config.logging
  progress = Progress(ac.rft_rounds, 0, mode=lc.progress, log_every=1)
  # One line per round, rewritten from the rounds' saved statistics on resume.
  writer = MetricsWriter(run_dir, tensorboard=lc.tensorboard, resume_step=None)
  tc = config.train
  before_path = os.path.join(run_dir, "eval_before.json")
  if os.path.exists(before_path):
    with open(before_path) as f:
      before = json.load(f)["test/accuracy"]
  else:
    before = rl_loop.evaluate(setup, base, "test", tc.test_examples)["accuracy"]
    with open(before_path if is_primary() else os.devnull, "w") as f:
      json.dump({"test/accuracy": before}, f)
  progress.message(f"held-out test accuracy before RFT: {before:.4f}")
  original: list[dict] = []
  if ac.rft_include_sft_data:
    warm = sft_loop.warm_start_config(config) if config.init.sft_steps else config
    original = plain_rows(sft_rows(load_rows(warm.data, "train"), warm.data, "train"))
  params, prev_run, line = base, base_run, {}
  for r in range(ac.rft_rounds):
    round_dir = os.path.join(run_dir, "rounds", str(r))
    stats_path = os.path.join(round_dir, "round.json")
    if os.path.exists(stats_path):
      with open(stats_path) as f:
        stats = json.load(f)
    else:
      accepted, stats = sample_round(setup, params, config, r)
      _write_jsonl(os.path.join(round_dir, "accepted.jsonl"), accepted)
      data = original + accepted
      if not data:
        raise RuntimeError(f"RFT round {r}: no accepted path and no SFT data to train on")
      _write_jsonl(os.path.join(round_dir, "data", "train.jsonl"), data)
      # Small held-out files so that the SFT run holds nothing out of the training paths.
      for split in ("validation", "test"):
        _write_jsonl(os.path.join(round_dir, "data", f"{split}.jsonl"), data[:8])
      with open(stats_path if is_primary() else os.devnull, "w") as f:
        json.dump(stats, f)
    start = base_run if ac.rft_restart else prev_run
    sft_dir = os.path.join(round_dir, "sft")
    round_config = _round_config(config, round_dir, start)
    if not os.path.exists(os.path.join(sft_dir, "config.json")):
      os.makedirs(sft_dir, exist_ok=True)
      save_json(round_config, os.path.join(sft_dir, "config.json"))
    out = sft_loop.train(round_config, sft_dir, resume=True, devices=devices, final_eval=False)
    params = jax.device_put(out["state"].params, setup.state_shardings.params)
    prev_run = sft_dir
    line = dict(stats)
    line["eval/accuracy"] = rl_loop.evaluate(setup, params, "validation",
                                             tc.eval_examples)["accuracy"]
    line["test/accuracy"] = rl_loop.evaluate(setup, params, "test", tc.test_examples)["accuracy"]
    writer.write(r + 1, line)
    progress.message(f"round {r + 1}/{ac.rft_rounds}: accepted "
                     f"{stats['rft/acceptance_rate']:.3f} of samples, "
                     f"{stats['rft/problems_solved_fraction']:.3f} of problems, "
                     f"test accuracy {line['test/accuracy']:.4f}")
  writer.close()
  result = {"test/accuracy": line.get("test/accuracy", before), "test/accuracy_before": before,
            "test/improvement": line.get("test/accuracy", before) - before}
  with open(os.path.join(run_dir, "eval.json") if is_primary() else os.devnull, "w") as f:
    json.dump(result, f, indent=1)
  progress.message(f"held-out test accuracy after RFT: {result['test/accuracy']:.4f} "
                   f"(before: {before:.4f})")
  return {"metrics": line, "run_dir": run_dir, "params": params}


def resume(run_dir: str, **kwargs) -> dict[str, Any]:
  from jaxrl_llm.config import load_json

  return train(load_json(os.path.join(run_dir, "config.json")), run_dir, resume=True, **kwargs)
