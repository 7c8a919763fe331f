"""KL estimators and KL-coefficient controllers (docs/algorithms.md §1.3).

Reference: Schulman (2020), "Approximating KL Divergence"; adaptive controller: Ziegler et al.,
"Fine-Tuning Language Models from Human Preferences", arXiv:1909.08593.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

KL_KINDS = ("k1", "abs", "k2", "k3", "k1+", "abs+", "k2+", "k3+")
_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}


def _estimate(delta: jax.Array, kind: str) -> jax.Array:
  if kind == "k1":
    return delta
  if kind == "abs":
    return jnp.abs(delta)
  if kind == "k2":
    return 0.5 * delta * delta
  if kind == "k3":
    # verl clamps −δ to [−20, 20] before exp and the result to [−10, 10].
    neg = jnp.clip(-delta, -20.0, 20.0)
    return jnp.clip(jnp.exp(neg) - 1.0 + delta, -10.0, 10.0)
  raise ValueError(f"unknown KL estimator {kind!r}; known: {KL_KINDS} (aliases {_ALIASES})")


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str, *, mask: jax.Array | None = None
               ) -> jax.Array:
  """Per-token KL estimate from sampled-token log-probs, ``δ = logp − ref_logp``.

  * ``k1`` = δ (unbiased, can be negative) · ``abs`` = ``|δ|`` · ``k2`` = ½δ² (its gradient is the
    reverse-KL gradient) · ``k3`` = exp(−δ) − 1 + δ (unbiased, non-negative; clamped as verl does).
  * ``X+`` (``k1+``, ``k3+``, ...): the value of estimator X with the gradient of k2 —
    ``k2 − sg(k2) + sg(kX)`` (verl's straight-through form).

  For the full-vocabulary KL use :func:`jaxrl_llm.ops.full_kl_from_logits` or the fused kernel.

  Args:
    logp, ref_logp: float ``[B, T]`` (any matching shapes).
    kind: one of ``KL_KINDS`` (verl names ``kl``, ``mse``, ``low_var_kl`` also accepted).
    mask: optional; masked entries are computed from δ = 0 so garbage never reaches a gradient,
      and the result there is 0.
  Returns:
    float32, same shape as ``logp``.

  >>> round(float(kl_penalty(jnp.array(-1.0), jnp.array(-1.5), "k3")), 6)
  0.106531
  """
  chex.assert_equal_shape([logp, ref_logp])
  kind = _ALIASES.get(kind, kind)
  delta = logp.astype(jnp.float32) - ref_logp.astype(jnp.float32)
  if mask is not None:
    chex.assert_equal_shape([logp, mask])
    delta = jnp.where(mask.astype(bool), delta, 0.0)
  if kind.endswith("+"):
    k2 = _estimate(delta, "k2")
    out = k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(_estimate(delta, kind[:-1]))
  else:
    out = _estimate(delta, kind)
  return out if mask is None else jnp.where(mask.astype(bool), out, 0.0)


class KLControllerState(NamedTuple):
  """``coef``: float32 scalar, the current KL coefficient β."""

  coef: jax.Array


class KLController(NamedTuple):
  """An optax-style pair of pure functions.

  ``init() -> KLControllerState``;
  ``update(state, observed_kl, n_steps) -> KLControllerState`` after each rollout step.
  """

  init: Callable[[], KLControllerState]
  update: Callable[[KLControllerState, jax.Array, jax.Array], KLControllerState]


def FixedKLController(kl_coef: float = 0.001) -> KLController:  # noqa: N802 (optax-style factory)
  """β stays ``kl_coef`` (verl default 0.001)."""

  def init():
    return KLControllerState(coef=jnp.asarray(kl_coef, jnp.float32))

  def update(state, observed_kl, n_steps):
    del observed_kl, n_steps
    return state

  return KLController(init, update)


def AdaptiveKLController(init_kl_coef: float = 0.001, *, target_kl: float = 0.1,  # noqa: N802
                         horizon: float = 10000) -> KLController:
  """Ziegler et al. (2019) proportional controller.

  ``e = clip(KL_obs / KL_target − 1, −0.2, 0.2)``; ``β ← β·(1 + e·n_steps / horizon)``, where
  ``n_steps`` is the number of sequences in the batch and ``KL_obs`` the batch mean of per-row
  mean KL (verl convention). Defaults are verl's (0.001, 0.1, 10000).
  """
  if target_kl <= 0 or horizon <= 0:
    raise ValueError(f"target_kl and horizon must be > 0, got {target_kl}, {horizon}")

  def init():
    return KLControllerState(coef=jnp.asarray(init_kl_coef, jnp.float32))

  def update(state, observed_kl, n_steps):
    error = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / target_kl - 1.0, -0.2, 0.2)
    mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon
    return KLControllerState(coef=state.coef * mult)

  return KLController(init, update)
