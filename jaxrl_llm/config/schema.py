"""The typed configuration tree of a run.

Every section is a frozen, keyword-only dataclass validated in ``__post_init__``: a bad value raises
:class:`ConfigError` naming the dotted field (``train.batch_size``) before anything is compiled.
The tree is plain data -- no functions, no arrays -- so it round-trips through JSON exactly and a run
directory's ``config.json`` reproduces the run.

Sections: ``model``, ``data``, ``optimizer``, ``algorithm``, ``train``, ``mesh``, ``logging``,
the RL sections ``rollout``, ``reward`` and ``init``, and the root ``seed``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
from typing import Literal

from jaxrl_llm.imports import is_import_path


class ConfigError(ValueError):
  """A configuration value or key is invalid. The message names the dotted field."""


def _fail(field: str, msg: str):
  raise ConfigError(f"config field '{field}': {msg}")


def _positive(section: str, obj, *names: str, allow_zero: bool = False):
  for name in names:
    value = getattr(obj, name)
    if allow_zero and value < 0 or (not allow_zero and value <= 0):
      _fail(f"{section}.{name}", f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


_DTYPES = ("float32", "bfloat16", "float16")


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gpt2")


LORA_WEIGHTS = ("q", "k", "v", "o", "up", "gate", "down")  # Per layer: layer_{i}/attn|mlp/NAME.


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
  """Low-rank adapters (Hu et al. 2021, "LoRA", arXiv:2106.09685) on a frozen base.

  ``rank = 0`` trains every parameter. With ``rank = r > 0`` each targeted weight ``W`` gets
  ``A`` (input dims x r, random) and ``B`` (r x output dims, zero, so step 0 is the base exactly);
  the layer computes ``x·W + (alpha / r)·(dropout(x)·A)·B`` (``rslora``: ``alpha / sqrt(r)``,
  Kalajdzievski 2023, arXiv:2312.03732), adapters in float32 whatever ``param_dtype`` stores the
  base in. Only the adapters are trained; the reference policy is the base with adapters off.
  """

  rank: int = 0
  alpha: float = 16.0
  dropout: float = 0.0
  rslora: bool = False
  # Which weights: fnmatch patterns over the weights' names inside the decoder,
  # ``layer_{i}/attn/{q,k,v,o}`` and ``layer_{i}/mlp/{up,gate,down}``; a bare name ("q", "up")
  # matches it in every layer, "layer_[0-3]/mlp/*" the MLPs of the first four layers.
  targets: tuple[str, ...] = ("q", "k", "v", "o")

  def __post_init__(self):
    _positive("model.lora", self, "rank", "alpha", "dropout", allow_zero=True)
    if not self.dropout < 1.0:
      _fail("model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
    if self.rank and not self.targets:
      _fail("model.lora.targets", "is empty: name at least one weight (e.g. 'q', 'v', 'up')")


@functools.lru_cache(maxsize=256)
def _lora_weights(n_layers: int, gated_mlp: bool, patterns: tuple[str, ...]) -> tuple[str, ...]:
  names = [f"layer_{i}/{part}/{w}" for i in range(n_layers) for part, ws in
           (("attn", LORA_WEIGHTS[:4]), ("mlp", LORA_WEIGHTS[4:])) for w in ws
           if w != "gate" or gated_mlp]
  return tuple(n for n in names if any(
      fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.rsplit("/", 1)[1], p) for p in patterns))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """One configurable decoder covering Llama 2/3, Qwen2/2.5, Qwen3, Mistral, Gemma 1/2 and GPT-2.

  The defaults are a Llama-style model (RMSNorm, RoPE, SwiGLU, grouped-query attention);
  :mod:`jaxrl_llm.models.hf` maps Hugging Face configs onto these fields.
  """

  family: str = "llama"  # Which Hugging Face layout export uses; the maths is set by the fields.
  vocab_size: int = 0  # 0: take the tokenizer's size, rounded up to `vocab_multiple`.
  vocab_multiple: int = 8
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 0  # 0: d_model // n_heads.
  d_ff: int = 512
  max_seq_len: int = 64  # Also the size of GPT-2's learned position table.
  rope_theta: float = 10000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  dropout_rate: float = 0.0
  # Storage dtype of the params (TrainState, checkpoints, export). Narrower than float32: the
  # optimizer keeps a float32 master copy in its state and stores its rounding (mixed precision).
  # A run that starts from another run or a HF checkpoint casts the source to this dtype.
  param_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
  dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # Compute dtype of the matmuls.
  # Family switches.
  norm: Literal["rms", "layer"] = "rms"
  norm_offset: bool = False  # Gemma: RMSNorm scales by (1 + w).
  activation: Literal["silu", "gelu_tanh", "gelu"] = "silu"
  gated_mlp: bool = True  # SwiGLU / GeGLU; False: GPT-2's up -> act -> down.
  attention_bias: bool = False  # q/k/v biases (Qwen2, GPT-2).
  out_bias: bool = False  # Attention output bias (GPT-2).
  mlp_bias: bool = False  # MLP biases (GPT-2).
  qk_norm: bool = False  # Qwen3: RMSNorm over the head dimension of q and k.
  positions: Literal["rope", "learned"] = "rope"
  rope_type: Literal["default", "llama3"] = "default"
  rope_factor: float = 8.0  # Llama-3 RoPE scaling.
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  embed_scale: bool = False  # Gemma: embeddings times sqrt(d_model).
  query_scale: float = 0.0  # Attention score scale; 0: head_dim ** -0.5 (Gemma 2: scalar ** -0.5).
  attn_softcap: float = 0.0  # Gemma 2 attention-logit soft-capping (0: off).
  final_softcap: float = 0.0  # Gemma 2 final-logit soft-capping (0: off).
  sliding_window: int = 0  # Keys within this many positions (0: off).
  layer_types: tuple[str, ...] = ()  # Per layer "full" / "sliding"; (): all sliding iff a window.
  post_norms: bool = False  # Gemma 2: norms after attention and MLP too.
  # The fused log-prob kernel behind every trainer log-prob (jaxrl_llm.kernels): "auto" is the
  # backend's default path; block sizes 0 are the backend's defaults (kernels.BlockSizes).
  logprob_impl: Literal["auto", "chunked", "pallas", "pallas_gpu", "pallas_tpu",
                        "reference"] = "auto"
  logprob_block_n: int = 0
  logprob_block_v: int = 0
  lora: LoraConfig = LoraConfig()  # Low-rank adapters on a frozen base (rank 0: off).
  # Recompute each block's activations in the backward pass (gradient checkpointing): activation
  # memory of one block instead of all, for about one more forward pass of compute.
  remat: bool = False

  def __post_init__(self):
    if self.lora.rank:
      for pattern in self.lora.targets:
        if not self.lora_weights(pattern):
          _fail("model.lora.targets", f"pattern {pattern!r} matches no weight of this model; "
                f"weights are layer_{{i}}/attn/{{q,k,v,o}} and layer_{{i}}/mlp/"
                f"{{{','.join(n for n in ('up', 'gate', 'down') if n != 'gate' or self.gated_mlp)}}}"
                f" for i < {self.n_layers} (LoRA on embeddings and the LM head is not "
                f"implemented yet)")
    if self.family not in FAMILIES:
      _fail("model.family", f"must be one of {FAMILIES}, got {self.family!r}")
    _positive("model", self, "vocab_size", allow_zero=True)
    _positive("model", self, "vocab_multiple", "d_model", "n_layers", "n_heads", "n_kv_heads",
              "d_ff", "max_seq_len", "rope_theta", "norm_eps")
    _positive("model", self, "head_dim", "sliding_window", "attn_softcap", "final_softcap",
              "query_scale", "logprob_block_n", "logprob_block_v", allow_zero=True)
    if self.logprob_block_n % 8:
      _fail("model.logprob_block_n", f"must be a multiple of 8 (or 0), got {self.logprob_block_n}")
    if self.n_heads % self.n_kv_heads:
      _fail("model.n_kv_heads", f"must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
    if self.head_dim == 0 and self.d_model % self.n_heads:
      _fail("model.head_dim", f"is 0 (derived) but d_model={self.d_model} is not divisible by "
            f"n_heads={self.n_heads}; set it explicitly")
    if self.positions == "rope" and self.resolved_head_dim % 2:
      _fail("model.head_dim", f"RoPE needs an even head dimension, got {self.resolved_head_dim}")
    if not 0.0 <= self.dropout_rate < 1.0:
      _fail("model.dropout_rate", f"must be in [0, 1), got {self.dropout_rate}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        _fail(f"model.{name}", f"must be one of {_DTYPES}, got {getattr(self, name)!r}")
    choices = {"norm": ("rms", "layer"), "activation": ("silu", "gelu_tanh", "gelu"),
               "positions": ("rope", "learned"), "rope_type": ("default", "llama3")}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        _fail(f"model.{name}", f"must be one of {allowed}, got {getattr(self, name)!r}")
    if self.layer_types:
      if len(self.layer_types) != self.n_layers:
        _fail("model.layer_types", f"needs one entry per layer ({self.n_layers}), got "
              f"{len(self.layer_types)}")
      if set(self.layer_types) - {"full", "sliding"}:
        _fail("model.layer_types", f"entries must be 'full' or 'sliding', got {self.layer_types}")
      if "sliding" in self.layer_types and not self.sliding_window:
        _fail("model.sliding_window", "must be > 0 when a layer is 'sliding'")

  def lora_weights(self, pattern: str | None = None) -> tuple[str, ...]:
    """The weight names LoRA can target (``layer_{i}/attn/q`` ...) that one ``pattern``
    (``model.lora.targets`` syntax) matches, or all targeted ones when ``pattern`` is None.
    Memoised: the decoder asks once per weight at every trace."""
    patterns = self.lora.targets if pattern is None else (pattern,)
    return _lora_weights(self.n_layers, self.gated_mlp, tuple(patterns))

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  def layer_is_sliding(self, i: int) -> bool:
    if self.layer_types:
      return self.layer_types[i] == "sliding"
    return self.sliding_window > 0

  def with_vocab(self, tokenizer_size: int) -> "ModelConfig":
    """Returns a copy whose ``vocab_size`` is set (if it was 0) from the tokenizer's size."""
    if self.vocab_size:
      if self.vocab_size < tokenizer_size:
        _fail("model.vocab_size", f"{self.vocab_size} is smaller than the tokenizer's "
              f"{tokenizer_size} tokens")
      return self
    size = int(math.ceil(tokenizer_size / self.vocab_multiple) * self.vocab_multiple)
    return dataclasses.replace(self, vocab_size=size)


