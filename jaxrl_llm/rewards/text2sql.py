"""Text2SQL execution match as a registered reward function (rows carry their database's path).

The data pipeline gives every Text2SQL row a ``db_path`` column (the synthetic databases, or the
Spider / BIRD database the row's ``db_id`` resolves to), so the reward needs no configuration: it
executes the completion's SQL and the gold SQL (``answer``) read-only on that file and compares the
results with Spider test-suite bag semantics, ordered only when the gold has a top-level
``ORDER BY`` (:mod:`jaxrl_llm.envs.text2sql`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from jaxrl_llm.envs.text2sql import make_text2sql_reward, sql_format


def _by_directory(db_path: Sequence[str]) -> tuple[list[str], list[str]]:
  dirs, ids = [], []
  for i, path in enumerate(db_path):
    path = str(path)
    if not path.endswith(".sqlite"):
      raise ValueError(f"text2sql reward: column 'db_path' row {i}: {path!r} is not a .sqlite "
                       "file")
    dirs.append(os.path.dirname(path))
    ids.append(os.path.basename(path)[: -len(".sqlite")])
  return dirs, ids


def text2sql_execution(prompts: list[str], completions: list[str], *, db_path: Sequence[str],
                       answer: Sequence[str], **_: Any) -> np.ndarray:
  """1.0 where the completion's SQL returns the gold SQL's result on the row's database, else 0.

  Args:
    prompts, completions: ``B`` strings; db_path: ``B`` SQLite files; answer: ``B`` gold SQL.
  Returns:
    float32 ``[B]``. A missing database or a failing gold query raises (a dataset error).
  """
  dirs, ids = _by_directory(db_path)
  out = np.zeros((len(completions),), np.float32)
  for directory in sorted(set(dirs)):
    rows = [i for i, d in enumerate(dirs) if d == directory]
    fn = make_text2sql_reward(directory)
    out[rows] = fn([prompts[i] for i in rows], [completions[i] for i in rows],
                   db_id=[ids[i] for i in rows], answer=[answer[i] for i in rows])
  return out


__all__ = ["sql_format", "text2sql_execution"]
