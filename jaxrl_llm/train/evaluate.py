"""Greedy-decoding exact-match evaluation through the rollout engine's KV-cache sampler."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from jaxrl_llm.data.pipeline import EncodedSplit, prompt_batches
from jaxrl_llm.rollout import Sampler, SamplingConfig
from jaxrl_llm.parallel.distributed import device_get


def make_greedy_decode(model_config, *, max_new_tokens: int, eos_id: int, pad_id: int,
                       mesh=None, temperature: float = 0.0, key: jax.Array | None = None):
  """Builds ``decode(params, tokens int32[B, P], attention_mask bool[B, P]) -> int32[B, N]``.

  Prompts are left-padded. Row ``i`` of the result holds the greedy continuation (or, with
  ``temperature > 0``, a sample at that temperature drawn with the fixed ``key``, so evaluation
  stays deterministic), ``eos_id`` included, then ``pad_id``. One compilation per prompt width
  (:class:`Sampler`).
  """
  sampler = Sampler(model_config, pad_id=pad_id, mesh=mesh)
  sampling = (SamplingConfig(temperature=temperature) if temperature > 0
              else SamplingConfig(greedy=True))
  key = jax.random.PRNGKey(0) if key is None else key  # Unused by greedy decoding.

  def decode(params, tokens, attention_mask):
    lengths = np.asarray(attention_mask).sum(-1)
    rollout = sampler.generate(params, tokens, lengths, sampling=sampling,
                               max_new_tokens=max_new_tokens, stop_token_ids=[eos_id], rng=key)
    return rollout.tokens[:, tokens.shape[1]:]

  decode.sampler = sampler
  return decode


def decode_texts(tokenizer, generated: np.ndarray, eos_id: int) -> list[str]:
  """Host-side: token rows up to (excluding) EOS, decoded to text (``generated`` may be a device
  array, sharded over processes too)."""
  out = []
  for row in np.asarray(device_get(generated)):
    stop = np.nonzero(row == eos_id)[0]
    ids = row[: stop[0]] if len(stop) else row
    out.append(tokenizer.decode(ids.tolist(), skip_special_tokens=True))
  return out


def exact_match(decode_fn: Callable, params, split: EncodedSplit, tokenizer, *, batch_size: int,
                buckets, limit: int = 0) -> dict[str, float]:
  """Greedy exact-match accuracy of ``split`` (first ``limit`` rows; 0 = all).

  Args:
    decode_fn: from :func:`make_greedy_decode`.
  Returns:
    ``{"exact_match": float, "examples": int}``.
  """
  correct = total = 0
  for batch in prompt_batches(split, batch_size=batch_size, buckets=buckets,
                              pad_id=tokenizer.pad_token_id, limit=limit):
    # Host arrays: the sampler places them on the mesh itself (batch over data x fsdp).
    generated = device_get(decode_fn(params, batch["tokens"], batch["attention_mask"]))
    texts = decode_texts(tokenizer, generated, tokenizer.eos_token_id)
    for text, answer, valid in zip(texts, batch["answers"], batch["valid"]):
      if valid:
        correct += int(text.strip() == answer.strip())
        total += 1
  return {"exact_match": correct / max(total, 1), "examples": total}
