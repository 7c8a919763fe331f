"""Multi-process (multi-host) runs on JAX's multi-controller runtime.

Every process runs the same program; together their devices form one global mesh. A run is made
multi-process by environment variables, which the launcher (``jaxrl-llm launch``) sets for local
runs and a cluster script sets on each host:

* ``JAXRL_LLM_COORDINATOR`` (``host:port`` of process 0), ``JAXRL_LLM_NUM_PROCESSES``,
  ``JAXRL_LLM_PROCESS_ID`` -- explicit (CPU, GPU clusters, tests);
* on a Cloud TPU slice, ``JAXRL_LLM_DISTRIBUTED=auto`` (what ``tpu/pod.py run`` sets):
  :func:`initialize` calls ``jax.distributed.initialize()``, which reads the TPU VM's metadata.

What the loops rely on (this slice): every process runs the host-side pipeline (data, sampling
bookkeeping, rewards) on the same global batch — deterministic, so all processes agree on every
number — and builds global arrays from it with ``jax.device_put`` (each process keeps its own
shards); :func:`device_get` reads any array back, gathering the shards other processes hold;
only process 0 writes files (:func:`is_primary`, :func:`primary_first`).
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
import numpy as np

ENV_COORDINATOR = "JAXRL_LLM_COORDINATOR"
ENV_NUM_PROCESSES = "JAXRL_LLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXRL_LLM_PROCESS_ID"
ENV_TIMEOUT = "JAXRL_LLM_INIT_TIMEOUT_S"

_STARTED = False


def initialize(env=None) -> bool:
  """Starts the multi-controller runtime when the environment asks for one; returns whether this
  is a multi-process run. Call before anything touches a device. Idempotent.

  Raises:
    ValueError: a partial or malformed set of ``JAXRL_LLM_*`` variables, naming the variable.
    RuntimeError: the runtime could not start. When peers do not all join within
      ``JAXRL_LLM_INIT_TIMEOUT_S`` (default 120) seconds, JAX's runtime aborts the process
      instead (``SIGABRT``); the line logged before names the process, the coordinator and the
      deadline, and ``jaxrl-llm launch`` reports which process failed first.
  """
  global _STARTED
  env = os.environ if env is None else env
  if _STARTED:
    return jax.process_count() > 1
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  given = [n for n in names if env.get(n)]
  if given and len(given) < 3:
    missing = [n for n in names if n not in given]
    raise ValueError(f"multi-process run: {', '.join(given)} set but {', '.join(missing)} not "
                     "(set all three, or use `jaxrl-llm launch`)")
  if given:
    try:
      num, pid = int(env[ENV_NUM_PROCESSES]), int(env[ENV_PROCESS_ID])
    except ValueError:
      raise ValueError(f"{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be integers, got "
                       f"{env[ENV_NUM_PROCESSES]!r} and {env[ENV_PROCESS_ID]!r}") from None
    if not 0 <= pid < num:
      raise ValueError(f"{ENV_PROCESS_ID}={pid} must be in [0, {ENV_NUM_PROCESSES}={num})")
    timeout = int(float(env.get(ENV_TIMEOUT, "120")))
    # JAX's runtime aborts the process (no Python exception) when a peer does not join in time;
    # this line is what names the run, the process and the deadline in its log.
    print(f"jaxrl-llm: process {pid} of {num} joining the run at {env[ENV_COORDINATOR]} (every "
          f"process must join within {timeout} s)", file=sys.stderr, flush=True)
    try:
      jax.distributed.initialize(env[ENV_COORDINATOR], num_processes=num, process_id=pid,
                                 initialization_timeout=timeout)
    except Exception as e:  # noqa: BLE001 -- re-raised with who waited for whom.
      raise RuntimeError(f"process {pid} of {num} could not join the run at coordinator "
                         f"{env[ENV_COORDINATOR]} within {timeout} s (a peer never started or "
                         f"died): {e}") from e
    _STARTED = True
    return num > 1
  if env.get("JAXRL_LLM_DISTRIBUTED") == "auto" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    # A Cloud TPU slice (tpu/pod.py run sets the variable): JAX reads the VM's metadata.
    jax.distributed.initialize()
    _STARTED = True
    return jax.process_count() > 1
  return False


def is_primary() -> bool:
  """Whether this process writes files, logs and progress (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have arrived (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def primary_first(name: str):
  """Process 0 runs the block first (builds a dataset, writes a file), then the others run it
  (and find the result in place)."""
  if not is_primary():
    barrier(f"{name}:primary-done")
  yield
  if is_primary():
    barrier(f"{name}:primary-done")


def _remote(x) -> bool:
  return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated


def device_get(tree):
  """``jax.device_get`` that also reads arrays whose shards live on other processes (gathered:
  every process gets the whole value). In a single-process run it is ``jax.device_get``."""
  if not any(_remote(x) for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
                      if _remote(x) else jax.device_get(x), tree)


def allgather_sum(x: np.ndarray) -> np.ndarray:
  """The elementwise sum of host array ``x`` over all processes (``x`` itself in one process)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(axis=0)


def allgather_rows(mine: np.ndarray, bounds) -> np.ndarray:
  """Every process's rows concatenated in process order: process ``i`` holds rows
  ``bounds[i]:bounds[i + 1]`` of the result as ``mine`` (shares may differ in length by one)."""
  from jax.experimental import multihost_utils

  sizes = np.diff(np.asarray(bounds))
  width = int(sizes.max())
  padded = np.zeros((width,) + mine.shape[1:], mine.dtype)
  padded[:len(mine)] = mine
  every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, width, ...]
  return np.concatenate([every[i, :sizes[i]] for i in range(len(sizes))])


def broadcast_int(value: int) -> int:
  """Process 0's ``value`` on every process (``value`` itself in one process)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))
