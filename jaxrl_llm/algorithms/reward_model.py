"""Reward-model training: Bradley–Terry pairs, Plackett–Luce rankings, pointwise ratings
(docs/algorithms.md §17).

A reward model is the decoder trunk plus a scalar head (:mod:`jaxrl_llm.models.heads`); the reward
of a sequence ``BOS prompt response EOS`` is the head's output at its last real token
(``last_index``): ``r(x, y) = w·h_last + b``. Objectives (losses in
:mod:`jaxrl_llm.ops.preference`):

* ``pairwise`` -- Bradley–Terry, ``ℓ = −log σ(r_w − r_l − m) + η·(r_w + r_l)²`` with optional
  per-pair margin ``m`` (``Config.margin``: the batch's ``margin``, Llama 2) and centering
  coefficient η (``center_coef``; 0.01 when used). With ``K > 2`` ranked responses per prompt
  every ordered pair ``(τ(i), τ(j)), i < j`` is a BT pair and a prompt's loss is the mean over its
  pairs (InstructGPT's ``1/C(K, 2)`` batching). When the batch carries a soft label ``probability``
  ``p = P(chosen ≻ rejected)`` (AI feedback, docs/algorithms.md §19; pairs only) the BT term is the
  soft-label cross-entropy ``−[p·log σ(Δ − m) + (1−p)·log σ(−(Δ − m))]``; ``p = 1`` is the hard
  loss.
* ``ranking`` -- Plackett–Luce over the full ranking τ (best first),
  ``ℓ = −Σ_k [r_τ(k) − log Σ_{j≥k} exp r_τ(j)]``; for ``K = 2`` this *is* Bradley–Terry.
* ``rating`` -- one scored response per row: ``regression`` ``(r − (y − offset)/scale)²``, or
  ``ordinal`` cumulative-link classification ``P(y ≤ c) = σ(θ_c − r)`` over ``num_levels`` integer
  levels ``0..C−1`` with learnable increasing thresholds θ.

**Ordinal thresholds** live in the head params: ``params["head"]["thresholds_raw"] float32[C−1]``
(added by :func:`init_params` when the config asks for them), mapped to increasing thresholds by
:func:`ordinal_thresholds` (``θ_0 = raw_0``, ``θ_c = θ_{c−1} + softplus(raw_c)``). They are ordinary
parameters: the optimizer updates them with the rest (rank 1, so no weight decay).

**Batches.** Pairs / rankings: ``tokens int32[..., K, L]``, ``attention_mask bool[..., K, L]``,
``last_index int32[..., K]``, ``ranking int32[..., K]`` (response indices, best first; pairs
``[0, 1]``), ``margin float32[...]`` (used when ``Config.margin``), optional ``probability
float32[...]`` (pairs' soft labels, ``pairwise`` with K = 2), optional ``valid bool[..., K]``
over ranked positions. Ratings: ``tokens int32[..., L]``, ``attention_mask``, ``last_index
int32[...]``, ``score float32[...]`` (integer levels for ``ordinal``), optional ``valid bool[...]``.
``response_mask`` may be present and is unused. The update's batch carries a leading
accumulation axis ``A`` (``[A, b, K, L]``; ``A = 1`` for none) as in
:mod:`jaxrl_llm.algorithms.sft`; weights are computed once over the whole batch, so ``A``
micro-batches equal one batch of ``A·b`` rows.

**Serving as an RL reward.** Bradley–Terry fixes only reward differences, so normalise before RL:
compute :func:`normalization_stats` over the scores of training (or held-out) sequences, then
:func:`normalize_scores`. :func:`score` (pure) and :func:`make_scorer` (jitted, sharded) score
tokenised rows; a host-side text wrapper only has to tokenise ``BOS prompt response EOS``,
right-pad, and pass ``last_index = length − 1``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrl_llm import ops
from jaxrl_llm.algorithms.common import TrainState, accumulate_and_apply
from jaxrl_llm.config.schema import ModelConfig
from jaxrl_llm.models import heads
from jaxrl_llm.models.init import param_logical_axes
from jaxrl_llm.parallel import batch_sharding, replicated, tree_shardings

OBJECTIVES = ("pairwise", "ranking", "rating")
RATING_LOSSES = ("regression", "ordinal")


def _config_error(field: str, msg: str):
  raise ValueError(f"reward_model.Config field '{field}': {msg}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Reward-model hyperparameters (hashable: closed over by jitted functions).

  Fields:
    objective: one of :data:`OBJECTIVES`.
    margin: subtract the batch's ``margin`` inside the BT sigmoid (``pairwise`` only).
    center_coef: η of the centering term ``η·(r_w + r_l)²`` (``pairwise`` only), ≥ 0.
    rating_loss: ``regression`` or ``ordinal`` (``rating`` only).
    num_levels: number C ≥ 2 of rating levels ``0..C−1`` (``ordinal``).
    rating_offset, rating_scale: regression targets are ``(score − offset) / scale``.
  """

  objective: str = "pairwise"
  margin: bool = False
  center_coef: float = 0.0
  rating_loss: str = "regression"
  num_levels: int = 5
  rating_offset: float = 0.0
  rating_scale: float = 1.0

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      _config_error("objective", f"unknown {self.objective!r}; known: {OBJECTIVES}")
    if self.rating_loss not in RATING_LOSSES:
      _config_error("rating_loss", f"unknown {self.rating_loss!r}; known: {RATING_LOSSES}")
    if not self.center_coef >= 0:
      _config_error("center_coef", f"must be >= 0, got {self.center_coef}")
    if self.objective != "pairwise" and (self.margin or self.center_coef):
      field = "margin" if self.margin else "center_coef"
      _config_error(field, f"applies to objective 'pairwise' only, not {self.objective!r}")
    if self.num_levels < 2:
      _config_error("num_levels", f"must be >= 2, got {self.num_levels}")
    if not self.rating_scale > 0:
      _config_error("rating_scale", f"must be > 0, got {self.rating_scale}")

  @property
  def ordinal(self) -> bool:
    return self.objective == "rating" and self.rating_loss == "ordinal"


