"""Preference data: pairs, rankings and ratings, from JSONL through TFDS to fixed-shape batches.

Three row kinds (extra fields are ignored):

* ``pairs``: ``{"prompt": str, "chosen": str, "rejected": str, "margin": float (optional, >= 0),
  "probability": float (optional, in [0.5, 1])}``. ``chosen == rejected`` is a bad row (a tied
  pair carries no signal). An absent margin is 0. ``probability`` is a soft label
  ``P(chosen ≻ rejected)`` (AI feedback, docs/algorithms.md §19); absent means 1.0, a hard label.
* ``rankings``: ``{"prompt": str, "responses": [str] * K, "ranking": [int] * K}`` with ``K >= 2``;
  ``ranking`` lists response indices best first and must be a permutation of ``0..K-1``; the
  responses must be distinct. K may differ between rows: batches are padded to the largest K.
* ``ratings``: ``{"prompt": str, "response": str, "score": float}``.

Responses must be non-empty (prompts may be empty); margins and scores must be finite numbers
(booleans are not numbers here) that survive the conversion to float32. A bad row raises
:class:`~jaxrl_llm.data.pipeline.BadRowError` naming the split, row index and field, or is skipped
and counted when ``on_bad_row="skip"``.

Local JSONL goes through a TFDS builder (``array_record``) whose config name is
``<kind>_<hash of the input files>[_skip]``: editing any of ``{train,validation,test}.jsonl``
changes the name, so a stale cache is never reused. Sequences are ``BOS prompt response EOS``
(BOS only when the tokenizer has one). Batches come from :class:`PreferenceBatcher`
(deterministic, resumable, state = one integer) or :func:`eval_batches` (one ordered pass).

The module also holds the synthetic preference task used by the RLHF and DPO demos: the prompt
``"n=4:"`` asks for ``n`` digits, and the hidden property is "the digits are sorted ascending";
see :func:`hidden_score`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Iterable, Sequence

import jax
import numpy as np

import tensorflow_datasets as tfds

from jaxrl_llm.data.pipeline import BadRowError, DataStats, EpochOrder, pick_bucket
# prompt_digits, synthetic_prompt and generate_sft_demos stay importable from here.
from jaxrl_llm.data.sorted_digits import (_check_digits, generate_sft_demos,  # noqa: F401
                                          has_hidden_property, hidden_score, prompt_digits,
                                          synthetic_prompt)

KINDS = ("pairs", "rankings", "ratings")
SPLITS = ("train", "validation", "test")
_F32_MAX = float(np.finfo(np.float32).max)

# ----------------------------------------------------------------------------------------------
# Row validation.


def _where(split: str, index: int, field: str) -> str:
  return f"{split} row {index} field '{field}'"


def _as_text(value: Any, split: str, index: int, field: str) -> str:
  if isinstance(value, (bytes, np.bytes_)):
    try:
      return bytes(value).decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadRowError(f"{_where(split, index, field)}: undecodable bytes ({e.reason} at byte "
                        f"{e.start})") from None
  if isinstance(value, str):
    return value
  raise BadRowError(f"{_where(split, index, field)}: expected str or bytes, got "
                    f"{type(value).__name__}")


def _field(row: Any, split: str, index: int, field: str, fields: Sequence[str]) -> Any:
  if not isinstance(row, dict):
    raise BadRowError(f"{split} row {index}: expected a mapping with fields {tuple(fields)}, got "
                      f"{type(row).__name__}")
  if field not in row:
    raise BadRowError(f"{_where(split, index, field)}: missing")
  return row[field]


def _response(value: Any, split: str, index: int, field: str) -> str:
  text = _as_text(value, split, index, field)
  if not text:
    raise BadRowError(f"{_where(split, index, field)}: empty response")
  return text


def _number(value: Any, split: str, index: int, field: str) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                    np.floating)):
    raise BadRowError(f"{_where(split, index, field)}: expected a number, got "
                      f"{type(value).__name__}")
  x = float(value)
  if not math.isfinite(x) or abs(x) > _F32_MAX:
    raise BadRowError(f"{_where(split, index, field)}: not a finite float32 ({value!r})")
  return x


def _index_list(value: Any, split: str, index: int, field: str) -> list[int]:
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if not isinstance(value, (list, tuple)):
    raise BadRowError(f"{_where(split, index, field)}: expected a list of ints, got "
                      f"{type(value).__name__}")
  out = []
  for v in value:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
      raise BadRowError(f"{_where(split, index, field)}: expected a list of ints, found "
                        f"{type(v).__name__}")
    out.append(int(v))
  return out


def pair_probability(row: Any, index: int, split: str) -> float:
  """The soft label ``P(chosen ≻ rejected)`` of a pair row: its ``probability`` field, a finite
  number in ``[0.5, 1]``, or 1.0 when absent / None.

  Raises :class:`BadRowError` naming the field.
  """
  value = row.get("probability") if isinstance(row, dict) else None
  if value is None:
    return 1.0
  p = _number(value, split, index, "probability")
  if not 0.5 <= p <= 1.0:
    raise BadRowError(f"{_where(split, index, 'probability')}: must be in [0.5, 1] "
                      f"(P(chosen > rejected)), got {p}")
  return p


def validate_pair(row: Any, index: int, split: str) -> tuple[str, str, str, float]:
  """``(prompt, chosen, rejected, margin)`` of a pair row, or :class:`BadRowError`.

  Also validates the optional ``probability`` field (read it with :func:`pair_probability`).
  """
  fields = ("prompt", "chosen", "rejected")
  prompt = _as_text(_field(row, split, index, "prompt", fields), split, index, "prompt")
  chosen = _response(_field(row, split, index, "chosen", fields), split, index, "chosen")
  rejected = _response(_field(row, split, index, "rejected", fields), split, index, "rejected")
  if chosen == rejected:
    raise BadRowError(f"{_where(split, index, 'rejected')}: identical to 'chosen' (a tied pair "
                      f"has no preference signal)")
  margin = 0.0
  if row.get("margin") is not None:
    margin = _number(row["margin"], split, index, "margin")
    if margin < 0:
      raise BadRowError(f"{_where(split, index, 'margin')}: must be >= 0, got {margin}")
  pair_probability(row, index, split)
  return prompt, chosen, rejected, margin


def validate_ranking(row: Any, index: int, split: str) -> tuple[str, list[str], list[int]]:
  """``(prompt, responses, ranking)`` of a ranking row (ranking best first), or BadRowError."""
  fields = ("prompt", "responses", "ranking")
  prompt = _as_text(_field(row, split, index, "prompt", fields), split, index, "prompt")
  raw = _field(row, split, index, "responses", fields)
  if isinstance(raw, np.ndarray):
    raw = raw.tolist()
  if not isinstance(raw, (list, tuple)):
    raise BadRowError(f"{_where(split, index, 'responses')}: expected a list of str, got "
                      f"{type(raw).__name__}")
  if len(raw) < 2:
    raise BadRowError(f"{_where(split, index, 'responses')}: needs K >= 2 responses, got "
                      f"{len(raw)}")
  responses = [_response(v, split, index, "responses") for v in raw]
  if len(set(responses)) != len(responses):
    raise BadRowError(f"{_where(split, index, 'responses')}: duplicate responses (tied, no "
                      f"preference signal)")
  ranking = _index_list(_field(row, split, index, "ranking", fields), split, index, "ranking")
  if len(ranking) != len(responses):
    raise BadRowError(f"{_where(split, index, 'ranking')}: length {len(ranking)} != "
                      f"{len(responses)} responses")
  if sorted(ranking) != list(range(len(responses))):
    raise BadRowError(f"{_where(split, index, 'ranking')}: not a permutation of "
                      f"0..{len(responses) - 1}: {ranking}")
  return prompt, responses, ranking


def validate_rating(row: Any, index: int, split: str) -> tuple[str, str, float]:
  """``(prompt, response, score)`` of a rating row, or :class:`BadRowError`."""
  fields = ("prompt", "response", "score")
  prompt = _as_text(_field(row, split, index, "prompt", fields), split, index, "prompt")
  response = _response(_field(row, split, index, "response", fields), split, index, "response")
  score = _number(_field(row, split, index, "score", fields), split, index, "score")
  return prompt, response, score


def validate_preference_row(row: Any, index: int, split: str, kind: str) -> dict[str, Any]:
  """Validates one row of ``kind`` and returns it in canonical form (plain str/float/int lists).

  pairs -> ``{"prompt", "chosen", "rejected", "margin", "probability"}``; rankings ->
  ``{"prompt", "responses", "ranking"}``; ratings -> ``{"prompt", "response", "score"}``.
  """
  if kind == "pairs":
    p, c, r, m = validate_pair(row, index, split)
    return {"prompt": p, "chosen": c, "rejected": r, "margin": m,
            "probability": pair_probability(row, index, split)}
  if kind == "rankings":
    p, rs, rk = validate_ranking(row, index, split)
    return {"prompt": p, "responses": rs, "ranking": rk}
  if kind == "ratings":
    p, r, s = validate_rating(row, index, split)
    return {"prompt": p, "response": r, "score": s}
  raise ValueError(f"unknown preference kind {kind!r}; expected one of {KINDS}")


def _check_mode(on_bad_row: str, on_overlong: str | None = None) -> None:
  if on_bad_row not in ("raise", "skip"):
    raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {on_bad_row!r}")
  if on_overlong is not None and on_overlong not in ("reject", "truncate"):
    raise ValueError(f"on_overlong must be 'reject' or 'truncate', got {on_overlong!r}")


# ----------------------------------------------------------------------------------------------
# JSONL and TFDS.


def read_preference_jsonl(path: str | os.PathLike, kind: str, *, split: str,
                          on_bad_row: str = "raise") -> tuple[list[dict[str, Any]], DataStats]:
  """Parses and validates one JSONL file; returns canonical rows and their :class:`DataStats`.

  Blank lines are ignored. A line that is not valid JSON, or a row that fails validation, raises
  :class:`BadRowError` naming the file and 1-based line (plus split, row index and field), or is
  counted in ``stats.bad_rows`` when ``on_bad_row="skip"``.
  """
  _check_mode(on_bad_row)
  path = os.fspath(path)
  stats = DataStats()
  rows: list[dict[str, Any]] = []
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      index = stats.rows
      stats.rows += 1
      try:
        try:
          raw = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise BadRowError(f"{split} row {index}: not valid JSON ({e})") from None
        rows.append(validate_preference_row(raw, index, split, kind))
      except BadRowError as e:
        if on_bad_row == "raise":
          raise BadRowError(f"{path} line {line_no}: {e}") from None
        stats.bad_rows += 1
  return rows, stats


def _split_paths(jsonl_dir: str | os.PathLike) -> dict[str, str]:
  jsonl_dir = os.fspath(jsonl_dir)
  train = os.path.join(jsonl_dir, "train.jsonl")
  if not os.path.exists(train):
    raise FileNotFoundError(f"preference data: {train} does not exist (train.jsonl is required; "
                            f"validation.jsonl and test.jsonl are optional)")
  paths = {"train": train}
  for split in SPLITS[1:]:
    p = os.path.join(jsonl_dir, f"{split}.jsonl")
    if os.path.exists(p):
      paths[split] = p
  return paths


def content_hash(jsonl_dir: str | os.PathLike) -> str:
  """16 hex digits of SHA-256 over the split names and bytes of the present JSONL files."""
  h = hashlib.sha256()
  for split, path in sorted(_split_paths(jsonl_dir).items()):
    h.update(split.encode() + b"\0")
    with open(path, "rb") as f:
      data = f.read()
    h.update(str(len(data)).encode() + b"\0" + data)
  return h.hexdigest()[:16]


@dataclasses.dataclass(eq=False)
class PreferenceConfig(tfds.core.BuilderConfig):
  """Which JSONL directory and row kind a :class:`PreferenceJsonl` build reads."""

  kind: str = "pairs"
  jsonl_dir: str = ""
  on_bad_row: str = "raise"
  digest: str = ""


def make_preference_config(jsonl_dir: str | os.PathLike, kind: str, *,
                           on_bad_row: str = "raise") -> PreferenceConfig:
  """A config named ``<kind>_<content hash>[_skip]``: new file contents, new cache entry."""
  if kind not in KINDS:
    raise ValueError(f"unknown preference kind {kind!r}; expected one of {KINDS}")
  _check_mode(on_bad_row)
  digest = content_hash(jsonl_dir)
  name = f"{kind}_{digest}" + ("_skip" if on_bad_row == "skip" else "")
  return PreferenceConfig(name=name, kind=kind, jsonl_dir=os.fspath(jsonl_dir),
                          on_bad_row=on_bad_row, digest=digest)


def _features(kind: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  if kind == "pairs":
    spec = {"prompt": text(), "chosen": text(), "rejected": text(), "margin": np.float32,
            "probability": np.float32}
  elif kind == "rankings":
    spec = {"prompt": text(), "responses": tfds.features.Sequence(text()),
            "ranking": tfds.features.Sequence(np.int32)}
  else:
    spec = {"prompt": text(), "response": text(), "score": np.float32}
  return tfds.features.FeaturesDict(spec)


class PreferenceJsonl(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over local preference JSONL. Pass ``config=make_preference_config(...)``.

  Examples keep the JSONL order (shuffling is ours, in :class:`PreferenceBatcher`); bad rows are
  rejected at build time (or dropped, for an ``on_bad_row="skip"`` config).
  """

  # 1.1.0 adds the pairs' ``probability`` feature; caches are versioned directories, so a 1.0.0
  # build of the same files is never read with the new features (it is rebuilt once).
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Pairs carry a soft label 'probability' (1.0 when absent)."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Preference data (pairs, rankings or ratings) read from local JSONL.",
        features=_features(self.builder_config.kind),
        disable_shuffling=True,  # Keep the JSONL order; shuffling is the batcher's job.
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    paths = _split_paths(cfg.jsonl_dir)
    if content_hash(cfg.jsonl_dir) != cfg.digest:
      raise RuntimeError(f"{cfg.jsonl_dir} changed while building config {cfg.name}; retry")
    out = {}
    for split, path in paths.items():
      rows, _ = read_preference_jsonl(path, cfg.kind, split=split, on_bad_row=cfg.on_bad_row)
      if rows:
        out[split] = self._generate_examples(rows)
    return out

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, row