TASKS = ("arithmetic", "countdown", "text2sql", "sorted_digits", "math", "custom", "chain")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  """Where examples come from and how they become fixed-shape token batches."""

  # arithmetic / countdown / text2sql: synthetic tasks generated locally (text2sql also reads
  # Spider / BIRD files with source="spider"|"bird"); sorted_digits: the synthetic preference task
  # (SFT demos, or pairs / rankings / ratings for reward models and DPO, see `preference_kind`).
  # math: the user's GSM8K / MATH JSONL (data.source="jsonl"; question/problem + answer/solution
  # fields, the final answer extracted by jaxrl_llm.rewards.math.load_math_jsonl).
  # custom: your own JSONL (data.source="jsonl"): {"prompt", "answer"} rows for RL and SFT (any
  # other fields reach the reward functions as keyword columns), or preference rows.
  # Or your own data builder by import path, "mypkg.tasks:rows": a callable (split, data_config)
  # -> rows for "train" / "validation" / "test" (an empty result: no such split), each row
  # {"prompt", "answer" (or "response"), ...} as for "custom".
  task: str = "arithmetic"
  source: Literal["tfds", "jsonl", "spider", "bird"] = "tfds"
  # tfds: where the locally generated dataset lives ("" -> $JAXRL_LLM_DATA_DIR or ~/.cache/jaxrl_llm/tfds).
  data_dir: str = ""
  # jsonl: a directory with train.jsonl, validation.jsonl and test.jsonl ({"prompt", "answer"} rows;
  # other fields travel to the reward functions; preference rows: see jaxrl_llm.data.preference).
  # With task="custom", a missing validation.jsonl / test.jsonl is held out of train.jsonl:
  # validation_size / test_size rows chosen by dataset_seed (never shared with train).
  jsonl_dir: str = ""
  # spider / bird: the dataset's root directory (questions JSON + database/ folders).
  text2sql_root: str = ""
  # Preference data (reward models, DPO): "pairs", "rankings" or "ratings"; "" for prompt data.
  preference_kind: str = ""
  # Step-labelled solutions ("steps"): JSONL rows {"prompt", "steps": [...], "labels": [...],
  # "outcome"?}; a solution is its steps joined by step_delimiter (after the last step too unless
  # step_final_delimiter is false); step_ratings reads PRM800K's -1 / 0 / 1 with the neutral 0
  # mapped by step_neutral ("positive", "negative" or "drop").
  step_delimiter: str = "\n"
  step_final_delimiter: bool = True
  step_ratings: bool = False
  step_neutral: str = "positive"
  # Or label them in the run (an ORM / PRM run's first stage, RUN_DIR/steps, resumable): the
  # starting policy (init.sft_steps warm start or init.policy_run) writes step_samples solutions
  # for each of step_prompts training prompts (0: all; held-out splits: all) and they are labelled
  # "mc" (Math-Shepherd: step_rollouts completions per step prefix) or "exact" (task chain).
  step_labels: str = ""
  step_samples: int = 4
  step_rollouts: int = 8
  step_prompts: int = 0
  # Countdown: how many numbers each problem gives, and their range.
  countdown_numbers: int = 3
  countdown_max_number: int = 20
  # chain: the reasoning task with teacher traces (jaxrl_llm.data.reasoning): multi-operand
  # arithmetic over `operators`, operands in [0, chain_max_operand]; `chain_level` picks the easy
  # (chain_easy_operands) or hard (chain_hard_operands) problems for every split.
  chain_level: Literal["easy", "hard"] = "easy"
  chain_easy_operands: int = 3
  chain_hard_operands: int = 5
  chain_max_operand: int = 20
  chain_hard_max_operand: int = 0  # The hard level's largest operand; 0: chain_max_operand.
  # What SFT trains on: the row's "answer", its "demonstration" (teacher trace; one training row
  # per demonstration), or "auto" (demonstrations when the rows carry them).
  sft_target: Literal["auto", "answer", "demonstration"] = "auto"
  # Synthetic arithmetic task.
  digits: int = 2
  operators: str = "+-"
  train_size: int = 15000
  validation_size: int = 500
  test_size: int = 500
  dataset_seed: int = 0  # Which problems are generated; independent of the run's seed.
  # Batching: padded sequence lengths (each batch pads to the smallest that holds it), or "auto":
  # picked before training from the token lengths of the data (the median and the longest row,
  # rounded up to multiples of 8, capped by model.max_seq_len); the run dir's config.json and
  # data_report.json record the buckets chosen.
  length_buckets: tuple[int, ...] | str = (16, 32)
  shuffle: bool = True
  on_bad_row: Literal["raise", "skip"] = "raise"
  on_overlong: Literal["truncate", "reject"] = "reject"
  chat_template: bool = False  # Render prompts with the tokenizer's chat template (instruct models).
  # How a row becomes the prompt text: "" (its "prompt" field as is), a str.format template over
  # the row's fields ("Question: {prompt}\nAnswer:"), or a callable's import path
  # ("mypkg.templates:render", row dict -> str). Applied before the chat template.
  prompt_template: str = ""

  def __post_init__(self):
    if self.task not in TASKS and not is_import_path(self.task):
      _fail("data.task", f"unknown task {self.task!r}; known: {TASKS}, or a data builder of your "
            "own by import path ('mypkg.tasks:rows')")
    if self.source not in ("tfds", "jsonl", "spider", "bird"):
      _fail("data.source", f"must be 'tfds', 'jsonl', 'spider' or 'bird', got {self.source!r}")
    if self.source == "jsonl" and not self.jsonl_dir:
      _fail("data.jsonl_dir", "must be set when data.source='jsonl'")
    if self.source in ("spider", "bird"):
      if self.task != "text2sql":
        _fail("data.source", f"{self.source!r} is a Text2SQL source; set data.task='text2sql'")
      if not self.text2sql_root:
        _fail("data.text2sql_root", f"must be set when data.source={self.source!r}")
    if self.task == "custom" and self.source != "jsonl":
      _fail("data.source", "task 'custom' reads your JSONL files: set data.source='jsonl' and "
            "data.jsonl_dir (a directory with train.jsonl, and optionally validation.jsonl / "
            "test.jsonl)")
    if self.task == "math" and self.source != "jsonl":
      _fail("data.source", "task 'math' reads your GSM8K / MATH files: set data.source='jsonl' "
            "and data.jsonl_dir")
    if self.preference_kind not in ("", "pairs", "rankings", "ratings", "steps"):
      _fail("data.preference_kind", "must be '', 'pairs', 'rankings', 'ratings' or 'steps', got "
            f"{self.preference_kind!r}")
    if self.preference_kind == "steps" and self.source != "jsonl" and not self.step_labels:
      _fail("data.source", "step-labelled solutions are read from JSONL: set data.source='jsonl' "
            "and data.jsonl_dir (e.g. the output of `jaxrl-llm label-steps`), or label them in "
            "the run with data.step_labels='mc' or 'exact'")
    if self.step_labels not in ("", "mc", "exact"):
      _fail("data.step_labels", f"must be '', 'mc' or 'exact', got {self.step_labels!r}")
    if self.step_labels and self.preference_kind != "steps":
      _fail("data.step_labels", "labels step-labelled solutions: set data.preference_kind='steps'")
    _positive("data", self, "step_samples", "step_rollouts")
    _positive("data", self, "step_prompts", allow_zero=True)
    if self.step_neutral not in ("positive", "negative", "drop"):
      _fail("data.step_neutral", f"must be 'positive', 'negative' or 'drop', got "
            f"{self.step_neutral!r}")
    if not self.step_delimiter:
      _fail("data.step_delimiter", "must be a non-empty string")
    if self.preference_kind and self.task not in ("sorted_digits",) and self.source != "jsonl" \
        and not self.step_labels:
      _fail("data.preference_kind", "preference data comes from the synthetic 'sorted_digits' "
            "task or from data.source='jsonl'")
    if self.chain_level not in ("easy", "hard"):
      _fail("data.chain_level", f"must be 'easy' or 'hard', got {self.chain_level!r}")
    if not 2 <= self.chain_easy_operands <= self.chain_hard_operands <= 12:
      _fail("data.chain_hard_operands", "need 2 <= chain_easy_operands <= chain_hard_operands "
            f"<= 12, got {self.chain_easy_operands} and {self.chain_hard_operands}")
    if not 0 <= self.chain_hard_max_operand <= 999:
      _fail("data.chain_hard_max_operand", f"must be in [0, 999], got "
            f"{self.chain_hard_max_operand}")
    if not 1 <= self.chain_max_operand <= 999:
      _fail("data.chain_max_operand", f"must be in [1, 999], got {self.chain_max_operand}")
    if self.sft_target not in ("auto", "answer", "demonstration"):
      _fail("data.sft_target", "must be 'auto', 'answer' or 'demonstration', got "
            f"{self.sft_target!r}")
    if not 2 <= self.countdown_numbers <= 6:
      _fail("data.countdown_numbers", f"must be in [2, 6], got {self.countdown_numbers}")
    if self.countdown_max_number < 2:
      _fail("data.countdown_max_number", f"must be >= 2, got {self.countdown_max_number}")
    _positive("data", self, "digits", "train_size")
    _positive("data", self, "validation_size", "test_size", allow_zero=True)
    if self.digits > 9:
      _fail("data.digits", f"must be <= 9, got {self.digits}")
    if not self.operators or set(self.operators) - set("+-*"):
      _fail("data.operators", f"must be a non-empty subset of '+-*', got {self.operators!r}")
    space = 10 ** (2 * self.digits) * len(self.operators)
    wanted = self.train_size + self.validation_size + self.test_size
    if self.task == "arithmetic" and self.source == "tfds" and wanted > space:
      _fail("data.train_size", f"train_size + validation_size + test_size = {wanted} distinct "
            f"problems, but digits={self.digits} with operators {self.operators!r} only has {space}")
    if isinstance(self.length_buckets, str):
      if self.length_buckets != "auto":
        _fail("data.length_buckets", f"must be a list of lengths or 'auto', got "
              f"{self.length_buckets!r}")
    elif not self.length_buckets:
      _fail("data.length_buckets", "must not be empty")
    elif any(b <= 1 for b in self.length_buckets):
      _fail("data.length_buckets", f"every bucket must be > 1, got {self.length_buckets}")
    elif list(self.length_buckets) != sorted(set(self.length_buckets)):
      _fail("data.length_buckets", f"must be strictly increasing, got {self.length_buckets}")
    if self.on_bad_row not in ("raise", "skip"):
      _fail("data.on_bad_row", f"must be 'raise' or 'skip', got {self.on_bad_row!r}")
    if self.on_overlong not in ("truncate", "reject"):
      _fail("data.on_overlong", f"must be 'truncate' or 'reject', got {self.on_overlong!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
  """AdamW with linear warm-up, cosine decay and global-norm clipping (an optax chain)."""

  name: Literal["adamw"] = "adamw"
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  end_learning_rate_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-8
  weight_decay: float = 0.01
  max_grad_norm: float = 1.0  # 0 disables clipping.

  def __post_init__(self):
    if self.name != "adamw":
      _fail("optimizer.name", f"only 'adamw' is implemented, got {self.name!r}")
    _positive("optimizer", self, "learning_rate", "eps")
    _positive("optimizer", self, "warmup_steps", "weight_decay", "max_grad_norm", allow_zero=True)
    if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
      _fail("optimizer.end_learning_rate_ratio", f"must be in [0, 1], got {self.end_learning_rate_ratio}")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        _fail(f"optimizer.{name}", f"must be in [0, 1), got {getattr(self, name)}")


ALGORITHMS = ("sft", "grpo", "drgrpo", "dapo", "gspo", "rloo", "reinforce_pp",
              "reinforce_pp_baseline", "remax", "luffy", "srft", "prime", "ppo", "rft", "dpo",
              "reward_model")
# Trained from a fixed dataset of preferences rather than online rollouts.
PREFERENCE_ALGORITHMS = ("dpo", "reward_model")
DPO_VARIANTS = ("dpo", "cdpo", "rdpo", "ipo", "hinge")
RM_OBJECTIVES = ("pairwise", "ranking", "rating", "orm", "prm")
SCORINGS = ("product", "min", "last")
# The advantage estimator each named algorithm uses unless `algorithm.advantage` says otherwise.
DEFAULT_ADVANTAGE = {"grpo": "grpo", "drgrpo": "drgrpo", "dapo": "grpo", "gspo": "grpo",
                     "rloo": "rloo", "reinforce_pp": "reinforce_pp",
                     "reinforce_pp_baseline": "reinforce_pp_baseline", "remax": "remax",
                     "luffy": "grpo", "srft": "grpo", "prime": "prime", "ppo": "gae"}
ADVANTAGES = ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax", "prime",
              "grpo_process")
