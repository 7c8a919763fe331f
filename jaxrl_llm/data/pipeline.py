"""From rows to fixed-shape batches: validation, tokenisation, bucketing, deterministic shuffling.

Host-side code. A row is ``{"prompt": str|bytes, "answer": str|bytes, ...}``; any other fields
(a countdown row's ``nums``/``target``, a Text2SQL row's ``db_id``) travel with the row as string
*columns* and reach the reward functions as keyword arguments. Bad rows (missing field,
wrong type, undecodable bytes) raise :class:`BadRowError` naming the split, row index and field, or
are skipped and counted when ``data.on_bad_row="skip"``. Sequences longer than the largest length
bucket are rejected or left-truncated (the prompt loses its oldest tokens, the answer is kept) as
``data.on_overlong`` says, and counted.

Shuffling is a pure function of (data key, epoch): the iterator state is one integer, the number
of examples consumed, so resuming from a checkpoint continues with exactly the same batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from jaxrl_llm import rng as rng_lib
from jaxrl_llm.config.schema import DataConfig

FIELDS = ("prompt", "answer")
# Row fields that are not reward columns: the teacher traces of a demonstration task.
DEMONSTRATION = "demonstration"


class BadRowError(ValueError):
  """A data row is malformed. The message names the split, row index and field."""


@dataclasses.dataclass
class DataStats:
  """Counts of rows dropped or altered while encoding a split."""

  rows: int = 0
  bad_rows: int = 0
  truncated: int = 0
  rejected: int = 0
  longest: int = 0  # tokens the longest valid row needs in a bucket (prompt + answer or budget).

  def as_metrics(self, split: str) -> dict[str, int]:
    return {f"data/{split}/{k}": v for k, v in dataclasses.asdict(self).items()}


def suggest_buckets(needed: Sequence[int]) -> tuple[int, ...]:
  """Length buckets that hold every row: the median and the maximum of ``needed``, each rounded
  up to a multiple of 8 (one bucket when they coincide)."""
  if not len(needed):
    return ()
  up = lambda n: int(-(-int(n) // 8) * 8)  # noqa: E731
  small, large = up(np.median(needed)), up(max(needed))
  return (large,) if small >= large else (max(small, 8), large)


def auto_buckets(splits: Iterable[Any], cap: int) -> tuple[int, ...]:
  """``data.length_buckets="auto"``: :func:`suggest_buckets` over the tokens every row of
  ``splits`` (encoded with the largest possible bucket ``cap``) needs, capped at ``cap``."""
  needed = [n for split in splits for n in split.needed]
  return tuple(sorted({min(b, cap) for b in suggest_buckets(needed) or (cap,)}))


def resolve_buckets(config, splits: dict[str, Any], cap: int):
  """``config`` with ``data.length_buckets="auto"`` replaced by :func:`auto_buckets` of
  ``splits`` (unchanged when the buckets are given)."""
  if not isinstance(config.data.length_buckets, str):
    return config
  buckets = auto_buckets(splits.values(), cap)
  return dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                              length_buckets=buckets))


def bucket_cap(config, room: int) -> int:
  """The largest bucket the loop may use: ``data.length_buckets``' last, or ``room`` (what the
  model's positions allow) for ``"auto"``."""
  buckets = config.data.length_buckets
  return room if isinstance(buckets, str) else buckets[-1]


def write_data_report(run_dir: str, splits: dict[str, "EncodedSplit"],
                      buckets: Sequence[int]) -> str:
  """Writes ``RUN_DIR/data_report.json`` (:func:`length_report` per split) and returns a one-line
  summary for the console."""
  report = {name: length_report(split, buckets) for name, split in splits.items()}
  report["length_buckets"] = list(buckets)
  from jaxrl_llm.parallel.distributed import is_primary

  if is_primary():
    with open(os.path.join(run_dir, "data_report.json"), "w") as f:
      json.dump(report, f, indent=1)
  parts = []
  for name, split in splits.items():
    r = report[name]
    text = f"{name} {len(split.prompts)}/{r['rows']} rows"
    dropped = [f"{k}={r[k]}" for k in ("bad_rows", "rejected", "truncated") if r[k]]
    if "tokens_needed" in r:
      t = r["tokens_needed"]
      text += f", tokens p50/p99/max {t['p50']}/{t['p99']}/{t['max']}"
    parts.append(text + (f" ({', '.join(dropped)})" if dropped else ""))
  return (f"data (buckets {list(buckets)}): " + "; ".join(parts) +
          "  [data_report.json]")