def prepare_preference_with_stats(jsonl_dir: str | os.PathLike, kind: str,
                                  data_dir: str | os.PathLike, *, on_bad_row: str = "raise"
                                  ) -> tuple[dict[str, Any], dict[str, DataStats]]:
  """Like :func:`prepare_preference`, also returning each split's JSONL :class:`DataStats`.

  The stats (rows read, bad rows skipped) are recomputed from the JSONL on every call, so they
  are right whether or not the TFDS cache already existed.
  """
  cfg = make_preference_config(jsonl_dir, kind, on_bad_row=on_bad_row)
  stats = {split: read_preference_jsonl(path, kind, split=split, on_bad_row=on_bad_row)[1]
           for split, path in _split_paths(jsonl_dir).items()}
  if stats["train"].rows == stats["train"].bad_rows:
    raise BadRowError(f"{os.path.join(os.fspath(jsonl_dir), 'train.jsonl')}: no usable rows "
                      f"(rows={stats['train'].rows}, bad={stats['train'].bad_rows})")
  tfds.disable_progress_bar()
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.ERROR)
  from jaxrl_llm.parallel.distributed import primary_first

  # Multi-process: process 0 builds, the others then open it (a builder made before the data
  # exists does not see its splits afterwards, so it is made inside).
  with primary_first(f"tfds:{cfg.name}"):
    builder = PreferenceJsonl(config=cfg, data_dir=os.fspath(data_dir),
                              file_format="array_record")
    builder.download_and_prepare()
  return builder.as_data_source(), stats


