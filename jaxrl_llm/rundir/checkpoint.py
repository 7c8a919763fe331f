"""Orbax checkpointing of the whole TrainState plus host-side iterator state.

Orbax writes each step into a temporary directory and renames it only when complete, so a
half-written checkpoint (a crash or SIGKILL mid-save) is never listed, never restored, and is cleaned
up by the next manager that opens the directory. Saves are asynchronous: device arrays are copied to
host before :meth:`Checkpointer.save` returns, and the files are written in the background.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of ``(TrainState, extra JSON)`` under ``directory``."""

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, extra: dict[str, Any], *, force: bool = False) -> bool:
    """Saves ``state`` (any pytree of arrays) and ``extra`` (JSON-able host state) at ``step``."""
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)), force=force)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``(state, extra)``. ``abstract_state`` holds ``ShapeDtypeStruct`` leaves with shardings,
    so arrays land directly in their target sharding. ``None``: every array on this process's
    first device, whatever layout (devices, processes) wrote the checkpoint."""
    if abstract_state is None:
      meta = self._manager.item_metadata(step)["state"].tree
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract_state = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta,
          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return out["state"], dict(out["extra"])

  def wait(self) -> None:
    """Blocks until every pending asynchronous save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """``ShapeDtypeStruct`` tree carrying ``shardings``, for :meth:`Checkpointer.restore`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


class Preempted(Exception):
  """A loop stopped on SIGTERM after checkpointing step ``step``; ``resume`` continues exactly."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM): stopped after step {step}, checkpoint saved")
    self.step = step


class CheckpointCadence:
  """When to checkpoint: every ``every_steps`` steps, when ``every_minutes`` of wall clock have
  passed since the last checkpoint (0: never by time), at the end of the run, and after the step
  in which the process received SIGTERM (preemptible TPU VMs, cluster schedulers): the loop then
  saves that step and stops (:meth:`stop_if_preempted`). What a checkpoint holds does not depend
  on when it was taken, so results stay identical.

  The SIGTERM handler is installed while the cadence is open (main thread only) and the previous
  one restored by :meth:`close`."""

  def __init__(self, every_steps: int, every_minutes: float):
    self.every_steps = int(every_steps)
    self.every_s = float(every_minutes) * 60.0
    self._last = time.monotonic()
    self.preempted = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    self.preempted = True

  def close(self) -> None:
    """Restores the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def due(self, done: int, final: bool) -> bool:
    """Whether to save after step ``done``; resets the clock when it says yes."""
    now = time.monotonic()
    timed = self.every_s > 0 and now - self._last >= self.every_s
    if jax.process_count() > 1:
      # Every process must save (and stop) at the same step: a SIGTERM may reach them on either
      # side of a step boundary, and wall clocks differ. One tiny all-gather per step.
      from jax.experimental import multihost_utils
      import numpy as np

      flags = multihost_utils.process_allgather(np.asarray([self.preempted, timed]))
      self.preempted, timed = (bool(x) for x in np.asarray(flags).reshape(-1, 2).any(axis=0))
    yes = final or self.preempted or done % self.every_steps == 0 or timed
    if yes:
      self._last = now
    return yes

  def stop_if_preempted(self, done: int, final: bool, *closers) -> None:
    """After step ``done`` was saved: on SIGTERM (and not at the last step), closes ``closers``
    (the checkpointer first: it waits for the save to be complete) and raises
    :class:`Preempted`."""
    if self.preempted and not final:
      for c in closers:
        c.close()
      self.close()
      raise Preempted(done)