def length_report(split: "EncodedSplit", buckets: Sequence[int]) -> dict[str, Any]:
  """Token lengths of a split's valid rows and how they fall into ``buckets``: rows, bad,
  rejected / truncated as over-long, percentiles (p50, p90, p99, max) of the tokens each row
  needs, rows per bucket and rows beyond the largest."""
  needed = np.asarray(split.needed, np.int64)
  report: dict[str, Any] = dataclasses.asdict(split.stats)
  if needed.size:
    report["tokens_needed"] = {f"p{q}": int(np.percentile(needed, q)) for q in (50, 90, 99)}
    report["tokens_needed"]["max"] = int(needed.max())
  lower = 0
  per_bucket = {}
  for b in buckets:
    per_bucket[str(b)] = int(((needed > lower) & (needed <= b)).sum())
    lower = b
  per_bucket[f">{buckets[-1]}"] = int((needed > buckets[-1]).sum())
  report["rows_per_bucket"] = per_bucket
  report["suggested_length_buckets"] = list(suggest_buckets(needed))
  return report


@dataclasses.dataclass
class EncodedSplit:
  """A tokenised split. ``prompts[i]`` starts with BOS; ``answers[i]`` ends with EOS.

  ``columns`` holds the rows' other fields as text (non-string values JSON-encoded), one entry per
  kept row, for reward functions (:meth:`row_columns`).
  """

  name: str
  prompts: list[np.ndarray]
  answers: list[np.ndarray]
  answer_texts: list[str]
  stats: DataStats
  columns: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  # Tokens each valid row needs in a bucket (kept, truncated and rejected rows alike).
  needed: list[int] = dataclasses.field(default_factory=list)
  # Teacher traces per kept row (text, one or several), when the rows carry a "demonstration".
  demonstrations: list[list[str]] | None = None

  def row_columns(self, indices: Sequence[int]) -> dict[str, list[str]]:
    """``{"answer": [...], <column>: [...]}`` for the rows ``indices`` (repeats allowed)."""
    out = {"answer": [self.answer_texts[i] for i in indices]}
    for key, values in self.columns.items():
      out[key] = [values[i] for i in indices]
    return out

  def __len__(self) -> int:
    return len(self.prompts)


def _text(row: Any, index: int, field: str, split: str) -> str:
  where = f"{split} row {index} field '{field}'"
  if not isinstance(row, dict):
    raise BadRowError(f"{split} row {index}: expected a mapping with fields {FIELDS}, got "
                      f"{type(row).__name__}")
  if field not in row:
    raise BadRowError(f"{where}: missing")
  value = row[field]
  if isinstance(value, (bytes, np.bytes_)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRowError(f"{where}: undecodable bytes ({e.reason} at byte {e.start})") from None
  if isinstance(value, str):
    return value
  raise BadRowError(f"{where}: expected str or bytes, got {type(value).__name__}")


def _column_text(value: Any) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8", errors="replace")
  if isinstance(value, str):
    return value
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, np.generic):
    value = value.item()
  return json.dumps(value)


def extra_columns(row: Any) -> dict[str, str]:
  """The fields of ``row`` other than prompt and answer, as text (JSON for non-strings)."""
  if not isinstance(row, dict) or isinstance(row, _Unparsable):
    return {}
  return {k: _column_text(v) for k, v in _with_answer(row).items()
          if k not in FIELDS and k != DEMONSTRATION}


def demonstration_list(row: Any, index: int, split: str) -> list[str] | None:
  """The teacher traces of ``row`` (its ``demonstration`` field: one string or a non-empty list of
  them), or None when it has none. Raises :class:`BadRowError` naming the row and field."""
  if not isinstance(row, dict) or isinstance(row, _Unparsable) or DEMONSTRATION not in row:
    return None
  value = row[DEMONSTRATION]
  values = list(value) if isinstance(value, (list, tuple)) else [value]
  out = []
  for v in values:
    if isinstance(v, (bytes, np.bytes_)):
      try:
        v = bytes(v).decode("utf-8")
      except UnicodeDecodeError:
        v = None
    if not isinstance(v, str) or not v.strip():
      raise BadRowError(f"{split} row {index} field '{DEMONSTRATION}': expected a non-empty "
                        "string or a non-empty list of them")
    out.append(v)
  if not out:
    raise BadRowError(f"{split} row {index} field '{DEMONSTRATION}': empty list")
  return out