# --------------------------------------------------------------------------------------------
# Parameters.


def _softplus_inv(y: float) -> float:
  return math.log(math.expm1(y))


def init_params(policy_params: dict, model_config: ModelConfig, key: jax.Array,
                config: Config | None = None) -> dict:
  """Reward model from a policy (SFT) checkpoint: trunk copied, scalar head fresh.

  Args:
    policy_params: decoder params (an untied ``lm_head`` is dropped).
    key: ``uint32[2]`` head init key.
    config: with ``objective='rating', rating_loss='ordinal'`` also adds
      ``head.thresholds_raw float32[C−1]`` (thresholds evenly spaced by 1, centred on 0).
  Returns:
    ``{"trunk": ..., "head": {"kernel" float32[D], "bias" float32[], ["thresholds_raw"]}}``.
  """
  params = heads.init_from_policy(policy_params, model_config, key)
  if config is not None and config.ordinal:
    c = config.num_levels
    raw = np.full((c - 1,), _softplus_inv(1.0), np.float32)
    raw[0] = -(c - 2) / 2.0
    params["head"]["thresholds_raw"] = jnp.asarray(raw)
  return params


def ordinal_thresholds(params: dict) -> jax.Array:
  """Increasing ordinal thresholds float32 ``[C−1]`` from ``params["head"]["thresholds_raw"]``."""
  raw = params["head"]["thresholds_raw"].astype(jnp.float32)
  steps = jnp.concatenate([raw[:1], jax.nn.softplus(raw[1:])])
  return jnp.cumsum(steps)


def param_shardings(params_or_abstract: dict, model_config: ModelConfig, mesh) -> dict:
  """``NamedSharding`` tree of reward-model params: the trunk by the decoder's logical-axis rules,
  the head replicated.

  Args:
    params_or_abstract: the params (or their ``jax.eval_shape``), for the tree structure/shapes.
  """
  trunk_config = dataclasses.replace(model_config, tie_embeddings=True)
  trunk = tree_shardings(params_or_abstract["trunk"], param_logical_axes(trunk_config), mesh)
  head = jax.tree.map(lambda _: replicated(mesh), params_or_abstract["head"])
  return {"trunk": trunk, "head": head}


# --------------------------------------------------------------------------------------------
# Scoring.


def score(params: dict, model_config: ModelConfig, tokens: jax.Array, attention_mask: jax.Array,
          last_index: jax.Array) -> jax.Array:
  """Reward of each row: the head output at ``last_index`` (pure, jittable).

  Args:
    tokens: int32 ``[N, L]``; attention_mask: bool ``[N, L]``.
    last_index: int32 ``[N]`` index of each row's last real token (EOS).
  Returns:
    float32 ``[N]``.
  """
  chex.assert_rank([tokens, attention_mask, last_index], [2, 2, 1])
  chex.assert_equal_shape([tokens, attention_mask])
  chex.assert_equal_shape_prefix([tokens, last_index], 1)
  values = heads.token_values(params, model_config, tokens, attention_mask)
  idx = jnp.clip(last_index.astype(jnp.int32), 0, tokens.shape[1] - 1)
  return jnp.take_along_axis(values, idx[:, None], axis=1)[:, 0]


