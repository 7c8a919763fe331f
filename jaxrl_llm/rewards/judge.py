"""AI-feedback judges and preference labeling (RLAIF, docs/algorithms.md §19).

A judge turns two candidate responses to a prompt into a soft preference label
``p = P(first ≻ second)``:

* :class:`FunctionJudge` wraps any reward function ``(prompts, completions, **columns) ->
  float32[B]`` (a user function, a verifier,
  :class:`~jaxrl_llm.rewards.learned.RewardModelFunction`) as a Bradley–Terry judge, ``p = σ((s_1 − s_2) / T)``.
* :class:`RewardModelJudge` is that over a trained reward-model run (raw scores, ``T = 1``).
* :class:`LMJudge` asks a language model: it renders a labeler prompt from a ``str.format``
  template, reads the next-token log-probs of the option tokens (``"1"``/``"2"``) at the end of it
  and softmaxes them over the two options. ``both_orders`` also asks with the responses swapped and
  averages ``(p_ab + (1 − p_ba)) / 2`` (position-bias mitigation, so ``P(a, b) + P(b, a) = 1``);
  ``clamp=(0.4, 0.6)`` bounds the labels (Constitutional AI with chain-of-thought). Its
  :meth:`LMJudge.score` is direct RLAIF: the probability-weighted level of a score prompt,
  rescaled to ``[−1, 1]``; the judge is also a reward function (``judge(prompts, completions)``).

:func:`label_pairs` labels candidate rows ``{"prompt", "responses": [...]}`` into pair rows
``{"prompt", "chosen", "rejected", "probability", "labeler"}`` (the soft-label pair format of
:mod:`jaxrl_llm.data.preference`), dropping identical and low-confidence pairs, with a JSONL label
cache keyed by ``sha256(judge_id, template, prompt, first, second)``: relabeling with the same
judge and template is free, a different judge or template never hits a stale label.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import string
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_llm.data.pipeline import pick_bucket
from jaxrl_llm.parallel.distributed import device_get

DEFAULT_TEMPLATE = ("Prompt: {prompt}\nResponse 1: {first}\nResponse 2: {second}\n"
                    "The better response is Response ")
DEFAULT_SCORE_TEMPLATE = "Prompt: {prompt}\nResponse: {answer}\nScore (0-9): "
DIGIT_LEVELS = tuple(str(i) for i in range(10))
PAIR_MODES = ("all", "adjacent")


class Judge(Protocol):
  """What :func:`label_pairs` needs from a judge.

  Attributes:
    judge_id: identifies the labeler (model and version, settings); part of the cache key.
    template: the labeler prompt template ("" when there is none); part of the cache key.
  """

  judge_id: str
  template: str

  def preference(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
                 ) -> np.ndarray:
    """``P(first ≻ second)`` per row, float32 ``[B]`` in ``[0, 1]``."""
    ...

  def score(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """A pointwise score per row, float32 ``[B]`` (where meaningful: a reward function's value,
    an LM judge's rescaled level in ``[−1, 1]``); not used by :func:`label_pairs`."""
    ...


def _sigmoid(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))),
                  np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def params_digest(params: Any) -> str:
  """16 hex digits of SHA-256 over a params tree's paths, shapes, dtypes and bytes (versioning)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(device_get(params))[0]:
    arr = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{arr.shape}:{arr.dtype}\0".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Judges over reward functions.


class FunctionJudge:
  """A Bradley–Terry judge over a scoring function: ``P(a ≻ b) = σ((s(a) − s(b)) / T)``.

  Args:
    score_fn: ``(prompts, completions, **columns) -> float32[B]`` (any reward function).
    temperature: T > 0; smaller is more confident.
    judge_id: cache version; default ``fn:<module.qualname>:T=<T>`` (pass your own when the
      function's behaviour changes without its name changing).
  """

  template = ""

  def __init__(self, score_fn: Callable[..., Any], *, temperature: float = 1.0,
               judge_id: str | None = None):
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    self.score_fn = score_fn
    self.temperature = float(temperature)
    name = getattr(score_fn, "__qualname__", type(score_fn).__qualname__)
    self.judge_id = judge_id or (f"fn:{getattr(score_fn, '__module__', '?')}.{name}"
                                 f":T={self.temperature:g}")

  def score(self, prompts: Sequence[str], answers: Sequence[str], **columns: Any) -> np.ndarray:
    """The wrapped function's scores, float32 ``[B]``."""
    out = np.asarray(self.score_fn(list(prompts), list(answers), **columns), np.float32)
    if out.shape != (len(answers),):
      raise ValueError(f"score function returned shape {out.shape} for {len(answers)} answers")
    return out

  def preference(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                 **columns: Any) -> np.ndarray:
    """``σ((s(first) − s(second)) / T)``, float32 ``[B]``; both sides scored in one call."""
    b = len(prompts)
    if not len(first) == len(second) == b:
      raise ValueError(f"{b} prompts, {len(first)} first and {len(second)} second responses")
    if b == 0:
      return np.zeros((0,), np.float32)
    both = {k: list(v) + list(v) for k, v in columns.items()}
    s = self.score(list(prompts) * 2, list(first) + list(second), **both).astype(np.float64)
    return _sigmoid((s[:b] - s[b:]) / self.temperature).astype(np.float32)


class RewardModelJudge(FunctionJudge):
  """:class:`FunctionJudge` over a reward-model run: ``P(a ≻ b) = σ(r(a) − r(b))`` with the raw
  (unnormalised) Bradley–Terry scores, the probability the reward model was trained to predict.

  ``judge_id`` is ``rm:<params digest>``: retraining the run changes it.
  """

  def __init__(self, run_dir: str, *, batch_size: int = 64, temperature: float = 1.0):
    from jaxrl_llm.rewards.learned import RewardModelFunction

    fn = RewardModelFunction(run_dir, normalize=False, batch_size=batch_size)
    super().__init__(fn, temperature=temperature,
                     judge_id=f"rm:{params_digest(fn.params)}:T={float(temperature):g}")
    self.run_dir = run_dir


# ----------------------------------------------------------------------------------------------
# The LM judge.


def _template_fields(template: str, allowed: Sequence[str]) -> list[tuple[str, str | None]]:
  """``[(literal, field | None)]`` of a ``str.format`` template; only ``allowed`` fields."""
  parts = []
  for literal, field, spec, conv in string.Formatter().parse(template):
    if field is not None and (field not in allowed or spec or conv):
      raise ValueError(f"template field {{{field}}} is not supported; use only "
                       f"{', '.join('{' + a + '}' for a in allowed)}")
    parts.append((literal, field))
  return parts


def _fit(prompt: list[int], responses: list[list[int]], overhead: int, room: int
         ) -> tuple[list[int], list[list[int]]]:
  """Truncates so that ``overhead + |prompt| + Σ|responses| <= room``: first the responses to a
  common cap (keeping their beginnings, the same cap for every response so both orders see the
  same texts), then the prompt's oldest tokens."""
  total = overhead + len(prompt) + sum(len(r) for r in responses)
  if total <= room:
    return prompt, responses
  budget = room - overhead - len(prompt)
  cap = max((len(r) for r in responses), default=0)
  while cap > 1 and sum(min(len(r), cap) for r in responses) > budget:
    cap -= 1
  responses = [r[:cap] for r in responses]
  left = room - overhead - sum(len(r) for r in responses)
  if left < 0:
    raise ValueError(f"the labeler template alone needs {overhead} tokens, more than the largest "
                     f"length bucket {room}")
  return (prompt[len(prompt) - left:] if left else []), responses


class LMJudge:
  """A language-model labeler: soft preferences from the next-token log-probs of option tokens.

  Args:
    params: the labeler's decoder params.
    model_config: its :class:`~jaxrl_llm.config.ModelConfig`.
    tokenizer: its tokenizer (BOS is prepended when it has one).
    template: ``str.format`` template with ``{prompt}``, ``{first}``, ``{second}``; the option
      token is predicted right after it.
    options: the two option strings (``first``, ``second``); each must be one token.
    both_orders: also label the swapped pair and average (position-bias mitigation).
    clamp: optional ``(lo, hi)`` bounds of the final probability, e.g. ``(0.4, 0.6)``.
    batch_size: rows per jitted forward (the last batch is padded with filler rows).
    buckets: sequence lengths; each batch is padded to the smallest bucket holding it and longer
      inputs are truncated to the largest (responses first, then the prompt's oldest tokens).
    score_template, levels: defaults of :meth:`score` (``{prompt}``, ``{answer}``; one token each).
    judge_id: cache version; default ``lm:<params digest>:<settings digest>``.

  Each forward is ``Decoder.apply(params, tokens int32[batch_size, L], mask bool[batch_size, L])``
  in one jitted function per bucket (static shapes), reading only the last real position.
  """

  def __init__(self, params: Any, model_config: Any, tokenizer: Any, *,
               template: str = DEFAULT_TEMPLATE, options: Sequence[str] = ("1", "2"),
               both_orders: bool = True, clamp: tuple[float, float] | None = None,
               batch_size: int = 16, buckets: Sequence[int] = (128, 256, 512),
               score_template: str = DEFAULT_SCORE_TEMPLATE,
               levels: Sequence[str] = DIGIT_LEVELS, judge_id: str | None = None):
    from jaxrl_llm.models.decoder import Decoder, lm_head_weight

    if len(options) != 2:
      raise ValueError(f"options must be two strings, got {tuple(options)!r}")
    if clamp is not None and not 0.0 <= clamp[0] <= 0.5 <= clamp[1] <= 1.0:
      raise ValueError(f"clamp must be (lo, hi) with 0 <= lo <= 0.5 <= hi <= 1, got {clamp}")
    if batch_size < 1 or not buckets:
      raise ValueError("batch_size must be >= 1 and buckets non-empty")
    self.params = params
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.template = template
    self._parts = _template_fields(template, ("prompt", "first", "second"))
    self.options = tuple(options)
    self._option_ids = self._single_tokens(self.options, "option")
    self.both_orders = both_orders
    self.clamp = None if clamp is None else (float(clamp[0]), float(clamp[1]))
    self.batch_size = batch_size
    self.buckets = tuple(sorted(buckets))
    self.score_template = score_template
    self.levels = tuple(levels)
    settings = json.dumps([template, self.options, both_orders, self.clamp])
    self.judge_id = judge_id or (f"lm:{params_digest(params)}:"
                                 f"{hashlib.sha256(settings.encode()).hexdigest()[:8]}")
    decoder = Decoder(model_config)
    softcap = model_config.final_softcap

    def option_logprobs(p, tokens, mask, last, option_ids):
      hidden = decoder.apply({"params": p}, tokens, mask, return_hidden=True)  # [B, L, D]
      h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
      logits = jnp.einsum("BD,DV->BV", h, lm_head_weight(p, model_config).astype(h.dtype),
                          preferred_element_type=jnp.float32)
      if softcap:
        logits = jnp.tanh(logits / softcap) * softcap
      logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      return jnp.take(logp, option_ids, axis=-1)  # [B, n_options]

    self._forward = jax.jit(option_logprobs)

  @classmethod
  def from_run(cls, run_dir: str, **kwargs: Any) -> "LMJudge":
    """The policy of a run directory (SFT, RL, DPO, PPO actor) as a judge; ``buckets`` default
    to the run's ``data.length_buckets``. Other arguments as in :class:`LMJudge`."""
    from jaxrl_llm.rundir.artifacts import load_run

    art = load_run(run_dir)
    kwargs.setdefault("buckets", tuple(art.config.data.length_buckets))
    return cls(jax.device_put(art.policy_params()), art.model_config, art.tokenizer, **kwargs)

  def _ids(self, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
      return []
    return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

  def _single_tokens(self, strings: Sequence[str], what: str) -> np.ndarray:
    ids = []
    for s, toks in zip(strings, self._ids(list(strings))):
      if len(toks) != 1:
        raise ValueError(f"{what} {s!r} is {len(toks)} tokens in the labeler tokenizer; every "
                         f"{what} must be exactly one token")
      ids.append(toks[0])
    if len(set(ids)) != len(ids):
      raise ValueError(f"{what}s {tuple(strings)!r} map to the same token")
    return np.asarray(ids, np.int32)

  def _render(self, parts, values: list[dict[str, str]]) -> list[list[int]]:
    """Token ids of rendered templates (segments tokenised separately, responses truncated
    consistently to fit the largest bucket)."""
    if not values:
      return []
    bos = self.tokenizer.bos_token_id
    head = [] if bos is None else [bos]
    literals = self._ids([lit for lit, _ in parts])
    overhead = len(head) + sum(len(x) for x in literals)
    names = [f for _, f in parts if f is not None]
    texts = sorted({v[n] for v in values for n in names})
    cache = dict(zip(texts, self._ids(texts)))  # Each distinct text tokenised once.
    out = []
    for v in values:
      prompt = cache[v["prompt"]] if "prompt" in names else []
      resp_names = [n for n in dict.fromkeys(names) if n != "prompt"]
      prompt, resps = _fit(prompt, [cache[v[n]] for n in resp_names], overhead, self.buckets[-1])
      field = dict(zip(resp_names, resps), prompt=prompt)
      seq = list(head)
      for lit, (_, name) in zip(literals, parts):
        seq += lit
        if name is not None:
          seq += field[name]
      out.append(seq)
    return out

  def _option_probs(self, seqs: list[list[int]], option_ids: np.ndarray) -> np.ndarray:
    """Softmax over the options of the next-token log-probs after each sequence: float64
    ``[N, n_options]``. One jitted forward per padded batch."""
    n_opt = len(option_ids)
    out = np.zeros((len(seqs), n_opt), np.float64)
    pad = self.tokenizer.pad_token_id or 0
    ids = jnp.asarray(option_ids)
    for start in range(0, len(seqs), self.batch_size):
      chunk = seqs[start:start + self.batch_size]
      length = pick_bucket(max(len(s) for s in chunk), self.buckets)
      tokens = np.full((self.batch_size, length), pad, np.int32)
      mask = np.zeros((self.batch_size, length), bool)
      last = np.zeros((self.batch_size,), np.int32)
      for r, s in enumerate(chunk):
        tokens[r, :len(s)] = s
        mask[r, :len(s)] = True
        last[r] = len(s) - 1
      mask[len(chunk):, 0] = True  # Filler rows: one token, discarded.
      logp = np.asarray(self._forward(self.params, tokens, mask, last, ids), np.float64)
      logp = logp[:len(chunk)]
      logp = logp - logp.max(axis=-1, keepdims=True)
      probs = np.exp(logp)
      out[start:start + len(chunk)] = probs / probs.sum(axis=-1, keepdims=True)
    return out

  def preference(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                 **_: Any) -> np.ndarray:
    """``P(first ≻ second)`` per row, float32 ``[B]``: option-1 probability of the two-way
    softmax; with ``both_orders`` ``(p_ab + 1 − p_ba) / 2``; then ``clamp``."""
    b = len(prompts)
    if not len(first) == len(second) == b:
      raise ValueError(f"{b} prompts, {len(first)} first and {len(second)} second responses")
    if b == 0:
      return np.zeros((0,), np.float32)
    rows = [{"prompt": p, "first": a, "second": c} for p, a, c in zip(prompts, first, second)]
    if self.both_orders:
      rows += [{"prompt": p, "first": c, "second": a} for p, a, c in zip(prompts, first, second)]
    probs = self._option_probs(self._render(self._parts, rows), self._option_ids)[:, 0]
    p = probs[:b]
    if self.both_orders:
      p = 0.5 + 0.5 * (p - probs[b:])  # = (p_ab + (1 − p_ba)) / 2, antisymmetric in a, b.
    if self.clamp is not None:
      p = np.clip(p, *self.clamp)
    return p.astype(np.float32)

  def score(self, prompts: Sequence[str], answers: Sequence[str], *,
            score_template: str | None = None, levels: Sequence[str] | None = None,
            **_: Any) -> np.ndarray:
    """Direct RLAIF (Lee et al.): the probability-weighted level ``Σ_i i·P(level_i)`` of a score
    prompt, over levels ``0..n−1`` (each level one token), rescaled to ``[−1, 1]``.

    Args:
      score_template: ``str.format`` template with ``{prompt}`` and ``{answer}`` (default: the
        judge's ``score_template``).
      levels: the level strings, worst first (default: the judge's ``levels``, ``"0".."9"``).
    Returns:
      float32 ``[B]`` in ``[−1, 1]``.
    """
    levels = tuple(self.levels if levels is None else levels)
    if len(levels) < 2:
      raise ValueError(f"levels needs at least two strings, got {levels!r}")
    level_ids = self._single_tokens(levels, "level")
    parts = _template_fields(self.score_template if score_template is None else score_template,
                             ("prompt", "answer"))
    if len(prompts) != len(answers):
      raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers")
    if not answers:
      return np.zeros((0,), np.float32)
    rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    probs = self._option_probs(self._render(parts, rows), level_ids)
    expected = probs @ np.arange(len(levels), dtype=np.float64)
    return (2.0 * expected / (len(levels) - 1) - 1.0).astype(np.float32)

  def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> np.ndarray:
    """The judge as a reward function (direct RLAIF): :meth:`score`. float32 ``[B]``."""
    return self.score(prompts, completions)


# ----------------------------------------------------------------------------------------------
# Labeling candidate rows into soft-label pairs.


def cache_key(judge_id: str, template: str, prompt: str, first: str, second: str) -> str:
  """SHA-256 hex of the labeler identity, its template and the ordered pair."""
  blob = json.dumps([judge_id, template, prompt, first, second], ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_cache(path: str | None) -> dict[str, float]:
  out: dict[str, float] = {}
  if not path or not os.path.exists(path):
    return out
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        entry = json.loads(line)
        out[str(entry["key"])] = float(entry["p"])
      except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        continue  # A torn last line of an interrupted run: that label is recomputed.
  return out


def _candidate_row(row: Any, index: int) -> tuple[str, list[str]]:
  """``(prompt, responses)`` of a candidate row, or ValueError naming the row and field."""
  if not isinstance(row, dict):
    raise ValueError(f"row {index}: expected an object with 'prompt' and 'responses', got "
                     f"{type(row).__name__}")
  for field in ("prompt", "responses"):
    if field not in row:
      raise ValueError(f"row {index} field '{field}': missing")
  prompt, responses = row["prompt"], row["responses"]
  if not isinstance(prompt, str):
    raise ValueError(f"row {index} field 'prompt': expected a string, got {type(prompt).__name__}")
  if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
    raise ValueError(f"row {index} field 'responses': expected a list of strings")
  if len(responses) < 2:
    raise ValueError(f"row {index} field 'responses': needs at least 2 responses, got "
                     f"{len(responses)}")
  return prompt, responses


def label_pairs(judge: Judge, rows: Sequence[dict[str, Any]], *, min_confidence: float = 0.0,
                cache_path: str | None = None, pairs: str = "all"
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Labels candidate rows into soft-label preference pairs.

  Args:
    judge: any :class:`Judge` (called once, on every pair not in the cache).
    rows: ``{"prompt": str, "responses": [str] * K}`` with ``K >= 2``.
    min_confidence: drop pairs with ``|p − 0.5| < min_confidence`` (0: keep all).
    cache_path: JSONL label cache (read, then appended to); None for no cache.
    pairs: ``"all"`` labels every unordered pair ``(i, j), i < j`` of a row (``K(K−1)/2``, the
      most signal per candidate set); ``"adjacent"`` only ``(i, i+1)`` (``K − 1`` judge calls).
  Returns:
    (pair rows ``{"prompt", "chosen", "rejected", "probability", "labeler"}`` with ``probability =
    P(chosen ≻ rejected) >= 0.5`` (oriented by the judge), in row then pair order; stats ``{"rows",
    "pairs", "identical", "empty", "low_confidence", "kept", "cache_hits", "judged",
    "mean_probability", "judge_id"}``).
  Raises:
    ValueError: a malformed row (naming its index and field) or bad arguments.
  """
  if pairs not in PAIR_MODES:
    raise ValueError(f"pairs must be one of {PAIR_MODES}, got {pairs!r}")
  if not 0.0 <= min_confidence <= 0.5:
    raise ValueError(f"min_confidence must be in [0, 0.5], got {min_confidence}")
  judge_id, template = str(judge.judge_id), str(getattr(judge, "template", ""))
  stats: dict[str, Any] = {"rows": 0, "pairs": 0, "identical": 0, "empty": 0,
                           "low_confidence": 0, "kept": 0, "cache_hits": 0, "judged": 0}
  todo: list[tuple[str, str, str, str]] = []  # (key, prompt, a, b), in order.
  sources: list[int] = []  # the candidate row of each pair in `todo`
  for index, row in enumerate(rows):
    prompt, responses = _candidate_row(row, index)
    stats["rows"] += 1
    k = len(responses)
    ij = (itertools.combinations(range(k), 2) if pairs == "all"
          else ((i, i + 1) for i in range(k - 1)))
    for i, j in ij:
      a, b = responses[i], responses[j]
      stats["pairs"] += 1
      if not a or not b:
        stats["empty"] += 1
      elif a == b:
        stats["identical"] += 1
      else:
        todo.append((cache_key(judge_id, template, prompt, a, b), prompt, a, b))
        sources.append(index)
  cached = _read_cache(cache_path)
  missing = list(dict.fromkeys(key for key, *_ in todo if key not in cached))
  stats["cache_hits"] = sum(key in cached for key, *_ in todo)
  if missing:
    first_of = {}
    for key, prompt, a, b in todo:
      first_of.setdefault(key, (prompt, a, b))
    batch = [first_of[key] for key in missing]
    probs = np.asarray(judge.preference([x[0] for x in batch], [x[1] for x in batch],
                                        [x[2] for x in batch]), np.float64).reshape(-1)
    if probs.shape != (len(batch),) or not np.all(np.isfinite(probs)):
      raise ValueError(f"judge {judge_id!r} returned {probs.shape} values (finite: "
                       f"{bool(np.all(np.isfinite(probs)))}) for {len(batch)} pairs")
    probs = np.clip(probs, 0.0, 1.0)
    stats["judged"] = len(batch)
    fresh = dict(zip(missing, probs.tolist()))
    cached.update(fresh)
    if cache_path:
      os.makedirs(os.path.dirname(os.path.abspath(cache_path)), exist_ok=True)
      with open(cache_path, "a", encoding="utf-8") as f:
        for key, p in fresh.items():
          f.write(json.dumps({"key": key, "p": p, "judge": judge_id}) + "\n")
  out, out_rows = [], []
  for (key, prompt, a, b), source in zip(todo, sources):
    p = cached[key]
    if abs(p - 0.5) < min_confidence:
      stats["low_confidence"] += 1
      continue
    out_rows.append(source)
    chosen, rejected, prob = (a, b, p) if p >= 0.5 else (b, a, 1.0 - p)
    out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                "probability": float(min(max(prob, 0.5), 1.0)), "labeler": judge_id})
  stats["kept"] = len(out)
  stats["mean_probability"] = (float(np.mean([r["probability"] for r in out])) if out
                               else None)
  stats["judge_id"] = judge_id
  stats["pair_rows"] = out_rows  # the candidate row each kept pair came from (for hold-outs).
  return out, stats


def read_candidates(path: str) -> list[dict[str, Any]]:
  """Candidate rows of a JSONL file (blank lines skipped), validated; ValueError names the
  1-based line and field."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {line_no}: not valid JSON ({e})") from None
      try:
        _candidate_row(row, len(rows))
      except ValueError as e:
        raise ValueError(f"{path} line {line_no}: {e}") from None
      rows.append(row)
  return rows


def holdout_split(prompt: str, *, validation_fraction: float, test_fraction: float) -> str:
  """The split of a prompt's pairs: ``"validation"``, ``"test"`` or ``"train"``, from a hash of the
  prompt text (deterministic, and all pairs of one prompt land in the same split)."""
  u = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
  if u < validation_fraction:
    return "validation"
  if u < validation_fraction + test_fraction:
    return "test"
  return "train"


def write_labeled(out_dir: str, pair_rows: Sequence[dict[str, Any]], stats: dict[str, Any], *,
                  validation_fraction: float = 0.1, test_fraction: float = 0.1,
                  holdout_by: str = "prompt") -> str:
  """Writes ``out_dir/{train,validation,test}.jsonl`` (pair rows; all pairs of a prompt -- or,
  with ``holdout_by="row"``, of a candidate row, from ``stats["pair_rows"]`` -- go to the split
  :func:`holdout_split` gives it) and ``out_dir/labels.json`` (stats with rows per split, judge
  id); returns the train JSONL path. ``"row"`` is for tasks with few distinct prompts (a
  synthetic task whose prompt is a length), where holding out whole prompts leaves a split
  empty. The directory then trains a reward model or DPO with
  ``data.source=jsonl data.jsonl_dir=out_dir data.preference_kind=pairs``, held-out metrics
  included."""
  if not (0 <= validation_fraction < 1 and 0 <= test_fraction < 1 and
          validation_fraction + test_fraction < 1):
    raise ValueError("validation and test fractions must be in [0, 1) with a sum below 1, got "
                     f"{validation_fraction} and {test_fraction}")
  if holdout_by not in ("prompt", "row"):
    raise ValueError(f"holdout_by must be 'prompt' or 'row', got {holdout_by!r}")
  stats = dict(stats)
  sources = stats.pop("pair_rows", None)
  if holdout_by == "row":
    if sources is None or len(sources) != len(pair_rows):
      raise ValueError("holdout_by='row' needs stats['pair_rows'] from label_pairs")
    keys = [f"row {s}" for s in sources]
  else:
    keys = [str(row["prompt"]) for row in pair_rows]
  os.makedirs(out_dir, exist_ok=True)
  splits: dict[str, list] = {"train": [], "validation": [], "test": []}
  for row, key in zip(pair_rows, keys):
    splits[holdout_split(key, validation_fraction=validation_fraction,
                         test_fraction=test_fraction)].append(row)
  for split, rows in splits.items():
    with open(os.path.join(out_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
  stats = dict(stats, split_pairs={k: len(v) for k, v in splits.items()}, holdout_by=holdout_by)
  with open(os.path.join(out_dir, "labels.json"), "w", encoding="utf-8") as f:
    json.dump(stats, f, indent=2, sort_keys=True)
  return os.path.join(out_dir, "train.jsonl")


def make_judge(spec: str, *, template: str | None = None) -> Judge:
  """A judge from a CLI spec: ``rm:RUN_DIR`` (:class:`RewardModelJudge`) or ``lm:RUN_DIR``
  (:meth:`LMJudge.from_run`, with ``template`` when given).

  Raises:
    ValueError: an unknown spec kind, or a template with ``rm:``.
    FileNotFoundError: the run directory is missing or incomplete.
  """
  kind, _, run_dir = spec.partition(":")
  if kind not in ("rm", "lm") or not run_dir:
    raise ValueError(f"--judge must be rm:RUN_DIR or lm:RUN_DIR, got {spec!r}")
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"judge run directory {run_dir!r} does not exist")
  if kind == "rm":
    if template is not None:
      raise ValueError("a template applies to lm: judges only, not rm:")
    return RewardModelJudge(run_dir)
  return LMJudge.from_run(run_dir, **({} if template is None else {"template": template}))