def sft_rows(rows: Sequence[Any], config: DataConfig, split: str) -> Sequence[Any]:
  """The SFT view of ``rows`` (``data.sft_target``): with demonstrations, one row per teacher
  trace, the trace as the target ``answer`` and the original answer kept as the ``gold_answer``
  column; otherwise ``rows`` unchanged."""
  target = config.sft_target
  if target == "auto":
    first = next((r for r in rows if isinstance(r, dict) and not isinstance(r, _Unparsable)), {})
    target = DEMONSTRATION if DEMONSTRATION in first else "answer"
  if target == "answer":
    return rows
  out = []
  for i, row in enumerate(rows):
    demos = demonstration_list(row, i, split)
    if demos is None:
      raise BadRowError(f"{split} row {i} field '{DEMONSTRATION}': missing (data.sft_target="
                        f"{config.sft_target!r} trains on demonstrations)")
    base = {k: v for k, v in _with_answer(row).items() if k != DEMONSTRATION}
    gold = base.pop("answer", None)
    for demo in demos:
      new = dict(base, answer=demo)
      if gold is not None:
        new["gold_answer"] = gold
      out.append(new)
  return out


def validate_row(row: Any, index: int, split: str) -> tuple[str, str]:
  """Returns ``(prompt, answer)`` text or raises :class:`BadRowError` naming the offending field."""
  prompt = _text(row, index, "prompt", split)
  if isinstance(row, dict) and "answer" not in row and "response" in row:
    row = _with_answer(row)
  answer = _text(row, index, "answer", split)
  if not answer:
    raise BadRowError(f"{split} row {index} field 'answer': empty")
  return prompt, answer