def _scores(params, model_config, tokens, attention_mask, last_index):
  """:func:`score` over ``[..., L]`` rows: float32 ``[...]``."""
  lead, length = tokens.shape[:-1], tokens.shape[-1]
  out = score(params, model_config, tokens.reshape(-1, length),
              attention_mask.reshape(-1, length), last_index.reshape(-1))
  return out.reshape(lead)


def make_scorer(model_config: ModelConfig, mesh=None, params_shardings=None) -> Callable:
  """A batch scorer ``scorer(params, tokens, attention_mask, last_index) -> float32[N]``.

  Without ``mesh`` it is ``jax.jit`` of :func:`score`. With ``mesh`` the jitted scorer runs on the
  mesh: the params are placed by ``params_shardings`` (default: :func:`param_shardings`, the
  training layout; a no-op when they are already there) and the rows over ``data × fsdp`` (mesh
  axes that do not divide ``N`` are dropped).
  """
  jitted = jax.jit(lambda params, tokens, attention_mask, last_index: score(
      params, model_config, tokens, attention_mask, last_index))
  if mesh is None:
    return jitted

  def scorer(params, tokens, attention_mask, last_index):
    shardings = params_shardings or param_shardings(params, model_config, mesh)
    rows = [jax.device_put(x, batch_sharding(mesh, jnp.ndim(x), shape=jnp.shape(x)))
            for x in (tokens, attention_mask, last_index)]
    return jitted(jax.device_put(params, shardings), *rows)

  return scorer


def normalization_stats(scores: jax.Array, mask: jax.Array | None = None) -> dict:
  """Mean and standard deviation of reward-model scores (e.g. over the training set).

  Args:
    scores: float ``[N]``; mask: optional bool ``[N]`` of the scores to count.
  Returns:
    ``{"mean": float32[], "std": float32[]}``.
  """
  s = jnp.asarray(scores, jnp.float32).reshape(-1)
  m = jnp.ones(s.shape, bool) if mask is None else jnp.asarray(mask, bool).reshape(-1)
  return {"mean": ops.masked_mean(s, m), "std": jnp.sqrt(ops.masked_var(s, m, unbiased=False))}


def normalize_scores(scores: jax.Array, stats: dict, eps: float = 1e-6) -> jax.Array:
  """``(scores − mean) / (std + eps)``: a normalised reward for RL. float32, shape of ``scores``."""
  return (jnp.asarray(scores, jnp.float32) - stats["mean"]) / (stats["std"] + eps)


# --------------------------------------------------------------------------------------------
# Losses.


def _pairs(k: int):
  """Static ranked-position pairs ``(i, j), i < j``: two int32 ``[P]`` arrays."""
  ij = np.array(list(itertools.combinations(range(k), 2)), np.int32).reshape(-1, 2)
  return ij[:, 0], ij[:, 1]


def _list_fields(batch: dict):
  tokens = batch["tokens"]
  lead, k = tokens.shape[:-2], tokens.shape[-2]
  ranking = batch["ranking"].astype(jnp.int32) if "ranking" in batch else jnp.broadcast_to(
      jnp.arange(k, dtype=jnp.int32), lead + (k,))
  valid = batch["valid"].astype(bool) if "valid" in batch else jnp.ones(lead + (k,), bool)
  chex.assert_shape([ranking, valid, batch["last_index"]], lead + (k,))
  return ranking, valid


def batch_weights(batch: dict, config: Config) -> dict:
  """Loss and metric weights over a whole batch (any leading dims, e.g. ``[A, b]``).

  Returns a dict of float32 arrays:

  * ``row``: ``[...]`` loss weight per prompt (``1 / counted prompts``);
  * ``pair``: ``[..., P]`` per ranked pair, ``1 / counted pairs`` (metrics); for ``pairwise``
    also ``pair_loss`` ``[..., P]`` = row weight / the prompt's pair count (the loss);
  * ``resp``: ``[..., K]`` per response index (``1 / counted responses``), score statistics.

  For ``rating``: ``row`` and ``resp`` are both ``[...]``.
  """
  norm = lambda x: x.astype(jnp.float32) / jnp.maximum(jnp.sum(x.astype(jnp.float32)), 1.0)
  if config.objective == "rating":
    lead = batch["tokens"].shape[:-1]
    ok = batch["valid"].astype(bool) if "valid" in batch else jnp.ones(lead, bool)
    return {"row": norm(ok), "resp": norm(ok)}
  ranking, valid = _list_fields(batch)
  k = ranking.shape[-1]
  if k < 2:
    raise ValueError(f"{config.objective!r} reward models need K >= 2 responses, got {k}")
  i, j = _pairs(k)
  pair_ok = valid[..., i] & valid[..., j]  # [..., P]
  per_row = jnp.sum(pair_ok.astype(jnp.float32), axis=-1)
  row = norm(per_row > 0)
  onehot = jax.nn.one_hot(ranking, k, dtype=bool) & valid[..., None]  # [..., pos, resp]
  out = {"row": row, "pair": norm(pair_ok), "resp": norm(jnp.any(onehot, axis=-2))}
  if config.objective == "pairwise":
    out["pair_loss"] = pair_ok * (row / jnp.maximum(per_row, 1.0))[..., None]
  return out


