"""Greedy-decoding exact-match evaluation.

A deliberately simple decoder: every step re-runs the full forward over a fixed-width buffer (no
KV cache) and appends the argmax token. Shapes are static, so it compiles once per prompt width.
The rollout issue replaces it with the KV-cache sampler.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.pipeline import EncodedSplit, prompt_batches


def make_greedy_decode(apply_fn: Callable, *, max_new_tokens: int, eos_id: int, pad_id: int):
  """Builds ``decode(params, tokens int32[B, P], attention_mask bool[B, P]) -> int32[B, N]``.

  Prompts are left-padded. Row ``i`` of the result holds the greedy continuation, ``eos_id``
  included, then ``pad_id`` once the row has finished.
  """

  def decode(params, tokens, attention_mask):
    b, p = tokens.shape
    buf = jnp.concatenate([tokens, jnp.full((b, max_new_tokens), pad_id, tokens.dtype)], axis=1)
    mask = jnp.concatenate([attention_mask.astype(bool), jnp.zeros((b, max_new_tokens), bool)], 1)

    def body(i, carry):
      buf, mask, done = carry
      logits = apply_fn({"params": params}, buf, mask)
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, p + i - 1, axis=1, keepdims=False),
                       axis=-1).astype(buf.dtype)
      nxt = jnp.where(done, pad_id, nxt)
      buf = jax.lax.dynamic_update_index_in_dim(buf, nxt, p + i, axis=1)
      mask = jax.lax.dynamic_update_index_in_dim(mask, ~done, p + i, axis=1)
      return buf, mask, done | (nxt == eos_id)

    buf, _, _ = jax.lax.fori_loop(0, max_new_tokens, body, (buf, mask, jnp.zeros((b,), bool)))
    return buf[:, p:]

  return decode


def decode_texts(tokenizer, generated: np.ndarray, eos_id: int) -> list[str]:
  """Host-side: token rows up to (excluding) EOS, decoded to text."""
  out = []
  for row in np.asarray(generated):
    stop = np.nonzero(row == eos_id)[0]
    ids = row[: stop[0]] if len(stop) else row
    out.append(tokenizer.decode(ids.tolist(), skip_special_tokens=True))
  return out


def exact_match(decode_fn: Callable, params, split: EncodedSplit, tokenizer, *, batch_size: int,
                buckets, put_batch: Callable, limit: int = 0) -> dict[str, float]:
  """Greedy exact-match accuracy of ``split`` (first ``limit`` rows; 0 = all).

  Args:
    decode_fn: jitted function from :func:`make_greedy_decode`.
    put_batch: places a host array on the mesh (batch-sharded).
  Returns:
    ``{"exact_match": float, "examples": int}``.
  """
  correct = total = 0
  for batch in prompt_batches(split, batch_size=batch_size, buckets=buckets,
                              pad_id=tokenizer.pad_token_id, limit=limit):
    generated = jax.device_get(decode_fn(params, put_batch(batch["tokens"]),
                                         put_batch(batch["attention_mask"])))
    texts = decode_texts(tokenizer, generated, tokenizer.eos_token_id)
    for text, answer, valid in zip(texts, batch["answers"], batch["valid"]):
      if valid:
        correct += int(text.strip() == answer.strip())
        total += 1
  return {"exact_match": correct / max(total, 1), "examples": total}