PRIME_UPDATES = ("before", "after")
PRIME_LOO = ("paper", "recipe")
PRIME_NORMS = ("none", "batch_norm")
PRIME_GRANULARITIES = ("token", "whole")
POLICY_LOSSES = ("ppo", "gspo", "clip_cov", "kl_cov", "luffy", "srft")
# Losses that train on teacher (off-policy) tokens without an importance ratio.
OFF_POLICY_LOSSES = ("luffy", "srft")
AGGREGATIONS = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "abs", "k2", "k3", "k1+", "abs+", "k2+", "k3+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmConfig:
  """Which training algorithm runs and its hyperparameters (docs/algorithms.md sections 1-11).

  ``name`` picks the algorithm; for the policy-gradient family it also picks the advantage
  estimator (``advantage=""``) and the policy loss (``policy_loss=""``: GSPO's sequence ratio for
  ``gspo``, the PPO clipped surrogate otherwise). Every other field is explicit, with generic
  defaults; ``jaxrl_llm.algorithms.policy_gradient.PRESETS`` holds each paper's settings and the
  experiment modules apply them. Fields marked (RL) are ignored by ``sft``.
  """

  name: str = "sft"
  # token-mean: every trainable token weighs the same; seq-mean-token-mean: every sequence does;
  # seq-mean-token-sum-norm: Dr. GRPO's constant normaliser `norm_constant` (docs/algorithms.md §1.2).
  loss_aggregation: str = "token-mean"
  norm_constant: float = 0.0  # (RL) Dr. GRPO's C; 0: rollout.max_new_tokens (constant per run).
  advantage: str = ""  # (RL) "" = the name's estimator; else one of ADVANTAGES.
  policy_loss: str = ""  # (RL) "" = the name's loss; else one of POLICY_LOSSES.
  clip_low: float = 0.2  # (RL) ε_low of the clipped ratio.
  clip_high: float = 0.2  # (RL) ε_high (DAPO clip-higher: 0.28; GSPO: 4e-4).
  dual_clip: float = 0.0  # (RL) dual-clip constant c > 1 for negative advantages; 0: off.
  kl_coef: float = 0.0  # (RL) β; 0: no reference model is built at all.
  kl_placement: str = "loss"  # (RL) "loss" (GRPO) or "reward" (RLOO, REINFORCE++, ReMax).
  kl_estimator: str = "k3"  # (RL) k1 / abs / k2 / k3, "+" suffix: value of X, gradient of k2.
  kl_controller: str = "fixed"  # (RL) "fixed" or "adaptive" (Ziegler et al., reward placement).
  kl_target: float = 0.1  # (RL) adaptive controller target KL.
  kl_horizon: float = 10000.0  # (RL) adaptive controller horizon.
  entropy_coef: float = 0.0  # (RL) entropy bonus coefficient.
  adv_eps: float = 1e-6  # (RL) ε in GRPO's (R - mean) / (std + ε).
  singleton: str = "zero"  # (RL) groups with one scorable member: "zero" or "raw" advantage.
  gamma: float = 1.0  # (RL) REINFORCE++ discount.
  clip_cov_ratio: float = 2e-4  # (RL) Clip-Cov fraction r of tokens whose gradient is removed.
  clip_cov_lb: float = 1.0  # (RL) Clip-Cov covariance window (lb, ub).
  clip_cov_ub: float = 5.0
  kl_cov_ratio: float = 2e-3  # (RL) KL-Cov fraction κ of highest-covariance tokens.
  kl_cov_coef: float = 1.0  # (RL) KL-Cov β on |logp - old_logp|.
  tis_cap: float = 0.0  # (RL) truncated importance sampling cap on π_old/π_sampler; 0: off.
  epochs: int = 1  # (RL) passes over each rollout batch.
  minibatches: int = 1  # (RL) optimizer steps per epoch.
  micro_batches: int = 1  # (RL) gradient-accumulation chunks per minibatch (memory only).
  shuffle_minibatches: bool = True  # (RL) re-shuffle rows into minibatches every epoch.
  # (RL, policy-gradient family) "auto": with one epoch, one minibatch, no in-reward KL and no
  # truncated IS, the old-policy log-probs equal the update's own forward (its first minibatch
  # uses stop_gradient(logp)): skip the separate pass; "always": run it anyway.
  old_logp_pass: str = "auto"
  dynamic_sampling: bool = False  # (RL) DAPO: drop groups whose accuracy is constant, refill.
  # LUFFY (docs/algorithms.md §12): teacher tokens get -A·p/(p + luffy_gamma), no clip; on-policy
  # tokens the clipped surrogate (clip_on_policy=false: the released script's unclipped -A·ρ).
  luffy_gamma: float = 0.1
  clip_on_policy: bool = True
  # (RL) Group statistics of the advantage over "group" (every scorable row, demonstrations
  # included: LUFFY's paper) or "on_policy" rows only (LUFFY's grpo_split).
  adv_stats: str = "group"
  # SRFT (docs/algorithms.md §13): w_SFT = srft_sft_coef·exp(-H), w_RL = srft_rl_coef·exp(+H);
  # the unlikelihood term on failed rows has no gradient below log-prob srft_logp_floor.
  srft_sft_coef: float = 0.5
  srft_rl_coef: float = 0.1
  srft_logp_floor: float = -10.0
  # RFT / ReST^EM (docs/algorithms.md §15; algorithm.name="rft"): rounds of sample (K =
  # rollout.samples_per_prompt per prompt, rft_prompts prompts, 0 = all) → keep verified paths,
  # de-duplicated by "steps" (their equations), "text" or "none", at most rft_max_per_problem per
  # problem (0 = no cap) → SFT for train.steps on them (∪ the warm start's SFT data), from the warm
  # start every round (rft_restart) or from the previous round.
  rft_rounds: int = 1
  rft_prompts: int = 0
  rft_dedup: str = "steps"
  rft_max_per_problem: int = 0
  rft_restart: bool = True
  rft_include_sft_data: bool = True
  # PRIME (docs/algorithms.md §10; algorithm.name="prime"): an implicit PRM π_φ (from the starting
  # policy, with a frozen copy as its reference) gives every response token the reward
  # prime_beta·log(π_φ/π_ref); it is trained every step with cross-entropy on the outcome labels
  # (reward.accuracy), "before" the rewards are computed (recipe default: two forwards) or
  # "after". Advantage = process_coef·A^φ + outcome_coef·A^o, leave-one-out within each group
  # ("paper" formula or the verl "recipe"'s r·K/(K−1) − Σ r̄/(K−1)), optionally whitened; the
  # implicit rewards optionally divided by the batch's largest |return| ("batch_norm") and placed
  # per "token" or summed at the last token ("whole"). Defaults: the paper; the recipe is
  # PRESETS["prime_recipe"].
  prime_beta: float = 0.05
  prime_update: str = "before"
  prime_learning_rate: float = 1e-6
  prime_max_grad_norm: float = 10.0
  prime_process_coef: float = 1.0
  prime_outcome_coef: float = 1.0
  prime_whiten: bool = False
  prime_loo: str = "paper"
  prime_norm: str = "none"
  prime_granularity: str = "token"
  max_gen_rounds: int = 10  # (RL) generation rounds per step before dynamic sampling gives up.
  on_exhausted: str = "raise"  # (RL) after max_gen_rounds: "raise" or "train" on what survived.
  overlong_filter: bool = False  # (RL) DAPO: truncated responses get no loss.
  truncated_in_stats: bool = True  # (RL) truncated responses still count in group statistics.
  overlong_buffer: int = 0  # (RL) DAPO soft overlong punishment cache L_cache; 0: off.
  overlong_penalty: float = 1.0  # (RL) its penalty factor.
  # PPO with a critic (docs/algorithms.md §2).
  gae_lambda: float = 1.0  # (PPO) GAE λ (verl 1.0; TRL / InstructGPT 0.95).
  value_clip: float = 0.5  # (PPO) ε_v of the clipped value loss; 0: unclipped.
  vf_coef: float = 0.1  # (PPO) value-loss weight when the critic shares the policy trunk.
  critic: str = "separate"  # (PPO) "separate" critic network, or a value head on the "shared" trunk.
  critic_learning_rate: float = 0.0  # (PPO) separate critic's peak learning rate; 0: the actor's.
  critic_warmup_steps: int = 0  # (PPO) first rollout steps update only the critic.
  whiten_advantages: bool = True  # (PPO) batch-wide advantage whitening.
  # DPO family (docs/algorithms.md §16).
  dpo_variant: str = "dpo"  # dpo (sigmoid), cdpo (label smoothing), rdpo (robust), ipo, hinge.
  beta: float = 0.1  # DPO β (IPO: τ).
  label_smoothing: float = 0.0  # cDPO / robust DPO flip rate ε in [0, 0.5).
  ipo_length_normalize: bool = True  # IPO on per-token mean log-ratios (TRL) instead of sums.
  # Reward models (docs/algorithms.md §17).
  rm_objective: str = "pairwise"  # pairwise (Bradley–Terry), ranking (Plackett–Luce), rating.
  rm_margin: bool = False  # Subtract the row's annotated margin inside the BT sigmoid.
  rm_center_coef: float = 0.0  # η·(r_w + r_l)² centering (0.01 recommended when used).
  rm_rating_loss: str = "regression"  # rating objective: "regression" or "ordinal".
  # Outcome / process reward models (docs/algorithms.md §18) on step-labelled solutions
  # (data.preference_kind="steps"): "orm" = BCE on the solution's outcome at its last token
  # (rm_orm_per_token: at every solution token, Cobbe et al.); "prm" = BCE at each step's last
  # token only (soft labels as given; rm_hard_labels: label > 0, Math-Shepherd's hard label;
  # rm_last_step_only: each row's last labelled step, TRL's option). Held-out best-of-N picks
  # by the solution score rm_scoring: product / min / last step probability (PRM).
  rm_orm_per_token: bool = False
  rm_hard_labels: bool = False
  rm_last_step_only: bool = False
  rm_scoring: str = "product"

  def __post_init__(self):
    f = lambda name: f"algorithm.{name}"
    if self.name not in ALGORITHMS:
      _fail(f("name"), f"unknown algorithm {self.name!r}; known: {ALGORITHMS}")
    allowed = AGGREGATIONS if self.is_rl else ("token-mean", "seq-mean-token-mean")
    if self.loss_aggregation not in allowed:
      _fail(f("loss_aggregation"), f"must be one of {allowed}, got {self.loss_aggregation!r}")
    if self.advantage and self.advantage not in ADVANTAGES:
      _fail(f("advantage"), f"must be '' or one of {ADVANTAGES}, got {self.advantage!r}")
    if self.policy_loss and self.policy_loss not in POLICY_LOSSES:
      _fail(f("policy_loss"), f"must be '' or one of {POLICY_LOSSES}, got {self.policy_loss!r}")
    _positive("algorithm", self, "clip_low", "clip_high", "kl_coef", "entropy_coef",
              "norm_constant", "clip_cov_ratio", "kl_cov_ratio", "kl_cov_coef", "tis_cap",
              "overlong_buffer", "overlong_penalty", allow_zero=True)
    _positive("algorithm", self, "adv_eps", "kl_target", "kl_horizon", "epochs", "minibatches",
              "micro_batches", "max_gen_rounds")
    if self.dual_clip and not self.dual_clip > 1.0:
      _fail(f("dual_clip"), f"must be 0 (off) or > 1, got {self.dual_clip}")
    if self.tis_cap and self.tis_cap < 1.0:
      _fail(f("tis_cap"), f"must be 0 (off) or >= 1, got {self.tis_cap}")
    if self.kl_placement not in ("loss", "reward"):
      _fail(f("kl_placement"), f"must be 'loss' or 'reward', got {self.kl_placement!r}")
    if self.kl_estimator not in KL_ESTIMATORS:
      _fail(f("kl_estimator"), f"must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
    if self.kl_placement == "reward" and self.kl_estimator.endswith("+"):
      _fail(f("kl_estimator"), "straight-through '+' estimators only make sense as a loss; "
            "with kl_placement='reward' use k1/abs/k2/k3")
    if self.old_logp_pass not in ("auto", "always"):
      _fail(f("old_logp_pass"), f"must be 'auto' or 'always', got {self.old_logp_pass!r}")
    if self.kl_controller not in ("fixed", "adaptive"):
      _fail(f("kl_controller"), f"must be 'fixed' or 'adaptive', got {self.kl_controller!r}")
    if self.kl_controller == "adaptive" and self.kl_placement != "reward":
      _fail(f("kl_controller"), "the adaptive controller adjusts an in-reward KL; set "
            "algorithm.kl_placement='reward'")
    if self.singleton not in ("zero", "raw"):
      _fail(f("singleton"), f"must be 'zero' or 'raw', got {self.singleton!r}")
    if not 0.0 < self.gamma <= 1.0:
      _fail(f("gamma"), f"must be in (0, 1], got {self.gamma}")
    if self.clip_cov_lb >= self.clip_cov_ub:
      _fail(f("clip_cov_lb"), f"must be < clip_cov_ub={self.clip_cov_ub}, got {self.clip_cov_lb}")
    if not self.luffy_gamma > 0:
      _fail(f("luffy_gamma"), f"must be > 0, got {self.luffy_gamma}")
    _positive("algorithm", self, "rft_rounds")
    _positive("algorithm", self, "rft_prompts", "rft_max_per_problem", allow_zero=True)
    if self.rft_dedup not in ("steps", "text", "none"):
      _fail(f("rft_dedup"), f"must be 'steps', 'text' or 'none', got {self.rft_dedup!r}")
    _positive("algorithm", self, "prime_beta", "prime_learning_rate")
    _positive("algorithm", self, "prime_max_grad_norm", "prime_process_coef",
              "prime_outcome_coef", allow_zero=True)
    for field, allowed in (("prime_update", PRIME_UPDATES), ("prime_loo", PRIME_LOO),
                           ("prime_norm", PRIME_NORMS),
                           ("prime_granularity", PRIME_GRANULARITIES)):
      if getattr(self, field) not in allowed:
        _fail(f(field), f"must be one of {allowed}, got {getattr(self, field)!r}")
    if self.resolved_advantage == "prime" and self.name != "prime":
      _fail(f("advantage"), "the PRIME advantage needs the implicit PRM: set algorithm.name="
            "'prime'")
    if self.name == "prime" and self.advantage not in ("", "prime"):
      _fail(f("advantage"), f"PRIME's advantage is its own; leave algorithm.advantage '' "
            f"(got {self.advantage!r})")
    if self.adv_stats not in ("group", "on_policy"):
      _fail(f("adv_stats"), f"must be 'group' or 'on_policy', got {self.adv_stats!r}")
    if self.on_exhausted not in ("raise", "train"):
      _fail(f("on_exhausted"), f"must be 'raise' or 'train', got {self.on_exhausted!r}")
    if self.resolved_policy_loss == "gspo" and self.loss_aggregation != "seq-mean-token-mean":
      _fail(f("loss_aggregation"), "GSPO's sequence ratio needs 'seq-mean-token-mean' "
            f"(docs/algorithms.md §6), got {self.loss_aggregation!r}")
    if self.resolved_policy_loss in ("clip_cov", "kl_cov") and self.micro_batches > 1:
      _fail(f("micro_batches"), "Clip-Cov / KL-Cov select tokens over the whole minibatch; "
            "micro-batching them is not implemented (use micro_batches=1)")
    if not 0.0 <= self.gae_lambda <= 1.0:
      _fail(f("gae_lambda"), f"must be in [0, 1], got {self.gae_lambda}")
    _positive("algorithm", self, "value_clip", "vf_coef", "critic_learning_rate",
              "critic_warmup_steps", "label_smoothing", "rm_center_coef", allow_zero=True)
    _positive("algorithm", self, "beta")
    if self.critic not in ("separate", "shared"):
      _fail(f("critic"), f"must be 'separate' or 'shared', got {self.critic!r}")
    if self.name == "ppo" and self.advantage:
      _fail(f("advantage"), "PPO's advantage is GAE from its critic; leave algorithm.advantage ''")
    if self.dpo_variant not in DPO_VARIANTS:
      _fail(f("dpo_variant"), f"must be one of {DPO_VARIANTS}, got {self.dpo_variant!r}")
    if self.label_smoothing >= 0.5:
      _fail(f("label_smoothing"), f"must be in [0, 0.5), got {self.label_smoothing}")
    if self.rm_objective not in RM_OBJECTIVES:
      _fail(f("rm_objective"), f"must be one of {RM_OBJECTIVES}, got {self.rm_objective!r}")
    if self.rm_scoring not in SCORINGS:
      _fail(f("rm_scoring"), f"must be one of {SCORINGS}, got {self.rm_scoring!r}")
    if self.rm_rating_loss not in ("regression", "ordinal"):
      _fail(f("rm_rating_loss"), f"must be 'regression' or 'ordinal', got "
            f"{self.rm_rating_loss!r}")

  @property
  def is_rl(self) -> bool:
    """Online RL (rollouts, rewards): the policy-gradient family and PPO (not RFT, which samples
    and then fine-tunes)."""
    return self.name not in ("sft", "rft") and self.name not in PREFERENCE_ALGORITHMS

  @property
  def is_preference(self) -> bool:
    """Trained on a fixed preference dataset: DPO and reward models."""
    return self.name in PREFERENCE_ALGORITHMS

  @property
  def resolved_advantage(self) -> str:
    return self.advantage or DEFAULT_ADVANTAGE.get(self.name, "")

  @property
  def resolved_policy_loss(self) -> str:
    if self.policy_loss:
      return self.policy_loss
    return {"gspo": "gspo", "luffy": "luffy", "srft": "srft"}.get(self.name, "ppo")

  @property
  def uses_reference(self) -> bool:
    """A frozen reference policy is needed only when the KL coefficient is non-zero."""
    return self.is_rl and self.kl_coef > 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
  """(RL) How responses are sampled each step: ``prompts_per_step`` x ``samples_per_prompt`` rows."""

  prompts_per_step: int = 16  # B: prompts (groups) per rollout step, after dynamic sampling.
  samples_per_prompt: int = 8  # G: responses per prompt.
  gen_prompts: int = 0  # Prompts per generation round (dynamic sampling); 0: prompts_per_step.
  max_new_tokens: int = 8  # Generation budget T (the cache size; constant over the run).
  # "refill": decode `slots` rows at a time, a finished row's slot taking the next pending row at
  # once (rows of long-tailed lengths then cost their tokens, not rows x the longest); "static":
  # all of a round's rows decode together until the longest stops. Same rows either way.
  sampler: Literal["refill", "static"] = "refill"
  slots: int = 0  # Refill slots; 0: half the rows of a generation round.
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  # The rollout stage (jaxrl_llm.train.experience): where rows come from and which groups are
  # kept. Sources: "policy" (G samples per prompt), "demonstrations" (the rows' teacher traces,
  # off-policy); filters: "nonconstant_groups" (DAPO; algorithm.dynamic_sampling adds it),
  # "verified_demonstrations", "accuracy_band"; or your own by import path "mypkg.mod:fn".
  sources: tuple[str, ...] = ("policy",)
  filters: tuple[str, ...] = ()
  demonstrations_per_prompt: int = 1  # Teacher traces per group with the "demonstrations" source.
  # LUFFY's prefix mode: each trace is cut to a random fraction in [min, max] of its tokens and the
  # policy writes the rest; 1.0 / 1.0 = whole traces.
  prefix_ratio_min: float = 1.0
  prefix_ratio_max: float = 1.0
  accuracy_band_low: float = 0.0  # "accuracy_band" filter: kept mean on-policy accuracy range.
  accuracy_band_high: float = 1.0

  def __post_init__(self):
    _positive("rollout", self, "prompts_per_step", "samples_per_prompt", "max_new_tokens",
              "temperature", "demonstrations_per_prompt")
    if not self.sources:
      _fail("rollout.sources", "must name at least one source (e.g. 'policy')")
    if len(set(self.sources)) != len(self.sources):
      _fail("rollout.sources", f"names a source twice: {self.sources}")
    if not 0.0 <= self.prefix_ratio_min <= self.prefix_ratio_max <= 1.0:
      _fail("rollout.prefix_ratio_min", "need 0 <= prefix_ratio_min <= prefix_ratio_max <= 1, "
            f"got {self.prefix_ratio_min} and {self.prefix_ratio_max}")
    if not 0.0 <= self.accuracy_band_low <= self.accuracy_band_high <= 1.0:
      _fail("rollout.accuracy_band_low", "need 0 <= accuracy_band_low <= accuracy_band_high <= 1")
    _positive("rollout", self, "gen_prompts", "top_k", "min_p", "slots", allow_zero=True)
    if self.sampler not in ("refill", "static"):
      _fail("rollout.sampler", f"must be 'refill' or 'static', got {self.sampler!r}")
    if not 0.0 < self.top_p <= 1.0:
      _fail("rollout.top_p", f"must be in (0, 1], got {self.top_p}")
    if not self.min_p < 1.0:
      _fail("rollout.min_p", f"must be < 1, got {self.min_p}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
  """(RL) Reward functions (names from ``jaxrl_llm.rewards.REWARD_FUNCTIONS``) and their weights.

  A call that raises or runs past ``timeout_s`` is retried row by row (``row_timeout_s`` each),
  so only the rows that fail alone count as failed. A failed row, a NaN, or a result of the wrong
  shape is handled by ``on_error``: "exclude" (the samples are unscorable: left out of group statistics, advantage 0),
  "fallback" (they get ``fallback_reward``) or "raise" (checkpoint, then stop the run). Every
  case is counted per function in the metrics.
  """

  functions: tuple[str, ...] = ("exact_match",)
  weights: tuple[float, ...] = (1.0,)
  accuracy: str = "exact_match"  # Which function is "correct?" (metric, DAPO filter); "": none.
  timeout_s: float = 30.0
  # After a batch call raises or times out, each row is scored alone with this limit, so that one
  # hostile completion costs only its own row.
  row_timeout_s: float = 10.0
  # "auto": functions importable by reference run in killable worker processes (a time-out kills
  # the work; address space capped at `memory_mb`), others on a thread; "process": all must;
  # "thread": none do.
  isolation: str = "auto"
  memory_mb: int = 4096
  on_error: str = "exclude"
  fallback_reward: float = 0.0
  # The "reward_model" function: a reward-model run directory, scores normalised by the mean / std
  # of its training scores when `model_normalize`.
  model_run: str = ""
  model_normalize: bool = True
  # Step rewards from an outcome / process reward model run (docs/algorithms.md §18): each step of
  # a response (cut at that run's data.step_delimiter) is rewarded with process_coef x the PRM's
  # probability that it is right, on the step's last token. Used by GRPO process supervision
  # (algorithm.advantage="grpo_process": the group's step rewards normalised, a token's advantage
  # the sum over the steps ending at or after it) and by PPO (added to the token rewards before
  # GAE, Math-Shepherd's step-by-step PPO).
  process_model_run: str = ""
  process_coef: float = 1.0

  def __post_init__(self):
    if not self.functions:
      _fail("reward.functions", "must name at least one reward function")
    if len(self.weights) != len(self.functions):
      _fail("reward.weights", f"needs one weight per function ({len(self.functions)}), got "
            f"{len(self.weights)}")
    if len(set(self.functions)) != len(self.functions):
      _fail("reward.functions", f"names must be distinct, got {self.functions}")
    if self.accuracy and self.accuracy not in self.functions:
      _fail("reward.accuracy", f"must be '' or one of reward.functions {self.functions}, got "
            f"{self.accuracy!r}")
    _positive("reward", self, "timeout_s")
    _positive("reward", self, "row_timeout_s")
    if self.isolation not in ("auto", "process", "thread"):
      _fail("reward.isolation", f"must be 'auto', 'process' or 'thread', got {self.isolation!r}")
    if not isinstance(self.memory_mb, int) or isinstance(self.memory_mb, bool) or (
        self.memory_mb != 0 and self.memory_mb < 256):
      _fail("reward.memory_mb", f"must be 0 (no cap) or an int >= 256, got {self.memory_mb!r}")
    if self.on_error not in ("exclude", "fallback", "raise"):
      _fail("reward.on_error", f"must be 'exclude', 'fallback' or 'raise', got {self.on_error!r}")
    if not math.isfinite(self.fallback_reward):
      _fail("reward.fallback_reward", f"must be finite, got {self.fallback_reward}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InitConfig:
  """(RL) Where the policy starts: a short SFT warm start in the run, or a Hugging Face checkpoint.

  With ``sft_steps > 0`` the run first trains SFT for that many steps (in ``RUN_DIR/sft``, itself
  resumable) and RL starts from its final params; that model is also the frozen reference.
  """

  sft_steps: int = 0
  sft_learning_rate: float = 1e-3
  sft_warmup_steps: int = 50
  sft_batch_size: int = 64
  # Overrides ("key.path=value", as --set) for the warm-start SFT run only, e.g.
  # ("data.chain_level=easy",) to warm-start on easy problems before RL on hard ones.
  sft_overrides: tuple[str, ...] = ()
  hf_checkpoint: str = ""  # A local directory with config.json + safetensors (+ tokenizer).
  # A run directory of ours (SFT, RL, DPO): its newest checkpoint's policy is the starting point,
  # and its tokenizer is reused. Pipelines chain stages this way.
  policy_run: str = ""
  # RLHF: train a reward model in RUN_DIR/reward_model (from the starting policy, on the task's
  # preference pairs) before RL; the "reward_model" reward function then scores with it.
  reward_model_steps: int = 0
  reward_model_learning_rate: float = 1e-3
  reward_model_batch_size: int = 64

  def __post_init__(self):
    _positive("init", self, "reward_model_steps", allow_zero=True)
    _positive("init", self, "reward_model_learning_rate", "reward_model_batch_size")
    _positive("init", self, "sft_steps", "sft_warmup_steps", allow_zero=True)
    _positive("init", self, "sft_learning_rate", "sft_batch_size")
    given = [n for n in ("sft_steps", "hf_checkpoint", "policy_run") if getattr(self, n)]
    if len(given) > 1:
      _fail(f"init.{given[1]}", f"give only one of init.sft_steps, init.hf_checkpoint and "
            f"init.policy_run (got {given})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Length of training, batch geometry, checkpoint and evaluation cadence."""

  steps: int = 1000
  batch_size: int = 64  # SFT: examples per optimizer step (RL: rollout.* and algorithm.* instead).
  grad_accum_steps: int = 1  # SFT: micro-batches per step (RL: algorithm.micro_batches).
  checkpoint_every: int = 200
  # Also checkpoint when this many minutes have passed since the last one (0: steps only), so
  # that a run of any length can be resumed after a crash.
  checkpoint_minutes: float = 10.0
  keep_checkpoints: int = 3
  async_checkpointing: bool = True
  eval_every: int = 200  # Greedy accuracy on the validation split; 0 disables.
  eval_examples: int = 256  # Validation examples per periodic evaluation.
  eval_batch_size: int = 64
  test_examples: int = 0  # Test examples in the final evaluation; 0: the whole split.
  max_new_tokens: int = 0  # Greedy decode budget; 0: longest answer in the data + 1.
  # (RL) Evaluation decoding: 0 = greedy; > 0 = one sample per prompt at this temperature, fixed
  # key (for tasks where the argmax answer is degenerate, e.g. the sorted-digits preference task).
  eval_temperature: float = 0.0
  # Subnetwork-only training (docs/algorithms.md §20): a finished run directory whose changed set
  # (|Δ| > 1e-5 against its own starting policy, in its stored dtype) is the only part of the
  # policy this run may update; every other parameter stays bit-identical to the start. Start
  # this run where that one started (same init). SFT and the policy-gradient family.
  update_mask: str = ""

  def __post_init__(self):
    _positive("train", self, "steps", "batch_size", "grad_accum_steps", "checkpoint_every",
              "keep_checkpoints", "eval_batch_size")
    _positive("train", self, "eval_every", "eval_examples", "test_examples", "max_new_tokens",
              "eval_temperature", "checkpoint_minutes", allow_zero=True)
    if self.batch_size % self.grad_accum_steps:
      _fail("train.grad_accum_steps", f"must divide train.batch_size={self.batch_size}, "
            f"got {self.grad_accum_steps}")


MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
  """Device mesh shape. One axis may be -1: it takes whatever devices remain."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = [getattr(self, a) for a in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes):
      if size == 0 or size < -1:
        _fail(f"mesh.{axis}", f"must be a positive size or -1, got {size}")
    if sizes.count(-1) > 1:
      _fail("mesh", f"at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")

  def shape(self, num_devices: int) -> dict[str, int]:
    """Resolves -1 against ``num_devices`` and checks that the product matches."""
    sizes = {a: getattr(self, a) for a in MESH_AXES}
    known = math.prod(s for s in sizes.values() if s != -1)
    for axis, size in sizes.items():
      if size == -1:
        if num_devices % known:
          _fail(f"mesh.{axis}", f"-1 cannot fill {num_devices} devices with the other axes "
                f"using {known}")
        sizes[axis] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
      _fail("mesh", f"shape {sizes} needs {math.prod(sizes.values())} devices, "
            f"but {num_devices} are available")
    return sizes


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig:
  """Where the run directory goes and how progress is shown."""

  runs_root: str = "runs"
  run_name: str = ""  # "" -> "<experiment>-<date>-<time>".
  log_every: int = 10
  tensorboard: bool = True
  progress: Literal["auto", "bar", "plain", "off"] = "auto"  # auto: a bar on a terminal.

  def __post_init__(self):
    _positive("logging", self, "log_every")
    if self.progress not in ("auto", "bar", "plain", "off"):
      _fail("logging.progress", f"must be one of auto/bar/plain/off, got {self.progress!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """The whole run. ``seed`` is the root of every PRNG key (see :mod:`jaxrl_llm.rng`)."""

  experiment: str
  seed: int = 0
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  algorithm: AlgorithmConfig = AlgorithmConfig()
  train: TrainConfig = TrainConfig()
  mesh: MeshConfig = MeshConfig()
  logging: LoggingConfig = LoggingConfig()
  rollout: RolloutConfig = RolloutConfig()
  reward: RewardConfig = RewardConfig()
  init: InitConfig = InitConfig()

  def __post_init__(self):
    if not self.experiment:
      _fail("experiment", "must be a non-empty name")
    if not 0 <= self.seed < 2**63:
      _fail("seed", f"must be in [0, 2**63), got {self.seed}")
    if "reward_model" in self.reward.functions and not (self.reward.model_run or
                                                        self.init.reward_model_steps):
      _fail("reward.model_run", "the 'reward_model' reward function needs a reward-model run "
            "directory (or init.reward_model_steps > 0 to train one first)")
    if self.init.reward_model_steps and self.reward.model_run:
      _fail("init.reward_model_steps", "give either reward.model_run or "
            "init.reward_model_steps, not both")
    if (not isinstance(self.data.length_buckets, str) and
        max(self.data.length_buckets) > self.model.max_seq_len):
      _fail("data.length_buckets", f"largest bucket {max(self.data.length_buckets)} exceeds "
            f"model.max_seq_len={self.model.max_seq_len}")