def encode_split(rows: Sequence[Any], tokenizer, *, split: str, max_len: int, on_bad_row: str,
                 on_overlong: str, answer_budget: int | None = None,
                 chat_template: bool = False) -> EncodedSplit:
  """Validates and tokenises ``rows``.

  Args:
    max_len: the largest length bucket. For training rows the whole ``BOS prompt answer EOS``
      sequence must fit; for evaluation prompts (``answer_budget`` set) ``BOS prompt`` must fit in
      ``max_len - answer_budget``.
    on_bad_row: ``"raise"`` or ``"skip"``; on_overlong: ``"reject"`` or ``"truncate"``.
    chat_template: render each prompt as one user message with the tokenizer's chat template
      (generation prompt included) instead of ``BOS prompt``.
  """
  stats = DataStats()
  texts: list[tuple[str, str]] = []
  extras: list[dict[str, str]] = []
  demos: list[list[str] | None] = []
  for i, row in enumerate(rows):
    stats.rows += 1
    try:
      pair = validate_row(row, i, split)
      demo = demonstration_list(row, i, split)
      extras.append(extra_columns(row))
      texts.append(pair)
      demos.append(demo)
    except BadRowError:
      if on_bad_row == "raise":
        raise
      stats.bad_rows += 1
  with_demos = sum(d is not None for d in demos)
  if 0 < with_demos < len(demos):
    first = next(i for i, d in enumerate(demos) if d is None)
    raise BadRowError(f"{split} row {first} field '{DEMONSTRATION}': missing (other rows have it)")
  prompts, answers, answer_texts = [], [], []
  names = sorted({k for e in extras for k in e})
  columns: dict[str, list[str]] = {k: [] for k in names}
  for i, e in enumerate(extras):
    missing = [k for k in names if k not in e]
    if missing:  # Every row must carry the same fields: a reward would see None otherwise.
      raise BadRowError(f"{split} row {i} field {missing[0]!r}: missing (other rows have it)")
  if texts and chat_template:
    from jaxrl_llm.data.tokenizer import apply_chat_template

    p_ids = [apply_chat_template(tokenizer, [{"role": "user", "content": t[0]}])
             for t in texts]
    a_ids = tokenizer([t[1] for t in texts], add_special_tokens=False)["input_ids"]
  elif texts:
    p_ids = tokenizer([t[0] for t in texts], add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([t[1] for t in texts], add_special_tokens=False)["input_ids"]
  else:
    p_ids, a_ids = [], []
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  if eos is None:
    raise ValueError("the tokenizer has no EOS token; generation could never stop")
  # Qwen-style tokenizers have no BOS; a chat template writes its own header.
  head = [] if bos is None or chat_template else [bos]
  needed: list[int] = []
  kept_demos: list[list[str]] = []
  for (prompt_text, answer_text), extra, demo, p, a in zip(texts, extras, demos, p_ids, a_ids):
    p = head + list(p)
    a = list(a) + [eos]
    if answer_budget is None:
      room_for_prompt = max_len - len(a)
    else:
      room_for_prompt = max_len - answer_budget
    needed.append(len(p) + max_len - room_for_prompt)
    if len(p) > room_for_prompt:
      if on_overlong == "reject" or room_for_prompt < 2:  # BOS plus at least one prompt token.
        stats.rejected += 1
        continue
      p = head + p[len(p) - room_for_prompt + len(head):]
      stats.truncated += 1
    prompts.append(np.asarray(p, np.int32))
    answers.append(np.asarray(a, np.int32))
    answer_texts.append(answer_text)
    if demo is not None:
      kept_demos.append(demo)
    for k in names:
      columns[k].append(extra[k])
  stats.longest = max(needed, default=0)
  if not prompts:
    hint = ""
    if stats.rejected:
      what = ("BOS + prompt + answer + EOS" if answer_budget is None else
              f"BOS + prompt + {answer_budget} new tokens")
      hint = (f": rows need {int(np.median(needed))} tokens ({what}) at the median and "
              f"{stats.longest} at most, but the largest bucket (data.length_buckets) is "
              f"{max_len}; set e.g. --set 'data.length_buckets=[{', '.join(map(str, suggest_buckets(needed)))}]'"
              " (or data.on_overlong=truncate to cut prompts from the left)")
    raise BadRowError(f"{split}: no usable rows left out of {stats.rows} "
                      f"(bad={stats.bad_rows}, rejected as over-long={stats.rejected}){hint}")
  return EncodedSplit(split, prompts, answers, answer_texts, stats, columns, needed,
                      kept_demos if with_demos else None)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket that holds ``length`` tokens."""
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


class EpochOrder:
  """Deterministic, resumable example order for the batchers: epoch ``e`` is a permutation that is a
  pure function of ``(data_key, e)``, and batch positions run on across epoch boundaries.

  Subclasses set ``batch_size``, ``shuffle``, ``_data_key``, ``_perms = {}`` and define
  ``num_examples``.
  """

  batch_size: int
  shuffle: bool
  _data_key: jax.Array
  _perms: dict[int, np.ndarray]

  @property
  def num_examples(self) -> int:
    raise NotImplementedError

  def permutation(self, epoch: int) -> np.ndarray:
    """``int64[N]`` example order of ``epoch`` (the last three are kept)."""
    if epoch not in self._perms:
      n = self.num_examples
      if self.shuffle:
        seed = rng_lib.numpy_seed(rng_lib.step_key(self._data_key, epoch))
        perm = np.random.default_rng(seed).permutation(n)
      else:
        perm = np.arange(n)
      if len(self._perms) > 2:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = perm
    return self._perms[epoch]

  def indices(self, position: int) -> np.ndarray:
    """``int64[B]`` example indices of the batch starting at ``position`` (wraps across epochs)."""
    n = self.num_examples
    out = np.empty(self.batch_size, np.int64)
    for j in range(self.batch_size):
      epoch, offset = divmod(position + j, n)
      out[j] = self.permutation(epoch)[offset]
    return out


class SFTBatcher(EpochOrder):
  """Deterministic, resumable SFT batches: ``batch(position) -> (arrays, next_position)``.

  Arrays (numpy, host side):
    tokens ``int32[A, b, L]``, attention_mask ``bool[A, b, L]``, loss_mask ``bool[A, b, L]`` where
    ``A = grad_accum_steps``, ``b = batch_size / A`` and ``L`` is the smallest bucket holding the
    batch's longest sequence. ``loss_mask[..., t]`` marks tokens that are answer targets (the model
    predicts token ``t`` from position ``t - 1``).
  """

  def __init__(self, split: EncodedSplit, *, batch_size: int, grad_accum_steps: int,
               buckets: Sequence[int], pad_id: int, data_key: jax.Array, shuffle: bool = True):
    self.split = split
    self.batch_size = batch_size
    self.accum = grad_accum_steps
    self.buckets = tuple(buckets)
    self.pad_id = pad_id
    self.shuffle = shuffle
    self._data_key = data_key
    self._perms: dict[int, np.ndarray] = {}
    self.seqs = [np.concatenate([p, a]) for p, a in zip(split.prompts, split.answers)]
    self.prompt_lens = np.asarray([len(p) for p in split.prompts])

  @property
  def num_examples(self) -> int:
    return len(self.seqs)

  def batch(self, position: int) -> tuple[dict[str, np.ndarray], int]:
    idx = self.indices(position)
    length = pick_bucket(max(len(self.seqs[i]) for i in idx), self.buckets)
    tokens = np.full((self.batch_size, length), self.pad_id, np.int32)
    attention = np.zeros((self.batch_size, length), bool)
    loss = np.zeros((self.batch_size, length), bool)
    for row, i in enumerate(idx):
      seq = self.seqs[i]
      tokens[row, : len(seq)] = seq
      attention[row, : len(seq)] = True
      loss[row, self.prompt_lens[i]: len(seq)] = True
    shape = (self.accum, self.batch_size // self.accum, length)
    batch = {"tokens": tokens.reshape(shape), "attention_mask": attention.reshape(shape),
             "loss_mask": loss.reshape(shape)}
    return batch, position + self.batch_size


def prompt_batches(split: EncodedSplit, *, batch_size: int, buckets: Sequence[int], pad_id: int,
                   limit: int = 0) -> Iterable[dict[str, Any]]:
  """Left-padded evaluation prompts, in split order, in a single width for the whole split.

  Yields dicts with ``tokens int32[batch_size, P]``, ``attention_mask bool[batch_size, P]``,
  ``valid bool[batch_size]`` (False for filler rows of the last batch) and ``answers`` (list[str]).
  """
  n = len(split) if not limit else min(limit, len(split))
  width = pick_bucket(max(len(p) for p in split.prompts[:n]), buckets)
  for start in range(0, n, batch_size):
    rows = range(start, min(start + batch_size, n))
    tokens = np.full((batch_size, width), pad_id, np.int32)
    attention = np.zeros((batch_size, width), bool)
    valid = np.zeros((batch_size,), bool)
    for r, i in enumerate(rows):
      p = split.prompts[i]
      tokens[r, width - len(p):] = p
      attention[r, width - len(p):] = True
      valid[r] = True
    # Filler rows repeat the first prompt so that every row is well-formed.
    for r in range(len(rows), batch_size):
      tokens[r], attention[r] = tokens[0], attention[0]
    yield {"tokens": tokens, "attention_mask": attention, "valid": valid,
           "answers": [split.answer_texts[i] for i in rows],
           "columns": split.row_columns(list(rows))}


def load_rows(config: DataConfig, split: str) -> Sequence[Any]:
  """Rows of ``split`` from the configured source -- TFDS array_record, user JSONL, or a data
  builder named by import path in ``data.task`` -- with ``data.prompt_template`` applied and an
  SFT row's ``response`` field read as its ``answer``."""
  rows = _source_rows(config, split)
  render = prompt_renderer(config.prompt_template)
  if render is None:  # validate_row / extra_columns read a "response" field as the answer.
    return rows
  out = []
  for i, row in enumerate(rows):
    if isinstance(row, dict) and not isinstance(row, _Unparsable):
      row = _with_answer(row)
      if render is not None:
        row = dict(row, prompt=render(row, i, split))
    out.append(row)
  return out