def prepare_preference(jsonl_dir: str | os.PathLike, kind: str, data_dir: str | os.PathLike, *,
                       on_bad_row: str = "raise") -> dict[str, Any]:
  """Builds ``<jsonl_dir>/{train,validation,test}.jsonl`` into TFDS if needed.

  Returns ``{split: ArrayRecordDataSource}`` (splits with no rows are absent). Rows come back
  with ``bytes`` text, ``float`` margins/scores and int lists for rankings, in JSONL order.
  Raises FileNotFoundError naming ``train.jsonl`` when it is missing.
  """
  return prepare_preference_with_stats(jsonl_dir, kind, data_dir, on_bad_row=on_bad_row)[0]


def load_split_rows(source) -> list[dict[str, Any]]:
  """All rows of one TFDS data source as a list (random-access read)."""
  return list(source.__getitems__(list(range(len(source))))) if len(source) else []


# ----------------------------------------------------------------------------------------------
# Encoding.


@dataclasses.dataclass
class EncodedPreferenceSplit:
  """A tokenised preference split.

  ``prompts[i]`` is ``int32[P_i]`` (starting with BOS when the tokenizer has one);
  ``responses[i]`` is a list of ``int32[R_ij]`` arrays, each ending with EOS (pairs:
  ``[chosen, rejected]``; rankings: in the row's order; ratings: one). ``rankings[i]`` is
  ``int32[K_i]`` best first (pairs: ``[0, 1]``; ratings: ``[0]``). ``margins`` / ``scores`` are
  ``float32[N]`` (0 where the kind has none); ``probabilities`` ``float32[N]`` are the pairs' soft
  labels (1.0 for hard labels and other kinds). All truncation is shared by a row's responses.
  """

  name: str
  kind: str
  prompts: list[np.ndarray]
  responses: list[list[np.ndarray]]
  rankings: list[np.ndarray]
  margins: np.ndarray
  scores: np.ndarray
  prompt_texts: list[str]
  response_texts: list[list[str]]
  stats: DataStats
  probabilities: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))
  # Tokens each valid row needs (prompt + its longest response), kept or not.
  needed: list[int] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.prompts)

  @property
  def max_responses(self) -> int:
    """Largest K in the split (1 for ratings, 2 for pairs)."""
    return max(len(r) for r in self.responses)


