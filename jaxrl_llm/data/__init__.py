"""Datasets, tokenisation and fixed-shape batching (layer 3, host side).

The names below are loaded on first use (PEP 562), so that importing one light submodule (e.g.
:mod:`jaxrl_llm.data.sorted_digits`, used by reward functions) does not import jax, TFDS and
``transformers``.
"""

import importlib

_EXPORTS = {
    "BadRowError": "pipeline", "DataStats": "pipeline", "EncodedSplit": "pipeline",
    "SFTBatcher": "pipeline", "encode_split": "pipeline", "load_rows": "pipeline",
    "pick_bucket": "pipeline", "prompt_batches": "pipeline", "validate_row": "pipeline",
    "apply_chat_template": "tokenizer", "build_char_tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer", "save_tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