def _with_answer(row: dict) -> dict:
  """SFT data often names the target ``response`` (prompt/response JSONL): read it as ``answer``."""
  if "answer" in row or "response" not in row:
    return row
  row = dict(row)
  row["answer"] = row.pop("response")
  return row


def prompt_renderer(template: str):
  """``data.prompt_template`` as a function ``(row, index, split) -> prompt text``, or None for
  ``""``. A template is a ``str.format`` string over the row's fields (``"Question: {prompt} Answer:"``) or the
  import path of a callable ``row -> str``; a row the template cannot render raises
  :class:`BadRowError` naming the row, the field and the setting."""
  if not template:
    return None
  from jaxrl_llm.imports import import_callable, is_import_path

  if is_import_path(template):
    try:
      fn = import_callable(template, "a callable row -> str")
    except ImportError as e:
      raise ValueError(f"config field 'data.prompt_template': {e}") from None
  else:
    fn = lambda row: template.format_map({k: _as_str(v) if isinstance(v, (bytes, np.bytes_))  # noqa: E731
                                          else v for k, v in row.items()})

  def render(row: dict, index: int, split: str) -> str:
    try:
      text = fn(row)
    except KeyError as e:
      raise BadRowError(f"{split} row {index} field {e.args[0]!r}: missing (data.prompt_template "
                        f"{template!r} uses it)") from None
    except Exception as e:  # noqa: BLE001 -- the user's template failed on this row.
      raise BadRowError(f"{split} row {index}: data.prompt_template {template!r} failed: "
                        f"{type(e).__name__}: {e}") from None
    if not isinstance(text, str):
      raise BadRowError(f"{split} row {index}: data.prompt_template {template!r} returned "
                        f"{type(text).__name__}, not str")
    return text

  return render