def soft_label_bt_loss(hard_loss: jax.Array, diff: jax.Array, probability: jax.Array
                       ) -> jax.Array:
  """Soft-label Bradley–Terry loss from the hard one (docs/algorithms.md §17, 19).

  ``−[p·log σ(d) + (1−p)·log σ(−d)] = −log σ(d) + (1−p)·d`` because ``log σ(d) − log σ(−d) = d``;
  so ``p = 1`` returns ``hard_loss`` exactly and ``p = 1/2`` is minimised at ``d = 0``.

  Args:
    hard_loss: float32 ``[N]`` ``−log σ(d)`` (plus any centering term, which is kept as is).
    diff: float32 ``[N]`` ``d = r_w − r_l − m``.
    probability: float ``[N]`` ``p = P(chosen ≻ rejected)``.
  Returns:
    float32 ``[N]``.
  """
  return hard_loss + (1.0 - probability.astype(jnp.float32)) * diff.astype(jnp.float32)


def _wsum(w, x):
  return jnp.sum(jnp.where(w > 0, w * x, 0.0))


def _list_loss(scores, micro, w, config: Config, params):
  """Loss and metric sums of a ``[b, K]`` score matrix."""
  del params
  ranking, valid = _list_fields(micro)
  k = scores.shape[-1]
  i, j = _pairs(k)
  s_ranked = jnp.take_along_axis(scores, ranking, axis=-1)
  hi, lo = s_ranked[:, i], s_ranked[:, j]  # [b, P]
  if config.objective == "pairwise":
    b, p = hi.shape
    margin = None
    if config.margin:
      margin = jnp.broadcast_to(micro["margin"].astype(jnp.float32)[:, None], (b, p)).reshape(-1)
    loss_pairs, _ = ops.bradley_terry_loss(hi.reshape(-1), lo.reshape(-1), margin=margin,
                                           center_coef=config.center_coef)
    if "probability" in micro and k == 2:  # Soft labels (pairs only).
      diff = hi.reshape(-1) - lo.reshape(-1) - (0.0 if margin is None else margin)
      loss_pairs = soft_label_bt_loss(loss_pairs, diff, micro["probability"].reshape(-1))
    loss = _wsum(w["pair_loss"], loss_pairs.reshape(b, p))
  else:
    loss_rows, _ = ops.plackett_luce_loss(scores, ranking, valid=valid)
    loss = _wsum(w["row"], loss_rows)
  sg = jax.lax.stop_gradient
  sums = {"accuracy": _wsum(w["pair"], sg(hi > lo).astype(jnp.float32)),
          "margin": _wsum(w["pair"], sg(hi - lo)),
          "score_mean": _wsum(w["resp"], sg(scores)),
          "score_sq": _wsum(w["resp"], sg(scores) ** 2)}
  return loss, sums


def _rating_loss(scores, micro, w, config: Config, params):
  """Loss and metric sums of ``[b]`` rating scores."""
  sg = jax.lax.stop_gradient
  y = micro["score"].astype(jnp.float32)
  if config.ordinal:
    if "thresholds_raw" not in params["head"]:
      raise ValueError("ordinal ratings need learnable thresholds in the head params: create the "
                       "params with init_params(..., config=config)")
    th = ordinal_thresholds(params)
    levels = jnp.clip(jnp.round(y), 0, config.num_levels - 1).astype(jnp.int32)
    loss_rows, _ = ops.pointwise_reward_loss(scores, levels, kind="ordinal", thresholds=th)
    predicted = jnp.sum(sg(scores)[:, None] > sg(th)[None, :], axis=-1)  # Median level.
    err = jnp.abs(predicted - levels).astype(jnp.float32)
    extra = {"level_accuracy": _wsum(w["row"], (predicted == levels).astype(jnp.float32))}
  else:
    target = (y - config.rating_offset) / config.rating_scale
    loss_rows, _ = ops.pointwise_reward_loss(scores, target, kind="regression")
    err = jnp.abs(sg(scores) - target)
    extra = {}
  sums = {"mae": _wsum(w["row"], err), "score_mean": _wsum(w["resp"], sg(scores)),
          "score_sq": _wsum(w["resp"], sg(scores) ** 2), **extra}
  return _wsum(w["row"], loss_rows), sums