def encode_preference_split(rows: Sequence[Any], tokenizer, *, kind: str, split: str,
                            max_len: int, on_bad_row: str = "raise",
                            on_overlong: str = "reject") -> EncodedPreferenceSplit:
  """Validates and tokenises preference ``rows`` (JSONL dicts or TFDS rows with bytes).

  Each sequence is ``BOS prompt response EOS`` and must fit in ``max_len`` (the largest length
  bucket). When the longest response of a row does not fit, ``on_overlong="reject"`` drops the
  row (``stats.rejected``) and ``"truncate"`` drops the prompt's oldest tokens (keeping BOS and at
  least one prompt token, otherwise the row is rejected) so that every response fits whole; the
  same truncated prompt is used for all of the row's responses (``stats.truncated``).
  """
  _check_mode(on_bad_row, on_overlong)
  stats = DataStats()
  canon: list[dict[str, Any]] = []
  for i, row in enumerate(rows):
    stats.rows += 1
    try:
      canon.append(validate_preference_row(row, i, split, kind))
    except BadRowError:
      if on_bad_row == "raise":
        raise
      stats.bad_rows += 1
  bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
  if eos is None:
    raise ValueError("the tokenizer has no EOS token; response ends could not be marked")
  head = [] if bos is None else [bos]
  if kind == "pairs":
    resp_texts = [[r["chosen"], r["rejected"]] for r in canon]
    order = [[0, 1] for _ in canon]
  elif kind == "rankings":
    resp_texts = [r["responses"] for r in canon]
    order = [r["ranking"] for r in canon]
  else:
    resp_texts = [[r["response"]] for r in canon]
    order = [[0] for _ in canon]
  flat = [t for ts in resp_texts for t in ts]
  p_ids, r_ids = [], []
  if canon:
    p_ids = tokenizer([r["prompt"] for r in canon], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(flat, add_special_tokens=False)["input_ids"]
  out = EncodedPreferenceSplit(split, kind, [], [], [], np.zeros(0, np.float32),
                               np.zeros(0, np.float32), [], [], stats)
  margins, scores, probabilities = [], [], []
  cursor = 0
  for row, texts, rank, p in zip(canon, resp_texts, order, p_ids):
    resps = [list(ids) + [eos] for ids in r_ids[cursor: cursor + len(texts)]]
    cursor += len(texts)
    p = head + list(p)
    room = max_len - max(len(a) for a in resps)
    out.needed.append(len(p) + max_len - room)
    if len(p) > room:
      if on_overlong == "reject" or room < len(head) + 1:
        stats.rejected += 1
        continue
      p = head + p[len(p) - room + len(head):]
      stats.truncated += 1
    out.prompts.append(np.asarray(p, np.int32))
    out.responses.append([np.asarray(a, np.int32) for a in resps])
    out.rankings.append(np.asarray(rank, np.int32))
    out.prompt_texts.append(row["prompt"])
    out.response_texts.append(list(texts))
    margins.append(row.get("margin", 0.0))
    scores.append(row.get("score", 0.0))
    probabilities.append(row.get("probability", 1.0))
  if not out.prompts:
    raise BadRowError(f"{split}: no usable rows left out of {stats.rows} "
                      f"(bad={stats.bad_rows}, rejected as over-long={stats.rejected})")
  out.margins = np.asarray(margins, np.float32)
  out.scores = np.asarray(scores, np.float32)
  out.probabilities = np.asarray(probabilities, np.float32)
  return out


# ----------------------------------------------------------------------------------------------
# Batching.


def _assemble(split: EncodedPreferenceSplit, idx: Sequence[int], length: int, pad_id: int,
              k: int, real: int | None = None) -> dict[str, np.ndarray]:
  """Right-padded arrays for rows ``idx`` (see :class:`PreferenceBatcher` for the layout).

  Rows from ``real`` on are filler: their ``valid`` is all False.
  """
  b = len(idx)
  real = b if real is None else real
  tokens = np.full((b, k, length), pad_id, np.int32)
  attention = np.zeros((b, k, length), bool)
  response = np.zeros((b, k, length), bool)
  last = np.zeros((b, k), np.int32)
  ranking = np.tile(np.arange(k, dtype=np.int32), (b, 1))
  valid = np.zeros((b, k), bool)  # Over ranked positions.
  for row, i in enumerate(idx):
    p = split.prompts[i]
    resps = split.responses[i]
    for j in range(k):
      a = resps[j] if j < len(resps) else resps[0]  # Padded slots copy response 0, masked out.
      n = len(p) + len(a)
      tokens[row, j, : len(p)] = p
      tokens[row, j, len(p): n] = a
      attention[row, j, :n] = True
      last[row, j] = n - 1
      if j < len(resps):
        response[row, j, len(p): n] = True
    kr = len(resps)
    valid[row, :kr] = row < real
    ranking[row, :kr] = split.rankings[i]
    ranking[row, kr:] = np.arange(kr, k, dtype=np.int32)
  if split.kind == "ratings":
    return {"tokens": tokens[:, 0], "attention_mask": attention[:, 0],
            "response_mask": response[:, 0], "last_index": last[:, 0],
            "score": split.scores[np.asarray(idx, np.int64)].astype(np.float32),
            "valid": valid[:, 0]}
  out = {"tokens": tokens, "attention_mask": attention, "response_mask": response,
         "last_index": last, "ranking": ranking, "valid": valid}
  if split.kind == "pairs":
    out["margin"] = split.margins[np.asarray(idx, np.int64)].astype(np.float32)
    out["probability"] = split.probabilities[np.asarray(idx, np.int64)].astype(np.float32)
  return out


def _seq_len(split: EncodedPreferenceSplit, i: int) -> int:
  return len(split.prompts[i]) + max(len(a) for a in split.responses[i])


class PreferenceBatcher(EpochOrder):
  """Deterministic, resumable preference batches: ``batch(position) -> (arrays, next_position)``.

  ``position`` counts examples consumed; epoch ``e`` visits the split in an order that is a pure
  function of ``(data_key, e)``, so ``batch(position)`` is the same on any instance and a resumed
  run continues exactly. Arrays (numpy, host side, right padding; L is the smallest bucket
  holding the batch's longest sequence):

  pairs / rankings (K = 2 for pairs, ``num_responses`` or the split's largest K for rankings):
    * ``tokens int32[B, K, L]``: ``BOS prompt response EOS`` then ``pad_id``.
    * ``attention_mask bool[B, K, L]``: True on real tokens.
    * ``response_mask bool[B, K, L]``: True on response tokens including EOS (position ``t`` marks
      token ``t``, predicted from ``t - 1``): the tokens whose log-probs DPO sums.
    * ``last_index int32[B, K]``: index of the last real token (the EOS), where a reward model
      reads its score.
    * ``ranking int32[B, K]``: response indices best first (pairs: ``[0, 1]``, 0 = chosen). Always
      a permutation of ``0..K-1``: a row with fewer than K responses lists its real ranking first,
      then its padded slots in ascending order.
    * ``valid bool[B, K]``: over *ranked positions*: ``valid[b, r]`` is True iff ``r < K_b``, the
      row's number of responses (always True for pairs). A padded response slot repeats response
      0's tokens, attention and last_index (so a forward pass stays finite) with an all-False
      ``response_mask``; it only ever appears at an invalid ranked position.
    * ``margin float32[B]`` (pairs only): the row's margin, 0 when absent.
    * ``probability float32[B]`` (pairs only): the soft label ``P(chosen ≻ rejected)``, 1.0 when
      absent (a hard label).

  ratings:
    * ``tokens int32[B, L]``, ``attention_mask bool[B, L]``, ``response_mask bool[B, L]``,
      ``last_index int32[B]``, ``score float32[B]``, ``valid bool[B]`` (all True here).
  """

  def __init__(self, encoded: EncodedPreferenceSplit, *, batch_size: int, buckets: Sequence[int],
               pad_id: int, data_key: jax.Array, shuffle: bool = True,
               num_responses: int | None = None):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.split = encoded
    self.batch_size = batch_size
    self.buckets = tuple(sorted(buckets))
    self.pad_id = pad_id
    self.shuffle = shuffle
    self.num_responses = _num_responses(encoded, num_responses)
    self._data_key = data_key
    self._perms: dict[int, np.ndarray] = {}

  @property
  def num_examples(self) -> int:
    return len(self.split)

  def batch(self, position: int) -> tuple[dict[str, np.ndarray], int]:
    """The batch at ``position`` and the next position (``position + batch_size``)."""
    idx = self.indices(position)
    length = pick_bucket(max(_seq_len(self.split, i) for i in idx), self.buckets)
    return (_assemble(self.split, idx.tolist(), length, self.pad_id, self.num_responses),
            position + self.batch_size)


def _num_responses(encoded: EncodedPreferenceSplit, num_responses: int | None) -> int:
  k = encoded.max_responses
  if num_responses is None:
    return k
  if encoded.kind != "rankings" and num_responses != k:
    raise ValueError(f"num_responses={num_responses} but {encoded.kind} always have K={k}")
  if num_responses < k:
    raise ValueError(f"num_responses={num_responses} < the split's largest K={k}")
  return num_responses


def eval_batches(encoded: EncodedPreferenceSplit, batch_size: int, *, buckets: Sequence[int],
                 pad_id: int, num_responses: int | None = None, limit: int = 0
                 ) -> Iterable[dict[str, np.ndarray]]:
  """One pass over the split in order, in a single width L for the whole split.

  Yields the :class:`PreferenceBatcher` arrays plus ``row_valid bool[B]``, False for the filler
  rows of the last batch (which repeat the split's first row so every row is well-formed). The
  filler rows' ``valid`` is all False too (``bool[B, K]`` for pairs/rankings, ``bool[B]`` for
  ratings), so losses and metrics that honour ``valid`` ignore them without extra work.
  ``limit > 0`` stops after that many rows.
  """
  n = len(encoded) if not limit else min(limit, len(encoded))
  k = _num_responses(encoded, num_responses)
  width = pick_bucket(max(_seq_len(encoded, i) for i in range(n)), sorted(buckets))
  for start in range(0, n, batch_size):
    rows = list(range(start, min(start + batch_size, n)))
    row_valid = np.zeros((batch_size,), bool)
    row_valid[: len(rows)] = True
    batch = _assemble(encoded, rows + [0] * (batch_size - len(rows)), width, pad_id, k,
                      real=len(rows))
    batch["row_valid"] = row_valid
    yield batch


# ----------------------------------------------------------------------------------------------
# The synthetic preference task: "n=<n>:" -> n digits; hidden property = sorted ascending
# (jaxrl_llm.data.sorted_digits).


def _digits_at_level(rng: np.random.Generator, n: int, level: int) -> str:
  """A random ``n``-digit string with exactly ``level`` non-decreasing adjacent pairs."""
  while True:
    up = np.zeros(n - 1, bool)
    up[rng.choice(n - 1, size=level, replace=False)] = True
    d = int(rng.integers(10))
    out = [d]
    for step_up in up:
      if step_up:
        d = int(rng.integers(d, 10))
      elif d == 0:
        break
      else:
        d = int(rng.integers(0, d))
      out.append(d)
    if len(out) == n:
      return "".join(map(str, out))


def generate_pairs(n: int, *, seed: int, one_sorted_fraction: float = 0.6,
                   with_margin: bool = False, min_digits: int = 3,
                   max_digits: int = 6) -> list[dict[str, Any]]:
  """``n`` pair rows where chosen's hidden score is strictly higher than rejected's.

  Both responses have the prompt's length. A fraction ``one_sorted_fraction`` of pairs (at random
  positions) has a sorted chosen and an unsorted rejected; the rest are graded pairs where neither
  is sorted. ``with_margin`` adds ``"margin"`` = the hidden-score difference.
  """
  _check_digits(min_digits, max_digits)
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    k = int(rng.integers(min_digits, max_digits + 1))
    if rng.random() < one_sorted_fraction:
      hi, lo = k - 1, int(rng.integers(0, k - 1))
    else:
      if k < 3:  # Only two levels: the graded pair degenerates to a sorted one.
        hi, lo = 1, 0
      else:
        hi, lo = sorted(rng.choice(k - 1, size=2, replace=False).tolist(), reverse=True)
    chosen, rejected = _digits_at_level(rng, k, hi), _digits_at_level(rng, k, lo)
    row: dict[str, Any] = {"prompt": synthetic_prompt(k), "chosen": chosen, "rejected": rejected}
    if with_margin:
      row["margin"] = hidden_score(chosen) - hidden_score(rejected)
    rows.append(row)
  return rows


def generate_rankings(n: int, *, seed: int, k: int = 4, min_digits: int = 3,
                      max_digits: int = 6) -> list[dict[str, Any]]:
  """``n`` ranking rows of ``k`` responses with distinct hidden scores, ranked by hidden score.

  A string of ``m`` digits has only ``m`` score levels, so prompts ask for
  ``max(min_digits, k)..max_digits`` digits. Responses are in random order; ``ranking`` lists
  their indices best first.
  """
  lo = max(min_digits, k)
  if k < 2 or lo > max_digits:
    raise ValueError(f"k={k} needs 2 <= k <= max_digits ({max_digits}) distinct score levels")
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    m = int(rng.integers(lo, max_digits + 1))
    levels = rng.choice(m, size=k, replace=False).tolist()
    responses = [_digits_at_level(rng, m, lv) for lv in levels]
    ranking = sorted(range(k), key=lambda j: -levels[j])
    rows.append({"prompt": synthetic_prompt(m), "responses": responses, "ranking": ranking})
  return rows


def generate_ratings(n: int, *, seed: int, min_digits: int = 3,
                     max_digits: int = 6) -> list[dict[str, Any]]:
  """``n`` rating rows ``{"prompt", "response", "score"}`` with score = :func:`hidden_score`.

  Score levels are drawn uniformly, so every level (sorted included) is well represented.
  """
  _check_digits(min_digits, max_digits)
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    m = int(rng.integers(min_digits, max_digits + 1))
    response = _digits_at_level(rng, m, int(rng.integers(0, m)))
    rows.append({"prompt": synthetic_prompt(m), "response": response,
                 "score": hidden_score(response)})
  return rows


def _derived_seed(seed: int, kind_tag: int, split_tag: int) -> int:
  ss = np.random.SeedSequence(entropy=seed, spawn_key=(kind_tag, split_tag))
  return int(ss.generate_state(1, np.uint32)[0])


def write_synthetic_preference_jsonl(out_dir: str | os.PathLike, *, seed: int, train_size: int,
                                     validation_size: int = 0, test_size: int = 0, k: int = 4,
                                     sorted_fraction: float = 0.2) -> dict[str, str]:
  """Writes ``<out_dir>/{pairs,rankings,ratings,sft}/{train,validation,test}.jsonl``.

  Each (kind, split) is generated from its own seed derived from ``seed``, so splits are drawn
  independently: their responses differ, but the prompt space is tiny (``n=3:`` .. ``n=6:``) and
  prompts do repeat across splits, by design. Empty splits are not written. Returns
  ``{kind: directory}``.
  """
  if train_size < 1:
    raise ValueError("train_size must be >= 1")
  gens = {
      "pairs": lambda size, s: generate_pairs(size, seed=s),
      "rankings": lambda size, s: generate_rankings(size, seed=s, k=k),
      "ratings": lambda size, s: generate_ratings(size, seed=s),
      "sft": lambda size, s: generate_sft_demos(size, seed=s, sorted_fraction=sorted_fraction),
  }
  sizes = {"train": train_size, "validation": validation_size, "test": test_size}
  out = {}
  for kind_tag, (kind, gen) in enumerate(gens.items()):
    d = os.path.join(os.fspath(out_dir), kind)
    os.makedirs(d, exist_ok=True)
    for split_tag, split in enumerate(SPLITS):
      path = os.path.join(d, f"{split}.jsonl")
      if sizes[split] <= 0:
        if os.path.exists(path):
          os.remove(path)  # A stale file from an earlier call would otherwise be read.
        continue
      rows = gen(sizes[split], _derived_seed(seed, kind_tag, split_tag))
      with open(path, "w") as f:
        for row in rows:
          f.write(json.dumps(row) + "\n")
    out[kind] = d
  return out
