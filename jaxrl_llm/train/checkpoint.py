"""Orbax checkpointing of the whole TrainState plus host-side iterator state.

Orbax writes each step into a temporary directory and renames it only when complete, so a
half-written checkpoint (a crash or SIGKILL mid-save) is never listed, never restored, and is cleaned
up by the next manager that opens the directory. Saves are asynchronous: device arrays are copied to
host before :meth:`Checkpointer.save` returns, and the files are written in the background.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last ``keep`` checkpoints of ``(TrainState, extra JSON)`` under ``directory``."""

  def __init__(self, directory: str | os.PathLike, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

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
    """Restores ``(state, extra)``. ``abstract_state`` holds ``ShapeDtypeStruct``s with shardings,
    so arrays land directly in their target sharding."""
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
