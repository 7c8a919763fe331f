"""Named PRNG streams derived from one root seed.

One root key comes from ``config.seed``; each purpose gets its own stream by folding in a fixed
integer tag, and each step folds in the step number. Adding a new purpose never shifts the numbers
of an existing one, so runs stay reproducible as the framework grows.

>>> k = purpose_key(0, "init")
>>> step_key(purpose_key(0, "dropout"), 3).shape
(2,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Fixed tags: never renumber, only append.
PURPOSES = {"init": 0, "data": 1, "dropout": 2, "sampling": 3, "eval": 4, "lora": 5}


def root_key(seed: int) -> jax.Array:
  """``uint32[2]`` root key of a run (raw ``PRNGKey`` layout, checkpoint-friendly)."""
  return jax.random.PRNGKey(seed)


def purpose_key(seed_or_key, purpose: str) -> jax.Array:
  """``uint32[2]`` key of one named stream (``init``, ``data``, ``dropout``, ``sampling``, ``eval``,
  ``lora``)."""
  if purpose not in PURPOSES:
    raise KeyError(f"unknown PRNG purpose {purpose!r}; known: {sorted(PURPOSES)}")
  key = root_key(seed_or_key) if isinstance(seed_or_key, int) else seed_or_key
  return jax.random.fold_in(key, PURPOSES[purpose])


def step_key(key: jax.Array, step) -> jax.Array:
  """The key of ``step`` within a stream: ``fold_in(key, step)`` (works on traced steps)."""
  return jax.random.fold_in(key, jnp.asarray(step, jnp.uint32))


def numpy_seed(key: jax.Array) -> np.ndarray:
  """Host-side ``uint32`` seed material from a key, for ``np.random.default_rng`` (data shuffling)."""
  return np.asarray(jax.device_get(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                                   else key), dtype=np.uint32)
