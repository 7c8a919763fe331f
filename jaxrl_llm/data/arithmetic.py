"""Synthetic integer arithmetic as a TFDS builder, generated locally in ``array_record`` format.

Each example is ``{"prompt": "37+48=", "answer": "85"}``. Operands are drawn uniformly from
``[0, 10**digits)`` with one of the configured operators; every (a, op, b) appears at most once
across all splits, so train / validation / test never overlap. Which problems are generated
depends only on the builder config (digits, operators, split sizes, dataset seed), never on the
training seed.

TensorFlow is not needed: TFDS writes and reads ``array_record`` files without it, and
``as_data_source()`` gives random access for our own deterministic shuffling.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

import tensorflow_datasets as tfds

_OP_NAMES = {"+": "p", "-": "m", "*": "t"}


def default_data_dir() -> str:
  """``$JAXRL_LLM_DATA_DIR`` or ``~/.cache/jaxrl_llm/tfds``."""
  return os.environ.get("JAXRL_LLM_DATA_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxrl_llm", "tfds")


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(tfds.core.BuilderConfig):
  digits: int = 2
  operators: str = "+-"
  train_size: int = 1000
  validation_size: int = 100
  test_size: int = 100
  dataset_seed: int = 0


def make_builder_config(digits: int, operators: str, train_size: int, validation_size: int,
                        test_size: int, dataset_seed: int) -> ArithmeticConfig:
  """A builder config whose name encodes every generation parameter (one cache entry each)."""
  ops = "".join(_OP_NAMES[o] for o in operators)
  name = f"d{digits}_{ops}_n{train_size}-{validation_size}-{test_size}_s{dataset_seed}"
  return ArithmeticConfig(name=name, digits=digits, operators=operators, train_size=train_size,
                          validation_size=validation_size, test_size=test_size,
                          dataset_seed=dataset_seed)


def _apply(a: int, op: str, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def generate_problems(cfg: ArithmeticConfig) -> dict[str, list[dict[str, str]]]:
  """The three disjoint splits as lists of ``{"prompt", "answer"}`` dicts (pure, seeded)."""
  base = 10 ** cfg.digits
  space = base * base * len(cfg.operators)
  wanted = cfg.train_size + cfg.validation_size + cfg.test_size
  if wanted > space:
    raise ValueError(f"arithmetic: {wanted} distinct problems requested (data.train_size + "
                     f"validation_size + test_size) but digits={cfg.digits} with operators "
                     f"{cfg.operators!r} only has {space}")
  rng = np.random.default_rng(cfg.dataset_seed)
  if space <= 10_000_000:
    codes = rng.choice(space, size=wanted, replace=False)
  else:  # Rejection sampling for huge spaces; `seen` keeps them distinct.
    seen: set[int] = set()
    codes = []
    while len(codes) < wanted:
      c = int(rng.integers(space))
      if c not in seen:
        seen.add(c)
        codes.append(c)
    codes = np.asarray(codes)
  rows = []
  for code in codes.tolist():
    op_index, rest = divmod(code, base * base)
    a, b = divmod(rest, base)
    op = cfg.operators[op_index]
    rows.append({"prompt": f"{a}{op}{b}=", "answer": str(_apply(a, op, b))})
  n1, n2 = cfg.train_size, cfg.train_size + cfg.validation_size
  return {"train": rows[:n1], "validation": rows[n1:n2], "test": rows[n2:]}


class Arithmetic(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the synthetic arithmetic family. Pass ``config=make_builder_config(...)``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Synthetic integer arithmetic with exact answers.",
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Text(),
            "answer": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    splits = generate_problems(self.builder_config)
    return {name: self._generate_examples(rows) for name, rows in splits.items() if rows}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row


def prepare_arithmetic(data_dir: str, builder_config: ArithmeticConfig):
  """Builds the dataset if it is not already on disk; returns ``{split: ArrayRecordDataSource}``."""
  tfds.disable_progress_bar()  # Our own progress output is the only one a run shows.
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)  # "Using custom data configuration" notices.
  from jaxrl_llm.parallel.distributed import primary_first

  # Multi-process: process 0 builds, the others then open it (a builder made before the data
  # exists does not see its splits afterwards, so it is made inside).
  with primary_first(f"tfds:{builder_config.name}"):
    builder = Arithmetic(config=builder_config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
  return builder.as_data_source()
