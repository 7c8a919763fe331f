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
