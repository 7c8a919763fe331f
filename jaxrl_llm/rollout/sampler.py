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

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models.decoder import decode_step, prefill


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


def _inverse_cdf(key: jax.Array, z: jax.Array) -> jax.Array:
  """One exact categorical draw from logits ``z [V]`` with a single uniform number.

  ``u ~ U(0, 1)·Σp`` and the token is the first index whose cumulative probability exceeds ``u``;
  zero-probability (truncated) tokens can never be chosen. One random number per row instead of
  ``V`` Gumbel draws keeps sampling cheap on CPU.
  """
  p = jnp.exp(z - jnp.max(z))
  c = jnp.cumsum(p)
  u = jax.random.uniform(key, (), jnp.float32) * c[-1]
  return jnp.minimum(jnp.searchsorted(c, u, side="right"), z.shape[0] - 1)


def sample_tokens(logits: jax.Array, row_keys: jax.Array, step, sampling: SamplingConfig):
  """Draws one token per row.

  Args:
    logits: float32 ``[N, V]`` model logits (already soft-capped).
    row_keys: ``[N, 2]`` per-row keys; the step's key is ``fold_in(row_key, step)``.
  Returns:
    (tokens int32 ``[N]``, logp float32 ``[N]`` (full), logp_truncated float32 ``[N]``).
  """
  z = logits.astype(jnp.float32) / sampling.temperature
  lse = jax.nn.logsumexp(z, axis=-1)
  pick = lambda x, tok: jnp.take_along_axis(x, tok[:, None], axis=-1)[:, 0]
  if sampling.greedy:
    tok = jnp.argmax(z, axis=-1).astype(jnp.int32)
    picked = pick(z, tok) - lse
    return tok, picked, picked
  keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
  if not sampling.truncates:
    tok = jax.vmap(_inverse_cdf)(keys, z).astype(jnp.int32)
    picked = pick(z, tok) - lse
    return tok, picked, picked
  zt = truncate_logits(z, sampling)
  tok = jax.vmap(_inverse_cdf)(keys, zt).astype(jnp.int32)
  return tok, pick(z, tok) - lse, pick(zt, tok) - jax.nn.logsumexp(zt, axis=-1)


def _generate(params, prompts, prompt_mask, rng, *, config: ModelConfig,
              sampling: SamplingConfig, max_new_tokens: int, stop_ids: tuple[int, ...],
              num_samples: int, pad_id: int) -> Rollout:
  b, p = prompts.shape
  g, t_max = num_samples, max_new_tokens
  n = b * g
  logits, cache = prefill(params, config, prompts, prompt_mask, max_len=p + t_max)
  last = logits[:, -1]  # Left padding: the last column is every row's last prompt token.
  fan = lambda x: jnp.repeat(x, g, axis=0)
  cache = {"layers": jax.tree.map(fan, cache["layers"]), "mask": fan(cache["mask"]),
           "index": cache["index"]}
  last = fan(last)
  row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n))
  stops = jnp.asarray(stop_ids, jnp.int32) if stop_ids else jnp.zeros((0,), jnp.int32)

  def cond(state):
    step, _, _, _, done, _, _ = state
    return (step < t_max) & ~jnp.all(done)

  def body(state):
    step, out, lp, lpt, done, cache, last = state
    tok, logp, logp_t = sample_tokens(last, row_keys, step, sampling)
    tok = jnp.where(done, pad_id, tok)
    out = out.at[:, step].set(tok)
    lp = lp.at[:, step].set(jnp.where(done, 0.0, logp))
    lpt = lpt.at[:, step].set(jnp.where(done, 0.0, logp_t))
    active = ~done
    new_done = done | jnp.any(tok[:, None] == stops[None, :], axis=-1)
    last, cache = decode_step(params, config, tok, cache, active)
    return step + 1, out, lp, lpt, new_done, cache, last

  init = (jnp.zeros((), jnp.int32), jnp.full((n, t_max), pad_id, jnp.int32),
          jnp.zeros((n, t_max), jnp.float32), jnp.zeros((n, t_max), jnp.float32),
          jnp.zeros((n,), bool), cache, last)
  _, out, lp, lpt, _, _, _ = jax.lax.while_loop(cond, body, init)
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
  """

  def __init__(self, config: ModelConfig, *, pad_id: int = 0, mesh=None):
    self.config = config
    self.pad_id = pad_id
    self.mesh = mesh
    self.compilations = 0
    self._fns = {}

  def _fn(self, sampling, max_new_tokens, stop_ids, num_samples, rows_divide):
    key = (sampling, max_new_tokens, stop_ids, num_samples, rows_divide)
    if key not in self._fns:
      def traced(params, prompts, mask, rng):
        self.compilations += 1  # Runs once per trace, i.e. per compilation.
        return _generate(params, prompts, mask, rng, config=self.config, sampling=sampling,
                         max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                         num_samples=num_samples, pad_id=self.pad_id)

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
