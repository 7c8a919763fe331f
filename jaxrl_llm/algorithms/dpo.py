"""Direct preference optimisation: DPO, cDPO, robust DPO, IPO, hinge, and listwise
(Plackett–Luce) DPO (docs/algorithms.md §16).

With ``S_θ(y) = Σ_t m_t·log π_θ(y_t | x, y_<t)`` (sum over response tokens, incl. EOS) and the
frozen reference ``S_ref``, a preference pair ``(x, y_w, y_l)`` has the log-ratio margin

  ``h = [S_θ(y_w) − S_ref(y_w)] − [S_θ(y_l) − S_ref(y_l)]``,

implicit reward ``r̂ = β·(S_θ − S_ref)``, and the per-pair losses (:func:`jaxrl_llm.ops.dpo_loss`
does the maths):

==========  ===========================================================  ==========================
variant     loss                                                         ``ops.dpo_loss`` kind
==========  ===========================================================  ==========================
``dpo``     ``−log σ(β·h)``                                              ``sigmoid``, ε = 0
``cdpo``    ``−(1−ε)·log σ(β·h) − ε·log σ(−β·h)``                        ``sigmoid``, ε
``rdpo``    ``[−(1−ε)·log σ(β·h) + ε·log σ(−β·h)] / (1 − 2ε)``           ``robust``, ε
``ipo``     ``(h − 1/(2τ))²``, τ = ``beta``                              ``ipo``
``hinge``   ``max(0, 1 − β·h)``                                          ``hinge``
==========  ===========================================================  ==========================

IPO with ``ipo_length_normalize`` (default, as TRL) uses per-token mean log-probs ``S / n`` (``n``
response tokens, the same for policy and reference) instead of sums in ``h``.

**Listwise DPO** (DPO paper, appendix A.3): a batch with ``K > 2`` responses per prompt and a
ranking ``τ`` (best first) uses the Plackett–Luce likelihood of the implicit rewards,
``L = −Σ_k [β·u_τ(k) − log Σ_{j≥k} exp β·u_τ(j)]`` with ``u = S_θ − S_ref``
(:func:`jaxrl_llm.ops.plackett_luce_loss`); with ``K = 2`` it is exactly sigmoid DPO. Only the
``dpo`` variant has a listwise form.

**Batch layout** (a preference batch, right-padded ``BOS prompt response EOS`` rows): ``tokens
int32[..., K, L]``, ``attention_mask bool[..., K, L]``, ``response_mask bool[..., K, L]`` (True on
response tokens incl. EOS; the token at ``t`` is scored from the hidden state at ``t − 1``),
``ranking int32[..., K]`` (response indices, best first; pairs ``[0, 1]``: index 0 is chosen;
optional, default ``arange(K)``), optional ``valid bool[..., K]`` over *ranked positions* (a shorter
list puts its ranked responses first), and the reference log-probs: either ``ref_logp
float32[..., K]`` or, for pairs, ``ref_chosen_logp``/``ref_rejected_logp float32[...]`` -- the
reference sums of response 0 and response 1 (chosen and rejected under the ``[0, 1]`` convention).
The reference is indexed by *response index*, like ``tokens``; ``ranking`` then picks chosen and
rejected for policy and reference alike. ``margin`` (if present) is ignored by DPO.

**Reference log-probs.** The caller supplies them (:func:`reference_logprobs` under the frozen
reference params, jitted): once per dataset and cached (the reference never changes), or on the
fly each step. The update never sees reference params, so the train state holds only the policy.

**Micro-batching** (as :mod:`jaxrl_llm.algorithms.sft`): the update's batch always carries a
leading accumulation axis ``A`` (``tokens int32[A, b, K, L]``, ``ref_logp float32[A, b, K]``...;
``A = 1`` for no accumulation). Pair weights (``1 / number of valid pairs in the whole batch``) are
computed once before the ``lax.scan`` over micro-batches, so ``A`` micro-batches of ``b`` pairs give
exactly the loss and gradient of one batch of ``A·b`` pairs.

**Dropped pairs.** A pair whose chosen and rejected rows are identical (tokens, attention and
response masks; checked inside the jitted function) has ``h ≡ 0`` and is given weight 0, as is a
pair with an invalid position. Dropout is off (policy and reference must see the same network).

A step whose loss or gradient is not finite leaves params and optimizer state untouched
(``train/skipped``), as in SFT.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from jaxrl_llm import ops
from jaxrl_llm.algorithms.common import TrainState, accumulate_and_apply
from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.kernels import fused_linear_logprobs
from jaxrl_llm.models.decoder import lm_head_weight, logprob_kwargs

VARIANTS = ("dpo", "cdpo", "rdpo", "ipo", "hinge")
_KIND = {"dpo": "sigmoid", "cdpo": "sigmoid", "rdpo": "robust", "ipo": "ipo", "hinge": "hinge"}
METRIC_KEYS = ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp",
               "chosen_reward", "rejected_reward")


def _config_error(field: str, msg: str):
  raise ValueError(f"dpo.Config field '{field}': {msg}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """DPO-family hyperparameters (hashable: closed over by jitted functions).

  Attributes:
    variant: one of :data:`VARIANTS`.
    beta: β (τ for IPO), > 0. Paper default 0.1 (0.5 for TL;DR summarisation).
    label_smoothing: the flip rate ε of ``cdpo`` / ``rdpo``, in ``[0, 0.5)``; must be 0 for the
      other variants (use ``cdpo`` to smooth the sigmoid loss).
    ipo_length_normalize: IPO on per-token mean log-probs (TRL) rather than sums (the paper).
    drop_identical: give pairs with identical chosen/rejected rows weight 0.
  """

  variant: str = "dpo"
  beta: float = 0.1
  label_smoothing: float = 0.0
  ipo_length_normalize: bool = True
  drop_identical: bool = True

  def __post_init__(self):
    if self.variant not in VARIANTS:
      _config_error("variant", f"unknown {self.variant!r}; known: {VARIANTS}")
    if not self.beta > 0:
      _config_error("beta", f"must be > 0, got {self.beta}")
    if not 0.0 <= self.label_smoothing < 0.5:
      _config_error("label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
    if self.label_smoothing and self.variant not in ("cdpo", "rdpo"):
      _config_error("label_smoothing", f"applies to variants 'cdpo' and 'rdpo' only, not "
                    f"{self.variant!r} (use variant='cdpo' for label-smoothed DPO)")

  @property
  def kind(self) -> str:
    """The :func:`jaxrl_llm.ops.dpo_loss` kind of this variant."""
    return _KIND[self.variant]


# --------------------------------------------------------------------------------------------
# Sequence log-probs through the fused kernel.


def sequence_logprobs(apply_fn: Callable, params, model_config: ModelConfig, tokens: jax.Array,
                      attention_mask: jax.Array, response_mask: jax.Array):
  """Summed response log-likelihood of each row, through the fused LM-head kernel (no logits).

  Args:
    apply_fn: the decoder's ``apply`` (must accept ``return_hidden=True``).
    tokens: int32 ``[N, L]`` right-padded ``BOS prompt response EOS`` rows.
    attention_mask: bool ``[N, L]``.
    response_mask: bool ``[N, L]``; True on response tokens (token ``t`` is predicted from the
      hidden state at ``t − 1``; a mark at position 0 is ignored).
  Returns:
    (``S`` float32 ``[N]`` = Σ_t m_t·log π(token_t), token count float32 ``[N]``).
  """
  chex.assert_rank([tokens, attention_mask, response_mask], 2)
  chex.assert_equal_shape([tokens, attention_mask, response_mask])
  mask = response_mask.astype(bool)[:, 1:]
  hidden = apply_fn({"params": params}, tokens, attention_mask, deterministic=True,
                    return_hidden=True)
  out = fused_linear_logprobs(hidden[:, :-1], lm_head_weight(params, model_config), tokens[:, 1:],
                              valid=mask, **logprob_kwargs(model_config))
  total = jnp.sum(jnp.where(mask, out.logp, 0.0), axis=-1)
  return total, jnp.sum(mask.astype(jnp.float32), axis=-1)


def _listwise_logprobs(apply_fn, params, model_config, tokens, attention_mask, response_mask):
  """:func:`sequence_logprobs` of ``[..., L]`` rows: (sum, count) float32 ``[...]``."""
  lead, length = tokens.shape[:-1], tokens.shape[-1]
  flat = lambda x: x.reshape(-1, length)
  total, count = sequence_logprobs(apply_fn, params, model_config, flat(tokens),
                                   flat(attention_mask), flat(response_mask))
  return total.reshape(lead), count.reshape(lead)


def reference_logprobs(apply_fn: Callable, ref_params, model_config: ModelConfig, batch: dict
                       ) -> dict:
  """Reference sequence log-probs of a preference batch, for :func:`make_update`'s batch.

  Pure and jittable; run it once over the dataset and cache the result (the reference is frozen),
  or every step. No gradient flows out of it.

  Args:
    ref_params: the frozen reference (SFT) parameters, same architecture as the policy.
    batch: ``tokens int32[..., K, L]``, ``attention_mask``, ``response_mask`` (bool, same shape).
  Returns:
    dict with ``ref_logp float32[..., K]`` (by response index) and, when ``K == 2``,
    ``ref_chosen_logp`` / ``ref_rejected_logp float32[...]`` (responses 0 and 1).
  """
  chex.assert_equal_shape([batch["tokens"], batch["attention_mask"], batch["response_mask"]])
  total, _ = _listwise_logprobs(apply_fn, ref_params, model_config, batch["tokens"],
                                batch["attention_mask"], batch["response_mask"])
  total = jax.lax.stop_gradient(total)
  out = {"ref_logp": total}
  if total.shape[-1] == 2:
    out.update(ref_chosen_logp=total[..., 0], ref_rejected_logp=total[..., 1])
  return out


# --------------------------------------------------------------------------------------------
# Losses from sequence log-probs.


def identical_pairs(tokens: jax.Array, attention_mask: jax.Array, response_mask: jax.Array
                    ) -> jax.Array:
  """bool ``[...]``: the two responses of a pair are the same sequence.

  Args:
    tokens, attention_mask, response_mask: ``[..., 2, L]``. Tokens are compared at real positions
      only (padding may hold anything).
  """
  chex.assert_equal_shape([tokens, attention_mask, response_mask])
  if tokens.shape[-2] != 2:
    raise ValueError(f"identical_pairs needs K = 2 responses, got shape {tokens.shape}")
  a, r = attention_mask.astype(bool), response_mask.astype(bool)
  same_tokens = (tokens[..., 0, :] == tokens[..., 1, :]) | ~(a[..., 0, :] | a[..., 1, :])
  same = same_tokens & (a[..., 0, :] == a[..., 1, :]) & (r[..., 0, :] == r[..., 1, :])
  return jnp.all(same, axis=-1)


def _ranked(x, ranking):
  return jnp.take_along_axis(x, ranking, axis=-1)


def _last_valid(valid_positions):
  """int32 ``[B]``: the last valid ranked position (0 if none)."""
  k = valid_positions.shape[-1]
  idx = jnp.where(valid_positions, jnp.arange(k), -1)
  return jnp.maximum(jnp.max(idx, axis=-1), 0).astype(jnp.int32)


def ordered_pair_accuracy(scores: jax.Array, ranking: jax.Array, valid: jax.Array | None = None):
  """Fraction of correctly ordered pairs of each ranking.

  Args:
    scores: float ``[B, K]`` one score per response index.
    ranking: int ``[B, K]`` response indices, best first.
    valid: optional bool ``[B, K]`` over ranked positions.
  Returns:
    (correct float32 ``[B]`` -- pairs ``i < j`` of valid ranked positions with
    ``score_τ(i) > score_τ(j)``, pairs float32 ``[B]`` -- number of such pairs).
  """
  chex.assert_rank([scores, ranking], 2)
  chex.assert_equal_shape([scores, ranking])
  k = scores.shape[-1]
  v = jnp.ones(scores.shape, bool) if valid is None else valid.astype(bool)
  s = _ranked(scores.astype(jnp.float32), ranking.astype(jnp.int32))
  upper = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]  # [K, K], i ranked above j.
  both = upper[None] & v[:, :, None] & v[:, None, :]
  right = both & (s[:, :, None] > s[:, None, :])
  f32 = lambda x: jnp.sum(x.astype(jnp.float32), axis=(-2, -1))
  return f32(right), f32(both)


def preference_losses(config: Config, logp: jax.Array, ref_logp: jax.Array, counts: jax.Array,
                      ranking: jax.Array, valid: jax.Array | None = None):
  """Per-prompt DPO-family losses and diagnostics from sequence log-probs (no model).

  Args:
    logp: float32 ``[B, K]`` policy sums ``S_θ`` by response index.
    ref_logp: float32 ``[B, K]`` reference sums ``S_ref`` (no gradient flows into them).
    counts: float32 ``[B, K]`` response token counts (IPO length normalisation).
    ranking: int32 ``[B, K]`` response indices, best first.
    valid: optional bool ``[B, K]`` over ranked positions (listwise only; pairs are masked by the
      caller's weights).
  Returns:
    (loss float32 ``[B]``, dict of float32 ``[B]``: ``reward_accuracy`` (fraction of correctly
    ordered pairs by implicit reward), ``reward_margin``, ``chosen_logp``, ``rejected_logp``,
    ``chosen_reward``, ``rejected_reward``; chosen = best ranked, rejected = worst valid ranked).
  """
  chex.assert_rank([logp, ref_logp, counts, ranking], 2)
  chex.assert_equal_shape([logp, ref_logp, counts, ranking])
  k = logp.shape[-1]
  if k < 2:
    raise ValueError(f"DPO needs at least 2 responses per prompt, got K = {k}")
  ranking = ranking.astype(jnp.int32)
  logp = logp.astype(jnp.float32)
  ref_logp = jax.lax.stop_gradient(ref_logp.astype(jnp.float32))
  v = jnp.ones(logp.shape, bool) if valid is None else valid.astype(bool)
  if config.variant == "ipo" and config.ipo_length_normalize:
    n = jnp.maximum(counts.astype(jnp.float32), 1.0)
    x, x_ref = logp / n, ref_logp / n
  else:
    x, x_ref = logp, ref_logp
  rewards = config.beta * (x - x_ref)  # [B, K] by response index.
  if k == 2:
    c_idx, r_idx = ranking[:, 0], ranking[:, 1]
    pick = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]
    loss, _ = ops.dpo_loss(pick(x, c_idx), pick(x, r_idx), pick(x_ref, c_idx), pick(x_ref, r_idx),
                           beta=config.beta, kind=config.kind,
                           label_smoothing=config.label_smoothing)
  else:
    if config.variant != "dpo":
      raise ValueError(f"K = {k} responses per prompt (listwise DPO) needs variant 'dpo', got "
                       f"{config.variant!r}")
    loss, _ = ops.plackett_luce_loss(rewards, ranking, valid=v)
    c_idx = ranking[:, 0]
    r_idx = jnp.take_along_axis(ranking, _last_valid(v)[:, None], axis=1)[:, 0]
  pick = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]
  correct, pairs = ordered_pair_accuracy(rewards, ranking, v if k > 2 else None)
  rc, rr = pick(rewards, c_idx), pick(rewards, r_idx)
  return loss, {"reward_accuracy": correct / jnp.maximum(pairs, 1.0), "reward_margin": rc - rr,
                "chosen_logp": pick(logp, c_idx), "rejected_logp": pick(logp, r_idx),
                "chosen_reward": rc, "rejected_reward": rr}


# --------------------------------------------------------------------------------------------
# Batches: reference, ranking, weights.


def _batch_fields(batch: dict):
  """(ranking int32[..., K], valid bool[..., K], ref_logp float32[..., K]) of a batch."""
  tokens = batch["tokens"]
  lead, k = tokens.shape[:-2], tokens.shape[-2]
  if "ranking" in batch:
    ranking = batch["ranking"].astype(jnp.int32)
  else:
    ranking = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), lead + (k,))
  valid = batch["valid"].astype(bool) if "valid" in batch else jnp.ones(lead + (k,), bool)
  if "ref_logp" in batch:
    ref = batch["ref_logp"]
  elif "ref_chosen_logp" in batch and "ref_rejected_logp" in batch:
    if k != 2:
      raise ValueError(f"ref_chosen_logp/ref_rejected_logp are for pairs; K = {k}: give ref_logp")
    ref = jnp.stack([batch["ref_chosen_logp"], batch["ref_rejected_logp"]], axis=-1)
  else:
    raise KeyError("a DPO batch needs reference log-probs: 'ref_logp' [..., K] or "
                   "'ref_chosen_logp' and 'ref_rejected_logp' [...] (see reference_logprobs)")
  chex.assert_shape([ranking, valid, ref], lead + (k,))
  return ranking, valid, ref.astype(jnp.float32)


def pair_weights(batch: dict, config: Config):
  """Per-prompt loss weights over a whole batch (any leading dims, e.g. ``[A, b]``).

  A prompt counts when its first two ranked positions are valid and (pairs, ``drop_identical``)
  its two responses differ. Weights are ``1 / (number of counted prompts)`` (0 elsewhere), so
  ``Σ w·ℓ`` is the mean loss over counted prompts whatever the micro-batching.

  Returns:
    (weights float32 ``[...]``, counted float32 scalar, identical-and-dropped float32 scalar).
  """
  _, valid, _ = _batch_fields(batch)
  ok = valid[..., 0] & valid[..., 1]
  dropped = jnp.zeros_like(ok)
  if config.drop_identical and batch["tokens"].shape[-2] == 2:
    dropped = ok & identical_pairs(batch["tokens"], batch["attention_mask"],
                                   batch["response_mask"])
    ok = ok & ~dropped
  ok = ok.astype(jnp.float32)
  n = jnp.sum(ok)
  return ok / jnp.maximum(n, 1.0), n, jnp.sum(dropped.astype(jnp.float32))


def loss_fn(params, apply_fn: Callable, model_config: ModelConfig, micro: dict,
            weights: jax.Array, config: Config):
  """Weighted DPO loss of one micro-batch.

  Args:
    micro: one micro-batch (``tokens int32[b, K, L]`` ... see the module docstring).
    weights: float32 ``[b]`` from :func:`pair_weights` over the whole batch.
  Returns:
    (loss float32 scalar ``Σ w·ℓ``, dict of ``Σ w·metric`` float32 scalars, keys
    :data:`METRIC_KEYS`).
  """
  chex.assert_rank(micro["tokens"], 3)
  chex.assert_equal_shape([micro["tokens"], micro["attention_mask"], micro["response_mask"]])
  ranking, valid, ref = _batch_fields(micro)
  logp, counts = _listwise_logprobs(apply_fn, params, model_config, micro["tokens"],
                                    micro["attention_mask"], micro["response_mask"])
  loss, stats = preference_losses(config, logp, ref, counts, ranking, valid)
  w = weights.astype(jnp.float32)
  # jnp.where, not a product: a dropped pair's NaN/inf cannot leak into the loss or the gradient.
  wsum = lambda x: jnp.sum(jnp.where(w > 0, w * x, 0.0))
  return wsum(loss), {name: wsum(jax.lax.stop_gradient(stats[name])) for name in METRIC_KEYS}


def _metrics(loss, sums, counted, dropped, prefix_loss: str):
  out = {prefix_loss: loss}
  out.update({f"dpo/{name}": sums[name] for name in METRIC_KEYS})
  out["dpo/pairs"] = counted
  out["dpo/dropped_identical"] = dropped
  return out


def make_update(apply_fn: Callable, model_config: ModelConfig, tx: optax.GradientTransformation,
                schedule: Callable, config: Config = Config()):
  """Builds the pure ``update(state, batch) -> (state, metrics)`` for the DPO family.

  ``batch`` carries the accumulation axis ``A``: ``tokens int32[A, b, K, L]``,
  ``attention_mask bool[A, b, K, L]``, ``response_mask bool[A, b, K, L]``, ``ranking
  int32[A, b, K]`` (optional), ``valid bool[A, b, K]`` (optional), and ``ref_logp float32[A, b, K]``
  or ``ref_chosen_logp`` / ``ref_rejected_logp float32[A, b]`` (see :func:`reference_logprobs`).

  Metrics (float32 scalars): ``train/loss``, ``dpo/reward_accuracy``, ``dpo/reward_margin``,
  ``dpo/chosen_logp``, ``dpo/rejected_logp``, ``dpo/chosen_reward``, ``dpo/rejected_reward`` (means
  over counted pairs), ``dpo/pairs``, ``dpo/dropped_identical``, ``train/grad_norm``,
  ``train/learning_rate``, ``train/skipped``, ``train/skipped_total``.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: TrainState, batch: dict):
    chex.assert_rank(batch["tokens"], 4)
    chex.assert_equal_shape([batch["tokens"], batch["attention_mask"], batch["response_mask"]])
    weights, counted, dropped = pair_weights(batch, config)

    micro_grads = lambda params, micro, w: grad_fn(params, apply_fn, model_config, micro, w, config)
    new_state, loss, sums, step_metrics = accumulate_and_apply(
        state, tx, micro_grads, batch, weights, METRIC_KEYS, schedule)
    metrics = _metrics(loss, sums, counted, dropped, "train/loss")
    metrics.update(step_metrics)
    return new_state, metrics

  return update


def evaluate_pairs(apply_fn: Callable, params, model_config: ModelConfig, batch: dict,
                   config: Config = Config()) -> dict:
  """DPO loss and metrics of a held-out batch, without updating (pure, jittable).

  Args:
    batch: one batch *without* the accumulation axis: ``tokens int32[B, K, L]``, masks, optional
      ``ranking``/``valid int32/bool[B, K]``, reference log-probs as in :func:`make_update`.
  Returns:
    float32 scalars ``dpo/loss`` and the ``dpo/*`` metrics of :func:`make_update`.
  """
  chex.assert_rank(batch["tokens"], 3)
  weights, counted, dropped = pair_weights(batch, config)
  loss, sums = loss_fn(params, apply_fn, model_config, batch, weights, config)
  return _metrics(loss, sums, counted, dropped, "dpo/loss")
