"""Synthetic tasks other than arithmetic as one TFDS builder (``array_record``, no TensorFlow).

Each task is a pure generator ``params -> {split: [row dicts of str]}`` registered in
:data:`GENERATORS`; :func:`prepare_synthetic` builds the dataset once per distinct parameter set
(the builder config's name carries a hash of the task and its parameters, so changing a parameter
builds a new dataset instead of silently reading a stale one) and returns random-access sources.

Tasks:

* ``countdown`` -- TinyZero-style: reach ``target`` from ``nums`` with ``+ - * /``
  (:func:`jaxrl_llm.rewards.countdown.generate_countdown`); fields prompt, answer (one valid
  expression, the SFT target), nums (JSON), target.
* ``text2sql`` -- questions over small generated SQLite databases
  (:mod:`jaxrl_llm.envs.text2sql`); fields prompt, answer (gold SQL), db_id. The database files are
  written next to the dataset (``<data_dir>/text2sql_databases/<config name>/``) and
  :func:`text2sql_database_dir` finds them; they are rebuilt if missing.
* ``sorted_digits`` -- the synthetic preference task's SFT demonstrations
  (:mod:`jaxrl_llm.data.preference`); fields prompt, answer.
* ``chain`` -- multi-operand arithmetic with step-by-step teacher traces
  (:mod:`jaxrl_llm.data.reasoning`); fields prompt, answer, demonstration, level; splits
  ``train`` / ``validation`` / ``test`` (easy) and the same with ``_hard``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")


def _countdown(params: dict) -> dict[str, list[dict]]:
  from jaxrl_llm.rewards.countdown import generate_countdown

  sizes = [params[f"{s}_size"] for s in SPLITS]
  rows = generate_countdown(sum(sizes), seed=params["seed"], num_count=params["numbers"],
                            max_number=params["max_number"])
  return _split(rows, sizes)


def _text2sql(params: dict) -> dict[str, list[dict]]:
  from jaxrl_llm.envs.text2sql import generate_text2sql

  return generate_text2sql(params["database_dir"], seed=params["seed"],
                           train_size=params["train_size"],
                           validation_size=params["validation_size"],
                           test_size=params["test_size"])


def _sorted_digits(params: dict) -> dict[str, list[dict]]:
  from jaxrl_llm.data.sorted_digits import generate_sft_demos

  out = {}
  for i, s in enumerate(SPLITS):
    out[s] = generate_sft_demos(params[f"{s}_size"], seed=params["seed"] * 3 + i,
                                sorted_fraction=params["sorted_fraction"])
  return out


def _chain(params: dict) -> dict[str, list[dict]]:
  from jaxrl_llm.data.reasoning import generate

  sizes = {s: params[f"{s}_size"] for s in SPLITS}
  return generate({"easy": sizes, "hard": sizes}, seed=params["seed"],
                  easy_operands=params["easy_operands"], hard_operands=params["hard_operands"],
                  max_operand=params["max_operand"], operators=params["operators"],
                  hard_max_operand=params.get("hard_max_operand", 0))


def _split(rows: list[dict], sizes: list[int]) -> dict[str, list[dict]]:
  out, start = {}, 0
  for name, size in zip(SPLITS, sizes):
    out[name] = rows[start:start + size]
    start += size
  return out


GENERATORS: dict[str, Callable[[dict], dict[str, list[dict]]]] = {
    "countdown": _countdown,
    "text2sql": _text2sql,
    "sorted_digits": _sorted_digits,
    "chain": _chain,
}
# The text fields of each task's rows (the TFDS feature dict).
FIELDS: dict[str, tuple[str, ...]] = {
    "countdown": ("prompt", "answer", "nums", "target"),
    "text2sql": ("prompt", "answer", "db_id"),
    "sorted_digits": ("prompt", "answer"),
    "chain": ("prompt", "answer", "demonstration", "level"),
}


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  task: str = "countdown"
  params_json: str = "{}"


def make_builder_config(task: str, params: dict[str, Any]) -> SyntheticConfig:
  """A builder config named ``<task>_<hash of params>`` (one cache entry per parameter set).

  ``params`` must be JSON-serialisable; keys starting with ``_`` are passed to the generator but
  left out of the hash (paths that do not change the content).
  """
  if task not in GENERATORS:
    raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(GENERATORS)}")
  hashed = {k: v for k, v in params.items() if not k.startswith("_")}
  digest = hashlib.sha256(json.dumps([task, hashed], sort_keys=True).encode()).hexdigest()[:12]
  return SyntheticConfig(name=f"{task}_{digest}", task=task,
                         params_json=json.dumps(params, sort_keys=True))


class SyntheticTask(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the registered synthetic tasks. Pass ``config=make_builder_config(...)``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    fields = FIELDS[self.builder_config.task]
    return tfds.core.DatasetInfo(
        builder=self, description=f"Synthetic {self.builder_config.task} task.",
        features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in fields}))

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    splits = GENERATORS[cfg.task](_generator_params(cfg))
    return {name: self._generate_examples(rows, FIELDS[cfg.task])
            for name, rows in splits.items() if rows}

  def _generate_examples(self, rows, fields):
    for i, row in enumerate(rows):
      yield i, {k: str(row[k]) for k in fields}


def _generator_params(cfg: SyntheticConfig) -> dict:
  params = json.loads(cfg.params_json)
  return {k.lstrip("_"): v for k, v in params.items()}


def text2sql_database_dir(data_dir: str, config_name: str) -> str:
  """Where the synthetic Text2SQL databases of one builder config live."""
  return os.path.join(data_dir, "text2sql_databases", config_name)


def prepare_synthetic(data_dir: str, task: str, params: dict[str, Any]):
  """Builds ``task`` with ``params`` if it is not on disk; returns ``({split: source}, config)``.

  For ``text2sql`` the databases are (re)generated into :func:`text2sql_database_dir` when any is
  missing, so a dataset cache never points at deleted databases.
  """
  tfds.disable_progress_bar()
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)
  params = dict(params)
  if task == "text2sql":
    probe = make_builder_config(task, params)
    params["_database_dir"] = text2sql_database_dir(data_dir, probe.name)
  cfg = make_builder_config(task, params)
  from jaxrl_llm.parallel.distributed import primary_first

  # Multi-process: process 0 builds, the others then open it (a builder made before the data
  # exists does not see its splits afterwards, so it is made inside).
  with primary_first(f"tfds:{cfg.name}"):
    builder = SyntheticTask(config=cfg, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    if task == "text2sql":
      # Idempotent: writes only databases that are missing (same seed, same bytes).
      GENERATORS[task](_generator_params(cfg))
  return builder.as_data_source(), cfg