def _builder_rows(config: DataConfig, split: str) -> list[Any]:
  """Rows from the user's data builder ``data.task="package.module:fn"``, called as
  ``fn(split, data_config)``."""
  from jaxrl_llm.imports import import_callable

  try:
    builder = import_callable(config.task, "a data builder (split, data_config) -> rows")
  except ImportError as e:
    raise ValueError(f"config field 'data.task': {e}") from None
  rows = builder(split, config)
  if rows is None:
    return []
  try:
    return list(rows)
  except TypeError:
    raise ValueError(f"config field 'data.task': {config.task!r} returned "
                     f"{type(rows).__name__} for split {split!r}, not a sequence of rows") from None


def has_split(config: DataConfig, split: str) -> bool:
  """Whether the configured data has a ``split`` (validation / test) to evaluate on."""
  from jaxrl_llm.imports import is_import_path

  if is_import_path(config.task):
    return bool(_builder_rows(config, split))
  return bool(config.source == "jsonl" or getattr(config, f"{split}_size"))


def _source_rows(config: DataConfig, split: str) -> Sequence[Any]:
  from jaxrl_llm.imports import is_import_path

  if is_import_path(config.task):
    return _builder_rows(config, split)
  if config.source == "jsonl":
    return _jsonl_rows(config, split)
  if config.task == "text2sql" and config.source in ("spider", "bird"):
    from jaxrl_llm.envs.text2sql import load_benchmark_rows

    return load_benchmark_rows(config.source, config.text2sql_root, split)
  from jaxrl_llm.data.arithmetic import default_data_dir, make_builder_config, prepare_arithmetic

  data_dir = config.data_dir or default_data_dir()
  if config.task == "arithmetic":
    builder_config = make_builder_config(config.digits, config.operators, config.train_size,
                                         config.validation_size, config.test_size,
                                         config.dataset_seed)
    sources = prepare_arithmetic(data_dir, builder_config)
  else:
    sources, builder_config = _prepare_synthetic(config, data_dir)
  name = f"{split}_hard" if config.task == "chain" and config.chain_level == "hard" else split
  if name not in sources:
    raise ValueError(f"split {split!r} is empty; set data.{split}_size > 0")
  source = sources[name]
  rows = source.__getitems__(list(range(len(source))))
  if config.task == "text2sql":
    # Rewards execute SQL against the row's database: give them its path.
    from jaxrl_llm.data.synthetic import text2sql_database_dir

    db_dir = text2sql_database_dir(data_dir, builder_config.name)
    rows = [dict(r, db_path=os.path.join(db_dir, _as_str(r["db_id"]) + ".sqlite")) for r in rows]
  return rows


HOLDOUT_SPLITS = ("test", "validation")


def _read_jsonl(config: DataConfig, path: str, split: str) -> list[Any]:
  if config.task == "math":  # GSM8K / MATH files as published: question + worked solution.
    from jaxrl_llm.rewards.math import load_math_jsonl

    return load_math_jsonl(path, on_bad_row=config.on_bad_row)[0]
  rows: list[Any] = []
  with open(path, "rb") as f:
    for line_no, line in enumerate(f):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        rows.append(_Unparsable(f"{split} row {len(rows)} (line {line_no + 1}): not valid "
                                f"JSON ({e})"))
  return rows