def loss_fn(params: dict, model_config: ModelConfig, micro: dict, weights: dict,
            config: Config):
  """Weighted reward-model loss of one micro-batch.

  Args:
    micro: one micro-batch without the accumulation axis (``[b, K, L]`` or ``[b, L]`` for
      ratings).
    weights: the matching slice of :func:`batch_weights` over the whole batch.
  Returns:
    (loss float32 scalar, dict of weighted metric sums, float32 scalars).
  """
  if config.objective == "rating":
    chex.assert_rank(micro["tokens"], 2)
  else:
    chex.assert_rank(micro["tokens"], 3)
  chex.assert_equal_shape([micro["tokens"], micro["attention_mask"]])
  scores = _scores(params, model_config, micro["tokens"], micro["attention_mask"],
                   micro["last_index"])
  body = _rating_loss if config.objective == "rating" else _list_loss
  return body(scores, micro, weights, config, params)


def _metrics(loss, sums, loss_key: str) -> dict:
  out = {loss_key: loss}
  for name, value in sums.items():
    if name != "score_sq":
      out[f"rm/{name}"] = value
  out["rm/score_std"] = jnp.sqrt(jnp.maximum(sums["score_sq"] - sums["score_mean"] ** 2, 0.0))
  return out


def _metric_names(config: Config):
  if config.objective == "rating":
    return ("mae", "score_mean", "score_sq") + (("level_accuracy",) if config.ordinal else ())
  return ("accuracy", "margin", "score_mean", "score_sq")


def make_update(model_config: ModelConfig, tx: optax.GradientTransformation, schedule: Callable,
                config: Config = Config()):
  """Builds the pure ``update(state, batch) -> (state, metrics)`` for reward-model training.

  ``state.params`` are reward-model params (:func:`init_params`). ``batch`` carries the
  accumulation axis ``A``: pairs / rankings ``tokens int32[A, b, K, L]``, ``attention_mask
  bool[A, b, K, L]``, ``last_index int32[A, b, K]``, ``ranking int32[A, b, K]``, ``margin
  float32[A, b]`` (read only when ``Config.margin``), optional ``probability float32[A, b]`` (soft
  labels, ``pairwise`` pairs), optional ``valid bool[A, b, K]``; ratings
  ``tokens int32[A, b, L]``, ``attention_mask``, ``last_index int32[A, b]``, ``score
  float32[A, b]``, optional ``valid bool[A, b]``.

  Metrics (float32 scalars): ``train/loss``, ``rm/score_mean``, ``rm/score_std``; pairs and
  rankings ``rm/accuracy`` (fraction of correctly ordered ranked pairs), ``rm/margin`` (mean
  ``r_better − r_worse`` over those pairs); ratings ``rm/mae`` (and ``rm/level_accuracy`` for
  ordinal); ``train/grad_norm``, ``train/learning_rate``, ``train/skipped``,
  ``train/skipped_total``.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  names = _metric_names(config)

  def update(state: TrainState, batch: dict):
    chex.assert_rank(batch["tokens"], 3 if config.objective == "rating" else 4)
    chex.assert_equal_shape([batch["tokens"], batch["attention_mask"]])
    weights = batch_weights(batch, config)

    micro_grads = lambda params, micro, w: grad_fn(params, model_config, micro, w, config)
    new_state, loss, sums, step_metrics = accumulate_and_apply(
        state, tx, micro_grads, batch, weights, names, schedule)
    metrics = _metrics(loss, sums, "train/loss")
    metrics.update(step_metrics)
    return new_state, metrics

  return update


def evaluate(params: dict, model_config: ModelConfig, batch: dict, config: Config = Config()
             ) -> dict:
  """Reward-model loss and metrics of a held-out batch (pure, jittable; no update).

  Args:
    batch: one batch *without* the accumulation axis (``tokens int32[B, K, L]`` ..., or
      ``[B, L]`` for ratings), keys as in :func:`make_update`.
  Returns:
    float32 scalars ``rm/loss`` and the ``rm/*`` metrics of :func:`make_update`.
  """
  weights = batch_weights(batch, config)
  loss, sums = loss_fn(params, model_config, batch, weights, config)
  return _metrics(loss, sums, "rm/loss")
