"""Filters: which groups (and rows) of a scored round are kept.

A filter is ``fn(setup, rows, num_groups) -> Keep``: ``Keep.groups`` (bool ``[num_groups]``,
None = all) drops whole groups, and the round is refilled from the next prompts until
``rollout.prompts_per_step`` groups survive (or ``algorithm.max_gen_rounds``); ``Keep.rows``
(bool ``[n]``, None = all) keeps a row in the batch but out of training and out of its group's
statistics (shapes stay static). Built in:

* ``"nonconstant_groups"`` -- DAPO's dynamic sampling (docs/algorithms.md §5): a group whose
  accuracy is the same for every scorable row carries no signal; a group with one scorable row
  is kept. ``algorithm.dynamic_sampling=true`` adds it.
* ``"verified_demonstrations"`` -- a teacher trace the verifier rejects (accuracy < 1) is not
  trained on (docs/algorithms.md §12: a wrong trace in an otherwise correct group would be pushed
  down without a clip).
* ``"accuracy_band"`` -- keeps groups whose mean on-policy accuracy lies in
  ``[rollout.accuracy_band_low, rollout.accuracy_band_high]`` (PRIME's filter, §10).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Keep:
  """A filter's verdict: ``groups`` bool ``[num_groups]`` and/or ``rows`` bool ``[n]``."""

  groups: np.ndarray | None = None
  rows: np.ndarray | None = None


def group_std(values: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
  """Population std of the finite values of each group (NaN where a group has none)."""
  out = np.full((num_groups,), np.nan)
  for g in range(num_groups):
    v = values[groups == g]
    v = v[np.isfinite(v)]
    if len(v):
      out[g] = float(np.std(v))
  return out


def nonconstant_groups(setup, rows: dict, num_groups: int) -> Keep:
  acc, gid = rows["accuracy"], rows["group_ids"]
  std = group_std(acc, gid, num_groups)
  keep = np.asarray([std[g] > 0 or np.sum(np.isfinite(acc[gid == g])) == 1
                     for g in range(num_groups)], bool)
  return Keep(groups=keep)


def verified_demonstrations(setup, rows: dict, num_groups: int) -> Keep:
  demo = rows["is_demonstration"]
  ok = ~demo | (np.nan_to_num(rows["accuracy"], nan=0.0) >= 1.0)
  return Keep(rows=ok)


def accuracy_band(setup, rows: dict, num_groups: int) -> Keep:
  rc = setup.config.rollout
  on = ~rows["is_demonstration"]
  acc = np.nan_to_num(rows["accuracy"], nan=0.0)
  keep = np.zeros(num_groups, bool)
  for g in range(num_groups):
    sel = on & (rows["group_ids"] == g)
    mean = float(acc[sel].mean()) if sel.any() else 0.0
    keep[g] = rc.accuracy_band_low <= mean <= rc.accuracy_band_high
  return Keep(groups=keep)


FILTERS = {"nonconstant_groups": nonconstant_groups,
           "verified_demonstrations": verified_demonstrations,
           "accuracy_band": accuracy_band}
