"""The rollout engine: one prefill, then a ``lax.while_loop`` decode over a preallocated KV cache.

``generate`` is jitted once per (prompt width, generation length, group size, sampling options);
shapes come from buckets (:func:`pad_prompts`), so a training run compiles once per bucket, and
:class:`Sampler` counts its compilations as a metric.

Randomness: row ``i`` of the output draws its token at step ``t`` from
``fold_in(fold_in(rng, i), t)``, so a row's sample depends only on the key, its prompt and its
row index -- not on the other rows, the batch size or the mesh.

Log-probs: ``sampler_logprobs`` are log-probs of the sampled token under the temperature-scaled
(and soft-capped, as the model's logits are) full distribution -- exactly what the trainer's fused
path recomputes, so on-policy importance ratios start at 1. When top-k / top-p / min-p truncate the
distribution, ``sampler_logprobs_truncated`` holds the log-probs under the renormalised truncated
distribution the token was actually drawn from. For the PPO ratio use the trainer's recomputation
(it equals ``sampler_logprobs`` up to numerics); for rollout-correction importance weights
(``ops.truncated_is_weights``) the behaviour policy is the truncated one, so pass
``sampler_logprobs_truncated``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models.decoder import decode_step, lm_head, prefill


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
  """How the next token is drawn. ``greedy`` ignores everything else.

  ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` disable the respective truncation.
  """

  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be >= 0, got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
    if not 0.0 <= self.min_p < 1.0:
      raise ValueError(f"SamplingConfig.min_p must be in [0, 1), got {self.min_p}")

  @property
  def truncates(self) -> bool:
    return not self.greedy and (self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0)


@flax.struct.dataclass
class Rollout:
  """A batch of sampled responses; ``N = B·G`` rows, prompt width ``P``, generation length ``T``.

  Fields:
    tokens: int32 ``[N, P + T]`` -- left-padded prompt, then the response (pad after the stop).
    prompt_mask: bool ``[N, P + T]`` -- real prompt tokens.
    response_mask: bool ``[N, P + T]`` -- generated tokens, the stop token included.
    sampler_logprobs: float32 ``[N, T]`` -- log-prob of each generated token (full distribution).
    sampler_logprobs_truncated: float32 ``[N, T]`` -- under the truncated distribution.
    lengths: int32 ``[N]`` -- generated tokens per row (stop token included).
    finished: bool ``[N]`` -- True if a stop token ended the row, False if truncated at ``T``.
    group_ids: int32 ``[N]`` -- prompt index of each row (rows ``b·G .. b·G + G − 1``).
  """

  tokens: jax.Array
  prompt_mask: jax.Array
  response_mask: jax.Array
  sampler_logprobs: jax.Array
  sampler_logprobs_truncated: jax.Array
  lengths: jax.Array
  finished: jax.Array
  group_ids: jax.Array


def truncate_logits(z: jax.Array, sampling: SamplingConfig) -> jax.Array:
  """Applies top-k, top-p (nucleus) and min-p to temperature-scaled logits ``z [N, V]``.

  Removed tokens get −inf. Top-p keeps the smallest set of most likely tokens whose probability
  reaches ``top_p`` (the token that crosses the threshold is kept); min-p keeps tokens with
  ``p ≥ min_p · p_max``. The most likely token always survives.
  """
  neg = jnp.finfo(jnp.float32).min
  if sampling.top_k > 0 and sampling.top_k < z.shape[-1]:
    kth = jax.lax.top_k(z, sampling.top_k)[0][:, -1:]
    z = jnp.where(z < kth, neg, z)
  if sampling.top_p < 1.0:
    order = jnp.argsort(-z, axis=-1)
    sorted_z = jnp.take_along_axis(z, order, axis=-1)
    probs = jax.nn.softmax(sorted_z, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Probability mass strictly before each token.
    keep_sorted = before < sampling.top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(z.shape[0])[:, None], order].set(keep_sorted)
    z = jnp.where(keep, z, neg)
  if sampling.min_p > 0.0:
    logp = jax.nn.log_softmax(z, axis=-1)
    z = jnp.where(logp >= jnp.max(logp, -1, keepdims=True) + jnp.log(sampling.min_p), z, neg)
  return z


_BLOCK = 128  # Vocabulary block of the two-level argmax / inverse-CDF draw below.

# Decoding works on vocabulary-major logits ``[V, N]`` (one column per row): XLA:CPU runs the
# small-batch LM-head matmul ~30% faster producing that layout, and every step below is a
# reduction over the leading axis. Two-level (128-wide block, then inside one block) argmax and
# inverse CDF replace a V-long variadic argmax and a V-long prefix sum per row, each an order of
# magnitude slower on CPU at V = 32k.


def _vocab_blocks(x: jax.Array, fill: float) -> jax.Array:
  """``[V, N]`` -> ``[ceil(V / _BLOCK), _BLOCK, N]``, the tail padded with ``fill``."""
  v, n = x.shape
  nb = -(-v // _BLOCK)
  if nb * _BLOCK != v:
    x = jnp.pad(x, ((0, nb * _BLOCK - v), (0, 0)), constant_values=fill)
  return x.reshape(nb, _BLOCK, n)


def _take_block(xb: jax.Array, b: jax.Array) -> jax.Array:
  """``[BS, N]``: column ``i`` holds block ``b[i]`` of column ``i`` of ``xb [NB, BS, N]``."""
  return jnp.take_along_axis(xb, b[None, None, :], axis=0)[0]


def _last_positive(x: jax.Array) -> jax.Array:
  """``int32[N]``: the last index along axis 0 of ``x [M, N]`` with ``x > 0`` (0 if none)."""
  idx = jnp.arange(x.shape[0], dtype=jnp.int32)[:, None]
  return jnp.max(jnp.where(x > 0, idx, 0), axis=0)


def inverse_cdf(pb: jax.Array, u: jax.Array, bsum: jax.Array | None = None) -> jax.Array:
  """One exact categorical draw per column from blocked unnormalised probabilities.

  Args:
    pb: float32 ``[NB, BS, N]`` -- ``p [V, N]`` (≥ 0, vocabulary-major) split into ``NB`` blocks of
      ``BS`` tokens (:func:`_vocab_blocks`, zero padding); zero entries are never chosen.
    u: float32 ``[N]`` uniform numbers in ``[0, 1)``, one per column.
    bsum: optional float32 ``[NB, N]`` block sums of ``pb`` (recomputed when absent).
  Returns:
    int32 ``[N]``: the first token index whose cumulative mass exceeds ``u · Σp``.

  One uniform per row instead of ``V`` Gumbel numbers; the cumulative sum is taken in two levels
  (over block sums, then inside the one block the target falls in), which is exact. Rounding can
  never pick a zero-mass token: block and index are capped at the last one with positive mass.
  """
  chex.assert_rank(pb, 3)
  chex.assert_shape(u, (pb.shape[2],))
  bsum = jnp.sum(pb, axis=1) if bsum is None else bsum  # [NB, N]
  cb = jnp.cumsum(bsum, axis=0)
  target = u * cb[-1]
  b = jnp.minimum(jnp.sum(cb <= target[None, :], axis=0), _last_positive(bsum))
  cols = jnp.arange(pb.shape[2])
  rest = target - (cb[b, cols] - bsum[b, cols])  # Mass still to cover inside block b.
  blk = _take_block(pb, b)
  j = jnp.minimum(jnp.sum(jnp.cumsum(blk, axis=0) <= rest[None, :], axis=0),
                  _last_positive(blk))
  return (b * pb.shape[1] + j).astype(jnp.int32)


def _draw(z: jax.Array, u: jax.Array):
  """(token int32 ``[N]`` drawn by :func:`inverse_cdf`, log-normaliser float32 ``[N]``) of
  vocabulary-major logits ``z [V, N]``: one pass for block maxima, one fused exp + block-sum pass."""
  zb = _vocab_blocks(z, -jnp.inf)
  m = jnp.max(jnp.max(zb, axis=1), axis=0)
  pb = jnp.exp(zb - m[None, None, :])
  bsum = jnp.sum(pb, axis=1)
  return inverse_cdf(pb, u, bsum), m + jnp.log(jnp.sum(bsum, axis=0))


def sample_vocab_major(logits: jax.Array, row_keys: jax.Array, step, sampling: SamplingConfig):
  """:func:`sample_tokens` on vocabulary-major logits float32 ``[V, N]`` (the decode layout);
  ``step`` is a scalar or int32 ``[N]`` (each row's own step)."""
  chex.assert_rank(logits, 2)
  chex.assert_axis_dimension(row_keys, 0, logits.shape[1])  # Raw [N, 2] or typed [N] keys.
  z = logits.astype(jnp.float32) / sampling.temperature
  cols = jnp.arange(z.shape[1])
  pick = lambda x, tok: x[tok, cols]
  if sampling.greedy:
    # The first index of the maximum (``jnp.argmax``'s answer): the first block holding it, then
    # the first maximum inside that block; the block maxima also give the log-normaliser's shift.
    zb = _vocab_blocks(z, -jnp.inf)
    bmax = jnp.max(zb, axis=1)  # [NB, N]
    b = jnp.argmax(bmax, axis=0)
    tok = (b * _BLOCK + jnp.argmax(_take_block(zb, b), axis=0)).astype(jnp.int32)
    m = jnp.max(bmax, axis=0)
    picked = pick(z, tok) - (m + jnp.log(jnp.sum(jnp.exp(z - m), axis=0)))
    return tok, picked, picked
  if jnp.ndim(step):  # One step per row (the refill sampler's slots are at different steps).
    keys = jax.vmap(jax.random.fold_in)(row_keys, step)
  else:
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
  u = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
  if not sampling.truncates:
    tok, lse = _draw(z, u)
    picked = pick(z, tok) - lse
    return tok, picked, picked
  zt = truncate_logits(z.T, sampling).T
  tok, lse_t = _draw(zt, u)
  lse = jax.nn.logsumexp(z, axis=0)
  return tok, pick(z, tok) - lse, pick(zt, tok) - lse_t


def sample_tokens(logits: jax.Array, row_keys: jax.Array, step, sampling: SamplingConfig):
  """Draws one token per row.

  Args:
    logits: float32 ``[N, V]`` model logits (already soft-capped).
    row_keys: ``[N, 2]`` per-row keys; the step's key is ``fold_in(row_key, step)``.
  Returns:
    (tokens int32 ``[N]``, logp float32 ``[N]`` (full), logp_truncated float32 ``[N]``).
  """
  chex.assert_rank(logits, 2)
  return sample_vocab_major(logits.T, row_keys, step, sampling)


def _generate(params, prompts, prompt_mask, rng, *, config: ModelConfig,
              sampling: SamplingConfig, max_new_tokens: int, stop_ids: tuple[int, ...],
              num_samples: int, pad_id: int) -> Rollout:
  b, p = prompts.shape
  g, t_max = num_samples, max_new_tokens
  n = b * g
  # Left padding: the last column is every row's last prompt token, whose logits start sampling.
  hidden, cache = prefill(params, config, prompts, prompt_mask, max_len=p + t_max,
                          return_hidden=True)
  fan = lambda x: jnp.repeat(x, g, axis=0)
  cache = {"layers": jax.tree.map(fan, cache["layers"]), "mask": fan(cache["mask"]),
           "index": cache["index"]}
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  stops = jnp.asarray(stop_ids, jnp.int32) if stop_ids else jnp.zeros((0,), jnp.int32)
  is_stop_token = lambda tok: jnp.any(tok[:, None] == stops[None, :], axis=-1)
  head = lambda h: lm_head(params, config, h, vocab_major=True)  # [V, rows]

  # Token 0 comes from the prefill; each loop iteration feeds the previous token and samples the
  # next, so no logits ride in the loop state and no decode step is wasted after the last token.
  first = jnp.repeat(head(hidden[:, -1]), g, axis=1)  # [V, B·G]: the prompt's head, fanned out.
  tok, logp, logp_t = sample_vocab_major(first, row_keys, 0, sampling)
  out = jnp.full((n, t_max), pad_id, jnp.int32).at[:, 0].set(tok)
  lp = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(logp)
  lpt = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(logp_t)

  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < t_max) & ~jnp.all(done)

  def body(state):
    step, out, lp, lpt, done, cache, prev = state
    hidden, cache = decode_step(params, config, prev, cache, ~done, return_hidden=True)
    tok, logp, logp_t = sample_vocab_major(head(hidden), row_keys, step, sampling)
    tok = jnp.where(done, pad_id, tok)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], step, axis=1)
    lp = jax.lax.dynamic_update_slice_in_dim(lp, jnp.where(done, 0.0, logp)[:, None], step, axis=1)
    lpt = jax.lax.dynamic_update_slice_in_dim(lpt, jnp.where(done, 0.0, logp_t)[:, None], step,
                                              axis=1)
    return step + 1, out, lp, lpt, done | is_stop_token(tok), cache, tok

  init = (jnp.ones((), jnp.int32), out, lp, lpt, is_stop_token(tok), cache, tok)
  _, out, lp, lpt, _, _, _ = jax.lax.while_loop(cond, body, init)
  return _finish(out, lp, lpt, prompts, prompt_mask, stops, g, pad_id)


def _finish(out, lp, lpt, prompts, prompt_mask, stops, g: int, pad_id: int) -> Rollout:
  """The :class:`Rollout` of drawn tokens ``out [N, T]`` and their log-probs (rows cut after
  their first stop token)."""
  b, p = prompts.shape
  n, t_max = out.shape
  fan = lambda x: jnp.repeat(x, g, axis=0)
  is_stop = jnp.any(out[:, :, None] == stops[None, None, :], axis=-1)
  first_stop = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1), t_max)
  finished = first_stop < t_max
  lengths = jnp.where(finished, first_stop + 1, t_max).astype(jnp.int32)
  gen_mask = jnp.arange(t_max)[None, :] < lengths[:, None]
  out = jnp.where(gen_mask, out, pad_id)
  prompt_rep = fan(prompts)
  mask_rep = fan(prompt_mask.astype(bool))
  return Rollout(
      tokens=jnp.concatenate([prompt_rep, out], axis=1),
      prompt_mask=jnp.concatenate([mask_rep, jnp.zeros((n, t_max), bool)], axis=1),
      response_mask=jnp.concatenate([jnp.zeros((n, p), bool), gen_mask], axis=1),
      sampler_logprobs=jnp.where(gen_mask, lp, 0.0),
      sampler_logprobs_truncated=jnp.where(gen_mask, lpt, 0.0),
      lengths=lengths, finished=finished,
      group_ids=jnp.repeat(jnp.arange(b, dtype=jnp.int32), g))


def _generate_refill(params, prompts, prompt_mask, rng, *, config: ModelConfig,
                     sampling: SamplingConfig, max_new_tokens: int, stop_ids: tuple[int, ...],
                     num_samples: int, pad_id: int, slots: int) -> Rollout:
  """:func:`_generate` with in-flight refill: ``slots`` rows decode at a time, and a slot whose row
  stops takes the next pending row at once, so the batch never waits for its longest row.

  Every prompt is prefilled once, as in the static path, into a prompt cache ``[B, ..., P + T]``;
  every row's first token is drawn from it exactly as there. A row that needs decoding is queued
  in row order; taking a slot copies its prompt's cache row into the slot (the key mask beyond the
  prompt is reset with it), after which the slot decodes with its own write position
  (``cache["index"]`` is ``int32[slots]``). A row's cache then holds the same values at the same
  positions as in the static sampler and it draws step ``t`` from the same
  ``fold_in(fold_in(rng, row), t)``, so its tokens do not depend on which slot it ran in or when.
  """
  b, p = prompts.shape
  g, t_max = num_samples, max_new_tokens
  n = b * g
  s = min(slots, n)
  hidden, store = prefill(params, config, prompts, prompt_mask, max_len=p + t_max,
                          return_hidden=True)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  stops = jnp.asarray(stop_ids, jnp.int32) if stop_ids else jnp.zeros((0,), jnp.int32)
  is_stop_token = lambda tok: jnp.any(tok[:, None] == stops[None, :], axis=-1)
  head = lambda h: lm_head(params, config, h, vocab_major=True)  # [V, rows]

  first = jnp.repeat(head(hidden[:, -1]), g, axis=1)
  tok0, logp0, logpt0 = sample_vocab_major(first, row_keys, 0, sampling)
  out = jnp.full((n, t_max), pad_id, jnp.int32).at[:, 0].set(tok0)
  lp = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(logp0)
  lpt = jnp.zeros((n, t_max), jnp.float32).at[:, 0].set(logpt0)
  done0 = is_stop_token(tok0) | (t_max == 1)
  queue = jnp.argsort(done0, stable=True).astype(jnp.int32)  # Rows to decode first, in order.
  pending = jnp.sum(~done0).astype(jnp.int32)
  idle = jnp.int32(n)  # The row id of an empty slot (out of range: its writes are dropped).
  slot_ids = jnp.arange(s, dtype=jnp.int32)

  def load(cache, rows, take):
    """Copies the prompt cache of ``rows`` into the slots where ``take``; others keep theirs."""
    dst = jnp.where(take, slot_ids, s)  # Out of range: dropped.
    src = jnp.minimum(rows, n - 1) // g
    put = lambda x, y: x.at[dst].set(y[src], mode="drop")
    return {"layers": jax.tree.map(put, cache["layers"], store["layers"]),
            "mask": put(cache["mask"], store["mask"]), "index": cache["index"]}

  rows = jnp.where(slot_ids < pending, queue[jnp.minimum(slot_ids, n - 1)], idle)
  empty = {"layers": jax.tree.map(lambda x: jnp.zeros((s,) + x.shape[1:], x.dtype),
                                  store["layers"]),
           "mask": jnp.zeros((s,) + store["mask"].shape[1:], bool),
           "index": jnp.zeros((s,), jnp.int32)}
  cache = load(empty, rows, rows < idle)
  steps = jnp.ones((s,), jnp.int32)  # The step each slot draws next (token 0 is already drawn).
  prev = tok0[jnp.minimum(rows, n - 1)]

  def cond(state):
    return jnp.any(state[0] < idle)

  def body(state):
    rows, steps, prev, taken, cache, out, lp, lpt = state
    active = rows < idle
    safe = jnp.minimum(rows, n - 1)
    cache = dict(cache, index=p + steps - 1)  # Where each slot writes the token it feeds.
    hidden, cache = decode_step(params, config, prev, cache, active, return_hidden=True)
    tok, logp, logp_t = sample_vocab_major(head(hidden), row_keys[safe], steps, sampling)
    at = (rows, jnp.minimum(steps, t_max - 1))
    out = out.at[at].set(tok, mode="drop")
    lp = lp.at[at].set(logp, mode="drop")
    lpt = lpt.at[at].set(logp_t, mode="drop")
    ended = active & (is_stop_token(tok) | (steps + 1 >= t_max))
    # Ended slots take the next queued rows, in slot order.
    nxt = taken + jnp.cumsum(ended.astype(jnp.int32)) - 1
    refill = ended & (nxt < pending)
    new_rows = jnp.where(ended, jnp.where(refill, queue[jnp.clip(nxt, 0, n - 1)], idle), rows)
    cache = jax.lax.cond(jnp.any(refill), lambda c: load(c, new_rows, refill), lambda c: c, cache)
    steps = jnp.where(refill, 1, steps + 1)
    prev = jnp.where(refill, tok0[jnp.minimum(new_rows, n - 1)], tok)
    taken = jnp.minimum(taken + jnp.sum(ended.astype(jnp.int32)), pending)
    return new_rows, steps, prev, taken, cache, out, lp, lpt

  init = (rows, steps, prev, jnp.minimum(jnp.int32(s), pending), cache, out, lp, lpt)
  _, _, _, _, _, out, lp, lpt = jax.lax.while_loop(cond, body, init)
  return _finish(out, lp, lpt, prompts, prompt_mask, stops, g, pad_id)


def validate_request(config: ModelConfig, prompt_width: int, prompt_lengths, *,
                     max_new_tokens: int, stop_token_ids: Sequence[int],
                     num_samples: int) -> None:
  """Host-side checks before anything compiles; each error names the offending argument."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if prompt_width + max_new_tokens > config.max_seq_len and config.positions == "learned":
    raise ValueError(f"prompt width {prompt_width} + max_new_tokens {max_new_tokens} exceeds the "
                     f"model's {config.max_seq_len} learned positions")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  bad = [s for s in stop_token_ids if not 0 <= int(s) < config.vocab_size]
  if bad:
    raise ValueError(f"stop_token_ids {bad} are outside the vocabulary [0, {config.vocab_size})")
  if prompt_lengths is not None:
    lengths = np.asarray(prompt_lengths)
    if np.any(lengths <= 0):
      raise ValueError(f"empty prompt(s) at rows {np.nonzero(lengths <= 0)[0].tolist()}")
    if np.any(lengths > prompt_width):
      raise ValueError(f"prompt_lengths {lengths.max()} exceed the prompt width {prompt_width}")


def pad_prompts(token_lists: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int):
  """Left-pads prompts into the smallest bucket that fits the longest one.

  Returns:
    (prompts int32 ``[B, P]``, prompt_lengths int32 ``[B]``).
  Raises:
    ValueError: an empty prompt or one longer than the largest bucket (naming the row).
  """
  lengths = [len(t) for t in token_lists]
  for i, n in enumerate(lengths):
    if n == 0:
      raise ValueError(f"prompt {i} is empty")
    if n > max(buckets):
      raise ValueError(f"prompt {i} has {n} tokens, more than the largest bucket {max(buckets)}")
  width = min(b for b in buckets if b >= max(lengths))
  out = np.full((len(token_lists), width), pad_id, np.int32)
  for i, toks in enumerate(token_lists):
    out[i, width - len(toks):] = toks
  return out, np.asarray(lengths, np.int32)


class Sampler:
  """Holds the jitted ``generate`` for one model and counts its compilations.

  ``sampler.compilations`` stays at one per (prompt bucket, generation bucket, group size,
  sampling options) over a run.

  ``refill=False`` decodes all ``N = B·G`` rows together until the longest one stops (the static
  batch). ``refill=True`` decodes ``slots`` rows at a time (0: ``ceil(N / 2)``) with in-flight
  refill (:func:`_generate_refill`): a slot whose row stops takes the next pending row, so a
  long-tailed length distribution costs about its total tokens rather than rows × the longest.
  It is used when there are fewer slots than rows and a stop token to end rows early. Same rows
  either way: the same tokens and log-probs up to float rounding; bit for bit where the backend
  computes a row's matmuls the same at both batch sizes (XLA:CPU at ≥ 64 rows on the standard
  benchmark model, benchmarks/RESULTS.md).
  """

  def __init__(self, config: ModelConfig, *, pad_id: int = 0, mesh=None, refill: bool = False,
               slots: int = 0):
    if slots < 0:
      raise ValueError(f"Sampler slots must be >= 0 (0: half the rows), got {slots}")
    self.config = config
    self.pad_id = pad_id
    self.mesh = mesh
    self.refill = bool(refill)
    self.slots = int(slots)
    self.compilations = 0
    self._fns = {}

  def _fn(self, sampling, max_new_tokens, stop_ids, num_samples, rows_divide):
    key = (sampling, max_new_tokens, stop_ids, num_samples, rows_divide)
    if key not in self._fns:
      def traced(params, prompts, mask, rng):
        self.compilations += 1  # Runs once per trace, i.e. per compilation.
        kw = dict(config=self.config, sampling=sampling, max_new_tokens=max_new_tokens,
                  stop_ids=stop_ids, num_samples=num_samples, pad_id=self.pad_id)
        n = prompts.shape[0] * num_samples
        slots = self.slots or -(-n // 2)
        # Refill pays off only with fewer slots than rows and a stop token to end rows early.
        if self.refill and slots < n and stop_ids and max_new_tokens > 1:
          return _generate_refill(params, prompts, mask, rng, slots=slots, **kw)
        return _generate(params, prompts, mask, rng, **kw)

      kw = {}
      # Prompts are split over data x fsdp when their count divides; otherwise (a few prompts,
      # many samples each) they are left to XLA's placement rather than refused.
      if self.mesh is not None and rows_divide:
        from jax.sharding import NamedSharding, PartitionSpec as P

        rows = NamedSharding(self.mesh, P(("data", "fsdp"), None))
        kw = dict(in_shardings=(None, rows, rows, None))
      self._fns[key] = jax.jit(traced, **kw)
    return self._fns[key]

  def generate(self, params, prompts, prompt_lengths, *, sampling: SamplingConfig,
               max_new_tokens: int, stop_token_ids: Sequence[int], rng: jax.Array,
               num_samples: int = 1) -> Rollout:
    """See :func:`generate`."""
    prompts = np.asarray(prompts, np.int32) if not isinstance(prompts, jax.Array) else prompts
    if prompts.ndim != 2:
      raise ValueError(f"prompts must be int32 [B, P], got shape {prompts.shape}")
    b, p = prompts.shape
    validate_request(self.config, p, prompt_lengths, max_new_tokens=max_new_tokens,
                     stop_token_ids=stop_token_ids, num_samples=num_samples)
    lengths = jnp.asarray(prompt_lengths, jnp.int32)
    mask = jnp.arange(p)[None, :] >= (p - lengths)[:, None]
    stop_ids = tuple(sorted({int(s) for s in stop_token_ids}))
    shards = 1
    if self.mesh is not None:
      shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    return self._fn(sampling, int(max_new_tokens), stop_ids, int(num_samples), b % shards == 0)(
        params, jnp.asarray(prompts), mask, rng)


def generate(params, model_config: ModelConfig, prompts, prompt_lengths, *,
             sampling: SamplingConfig, max_new_tokens: int, stop_token_ids: Sequence[int],
             rng: jax.Array, num_samples: int = 1, pad_id: int = 0) -> Rollout:
  """Samples ``num_samples`` responses per left-padded prompt.

  Args:
    params: policy params (any sharding; they are not copied).
    prompts: int32 ``[B, P]``, left-padded; prompt_lengths: int ``[B]`` real tokens per row.
    sampling: :class:`SamplingConfig`; max_new_tokens: ``T``; stop_token_ids: ids that end a row.
    rng: PRNG key of this rollout step; num_samples: ``G`` (each prompt is prefilled once and its
      cache fanned out to G rows).
  Returns:
    :class:`Rollout` with ``N = B·G`` rows.

  For repeated calls prefer a :class:`Sampler` (it keeps the compiled functions and counts them).
  """
  return Sampler(model_config, pad_id=pad_id).generate(
      params, prompts, prompt_lengths, sampling=sampling, max_new_tokens=max_new_tokens,
      stop_token_ids=stop_token_ids, rng=rng, num_samples=num_samples)