def holdout_indices(config: DataConfig, num_rows: int) -> dict[str, np.ndarray]:
  """Which rows of train.jsonl are held out for the evaluation splits that have no file.

  A seeded permutation (``data.dataset_seed``) of the ``num_rows`` rows: the first
  ``data.test_size`` are ``test`` (when test.jsonl is missing), the next ``data.validation_size``
  are ``validation`` (when validation.jsonl is missing), the rest are ``train``; each sorted, so
  rows keep their file order. Splits never share a row.

  Raises:
    ValueError: the held-out rows would leave no training rows (names the settings).
  """
  missing = [s for s in HOLDOUT_SPLITS
             if not os.path.exists(os.path.join(config.jsonl_dir, f"{s}.jsonl"))]
  sizes = {"test": config.test_size, "validation": config.validation_size}
  need = sum(sizes[s] for s in missing)
  if missing and need >= num_rows:
    raise ValueError(
        f"data.jsonl_dir: train.jsonl has {num_rows} rows; holding out {need} of them for "
        f"{' and '.join(missing)} (no {'/'.join(s + '.jsonl' for s in missing)} file; sizes from "
        f"{', '.join('data.' + s + '_size' for s in missing)}) leaves none for training: lower "
        "those sizes or add the files")
  perm = np.random.default_rng(config.dataset_seed).permutation(num_rows)
  out, start = {}, 0
  for s in missing:
    out[s] = np.sort(perm[start:start + sizes[s]])
    start += sizes[s]
  out["train"] = np.sort(perm[start:])
  return out


def _jsonl_rows(config: DataConfig, split: str) -> list[Any]:
  """``split`` of a JSONL directory: ``<split>.jsonl``; for ``data.task='custom'`` a validation /
  test split without a file is held out of train.jsonl by :func:`holdout_indices`."""
  path = os.path.join(config.jsonl_dir, f"{split}.jsonl")
  train_path = os.path.join(config.jsonl_dir, "train.jsonl")
  if split not in HOLDOUT_SPLITS + ("train",):
    raise ValueError(f"unknown split {split!r}")
  if config.task != "custom":  # the other tasks read exactly the files they are given.
    if not os.path.exists(path):
      raise FileNotFoundError(f"data.jsonl_dir: {path} does not exist")
    return _read_jsonl(config, path, split)
  if split != "train" and os.path.exists(path):
    return _read_jsonl(config, path, split)
  if not os.path.exists(train_path):
    raise FileNotFoundError(f"data.jsonl_dir: {train_path} does not exist")
  rows = _read_jsonl(config, train_path, "train")
  if split == "train" and all(os.path.exists(os.path.join(config.jsonl_dir, f"{s}.jsonl"))
                              for s in HOLDOUT_SPLITS):
    return rows
  try:
    keep = holdout_indices(config, len(rows))[split]
  except ValueError as e:
    raise BadRowError(str(e)) from None
  return [rows[i] for i in keep]


def _as_str(value: Any) -> str:
  return bytes(value).decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def _prepare_synthetic(config: DataConfig, data_dir: str):
  from jaxrl_llm.data.synthetic import prepare_synthetic

  params: dict[str, Any] = {"seed": config.dataset_seed, "train_size": config.train_size,
                            "validation_size": config.validation_size,
                            "test_size": config.test_size}
  if config.task == "countdown":
    params.update(numbers=config.countdown_numbers, max_number=config.countdown_max_number)
  elif config.task == "chain":
    params.update(easy_operands=config.chain_easy_operands,
                  hard_operands=config.chain_hard_operands,
                  max_operand=config.chain_max_operand, operators=config.operators)
    if config.chain_hard_max_operand:  # (only when set: older datasets keep their hash)
      params["hard_max_operand"] = config.chain_hard_max_operand
  elif config.task == "sorted_digits":
    params.update(sorted_fraction=0.2)
  return prepare_synthetic(data_dir, config.task, params)


class _Unparsable(dict):
  """A row that could not be parsed at all; validation reports its message."""

  def __init__(self, message: str):
    super().__init__()
    self.message = message

  def __contains__(self, key):  # Every field is "missing"; the message says why.
    raise BadRowError(self.message)
