"""A trained reward model as a reward function (RLHF's third stage scores with it).

:class:`RewardModelFunction` loads a reward-model run directory (``jaxrl-llm run`` with
``algorithm.name='reward_model'``), tokenises ``prompt ⊕ completion`` exactly as the reward model
was trained (``BOS prompt response EOS``), scores fixed-shape batches with one jitted function
(one compilation per length bucket) and optionally normalises the scores by the mean and standard
deviation the reward model produced on its own training data (``reward_model.json`` in the run
directory): Bradley–Terry rewards are only defined up to a shift, so centring them before RL keeps
the advantage scale independent of where training happened to leave the bias (docs/algorithms.md §17).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.pipeline import pick_bucket
from jaxrl_llm.models import heads
from jaxrl_llm.parallel.distributed import device_get

STATS_FILE = "reward_model.json"


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], max_len: int
                 ) -> list[list[int]]:
  """``BOS prompt completion EOS`` token ids per row (BOS only when the tokenizer has one).

  Longer sequences keep their last ``max_len`` tokens (the score is read at EOS, so the end
  matters most; the prompt loses its oldest tokens first).
  """
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
  c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"] if prompts else []
  head = [] if bos is None else [bos]
  out = []
  for p, c in zip(p_ids, c_ids):
    seq = head + list(p) + list(c) + [eos]
    out.append(seq[-max_len:])
  return out


class RewardModelFunction:
  """``fn(prompts, completions, **_) -> float32[B]``: a reward-model run's scores.

  Args:
    run_dir: the reward model's run directory.
    normalize: subtract the training-score mean and divide by its std (``reward_model.json``).
    batch_size: rows per jitted call (the last call is padded; shapes stay static).
  """

  def __init__(self, run_dir: str, *, normalize: bool = True, batch_size: int = 64):
    from jaxrl_llm.rundir.artifacts import load_run

    art = load_run(run_dir)
    if art.config.algorithm.name != "reward_model":
      raise ValueError(f"reward.model_run: {run_dir!r} is a {art.config.algorithm.name!r} run, "
                       "not a reward model")
    self.run_dir = run_dir
    self.tokenizer = art.tokenizer
    self.params = jax.device_put(art.head_params())
    self.buckets = tuple(art.config.data.length_buckets)
    self.batch_size = batch_size
    self.mean, self.std = 0.0, 1.0
    if normalize:
      path = os.path.join(run_dir, STATS_FILE)
      if not os.path.exists(path):
        raise FileNotFoundError(f"reward.model_run: {path} is missing (written when the reward "
                                "model finishes); set reward.model_normalize=false to use raw "
                                "scores")
      with open(path) as f:
        stats = json.load(f)
      self.mean, self.std = float(stats["score_mean"]), max(float(stats["score_std"]), 1e-6)
    model_config = art.model_config
    self._score = jax.jit(lambda p, t, m: heads.last_token_rewards(p, model_config, t, m))

  def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> np.ndarray:
    """Scores a batch. Returns float32 ``[B]``."""
    seqs = encode_pairs(self.tokenizer, prompts, completions, self.buckets[-1])
    out = np.zeros((len(seqs),), np.float32)
    pad = self.tokenizer.pad_token_id or 0
    for start in range(0, len(seqs), self.batch_size):
      chunk = seqs[start:start + self.batch_size]
      length = pick_bucket(max(len(s) for s in chunk), self.buckets)
      tokens = np.full((self.batch_size, length), pad, np.int32)
      mask = np.zeros((self.batch_size, length), bool)
      for r, s in enumerate(chunk):
        tokens[r, :len(s)] = s
        mask[r, :len(s)] = True
      mask[len(chunk):, 0] = True  # Filler rows: one token, discarded below.
      scores = np.asarray(self._score(self.params, jnp.asarray(tokens), jnp.asarray(mask)))
      out[start:start + len(chunk)] = scores[:len(chunk)]
    return ((out - self.mean) / self.std).astype(np.float32)


class StepRewardModelFunction:
  """``fn(prompts, completions, **_) -> float32[B]``: an outcome or process reward model's score
  of each solution, a probability in [0, 1] (docs/algorithms.md §18).

  A completion is cut into steps at the run's ``data.step_delimiter`` (empty pieces dropped) and
  encoded as the model was trained (``BOS prompt solution EOS``, step labels by character
  offsets). A PRM scores it by ``scoring`` over its steps' probabilities (``product``, ``min`` or
  ``last``; default: the run's ``rm_scoring``); an ORM by its final token. An empty completion
  scores 0. :meth:`steps` gives the per-step probabilities too.

  Args:
    run_dir: a ``reward_model`` run with ``rm_objective`` ``orm`` or ``prm``.
    batch_size: rows per jitted call (the last call is padded; shapes stay static).
  """

  def __init__(self, run_dir: str, *, scoring: str | None = None, batch_size: int = 64):
    from jaxrl_llm.algorithms import process_rm
    from jaxrl_llm.rundir.artifacts import load_run
    from jaxrl_llm.train.process_rm_loop import algo_config

    art = load_run(run_dir)
    a = art.config.algorithm
    if a.name != "reward_model" or a.rm_objective not in ("orm", "prm"):
      raise ValueError(f"{run_dir!r} is not an outcome / process reward model run "
                       f"(algorithm {a.name!r}, rm_objective {a.rm_objective!r})")
    self.run_dir, self.tokenizer = run_dir, art.tokenizer
    self.params = jax.device_put(art.head_params())
    dc = art.config.data
    self.delimiter, self.final_delimiter = dc.step_delimiter, dc.step_final_delimiter
    self.buckets = tuple(dc.length_buckets)
    self.batch_size = batch_size
    algo = algo_config(art.config)
    if scoring is not None:
      import dataclasses

      algo = dataclasses.replace(algo, scoring=scoring)
    self.algo = algo
    model_config = art.model_config
    self._score = jax.jit(lambda p, b: process_rm.scores(p, model_config, b, algo))

  def steps(self, prompts: list[str], completions: list[str]):
    """``(solution scores float32[B], per-row step probabilities (float32[S_i] each), per-row
    step end characters (int[S_i]: the index in the completion just past each step)``."""
    from jaxrl_llm.data.steps import StepSolution, encode_step_split, step_batch

    rows, where, ends = [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
      pieces, pos, row_ends = [], 0, []
      for part in c.split(self.delimiter):
        pos += len(part)
        if part.strip():
          pieces.append(part)
          row_ends.append(min(pos + len(self.delimiter), len(c)))
        pos += len(self.delimiter)
      ends.append(np.asarray(row_ends, np.int64))
      if pieces:
        rows.append(StepSolution(p, tuple(pieces), (None,) * len(pieces)))
        where.append(i)
    out = np.zeros(len(completions), np.float32)
    probs = [np.zeros(0, np.float32) for _ in completions]
    if rows:
      enc = encode_step_split(rows, self.tokenizer, split="scored", max_len=self.buckets[-1],
                              delimiter=self.delimiter, final_delimiter=self.final_delimiter)
      num_steps = enc.max_steps
      for start in range(0, len(rows), self.batch_size):
        idx = list(range(start, min(start + self.batch_size, len(rows))))
        n = len(idx)
        idx += [idx[-1]] * (self.batch_size - n)
        length = pick_bucket(max(enc.length(i) for i in idx), self.buckets)
        batch = step_batch(enc, idx, length, num_steps, self.tokenizer.pad_token_id)
        batch["valid"] = np.arange(self.batch_size) < n
        got = device_get(self._score(self.params, {k: jnp.asarray(v)
                                                       for k, v in batch.items()}))
        for r in range(n):
          i = where[idx[r]]
          out[i] = got["solution"][r]
          k = len(enc.positions[idx[r]])
          probs[i] = np.where(np.asarray(got["step_valid"])[r, :k],
                              np.asarray(got["steps"])[r, :k], np.nan).astype(np.float32)
    return out, probs, ends

  def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> np.ndarray:
    """Solution scores float32 ``[B]``."""
    return self.steps(prompts, completions)[0]


def reward_function(run_dir: str, *, normalize: bool = True):
  """The reward function of a learned-reward run: :class:`StepRewardModelFunction` for outcome /
  process reward models, :class:`RewardModelFunction` for the others."""
  from jaxrl_llm.config import load_json

  path = os.path.join(run_dir, "config.json")
  if os.path.exists(path) and load_json(path).algorithm.rm_objective in ("orm", "prm"):
    return StepRewardModelFunction(run_dir)
  return RewardModelFunction(run_dir, normalize=normalize)
