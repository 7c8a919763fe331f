"""Naming user code by import path (``"package.module:attr"``) so a run's config.json can record
it: reward functions, experiments, data builders and prompt templates."""

from __future__ import annotations

import importlib


def is_import_path(name: str) -> bool:
  """Whether ``name`` looks like ``"package.module:attr"`` (rather than a built-in name)."""
  module, sep, attr = name.partition(":")
  return bool(sep and module and attr)


def import_object(path: str):
  """The object named by an import path ``"package.module:attr"`` (``attr`` may be dotted).

  Raises:
    ImportError: the module cannot be imported (the cause is chained and named), or has no
      such attribute.
  """
  module_name, _, attr = path.partition(":")
  if not module_name or not attr:
    raise ImportError(f"{path!r} is not an import path of the form 'package.module:name'")
  try:
    obj = importlib.import_module(module_name)
  except Exception as e:  # noqa: BLE001 -- any failure of user code while importing.
    raise ImportError(f"cannot import module {module_name!r} for {path!r}: "
                      f"{type(e).__name__}: {e}") from e
  for part in attr.split("."):
    try:
      obj = getattr(obj, part)
    except AttributeError:
      raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})"
                        ) from None
  return obj


def import_callable(path: str, what: str = "a callable"):
  """:func:`import_object`, which must be callable.

  Args:
    what: how the error names the expected object (e.g. ``"a reward function"``).
  Raises:
    ImportError: as :func:`import_object`, or the object is not callable.
  """
  obj = import_object(path)
  if not callable(obj):
    raise ImportError(f"{path!r} is a {type(obj).__name__}, not {what}")
  return obj


__all__ = ["import_callable", "import_object", "is_import_path"]
