"""Datasets, tokenisation and fixed-shape batching (layer 3, host side)."""

from jaxrl_llm.data.pipeline import (BadRowError, DataStats, EncodedSplit, SFTBatcher, encode_split,
                                     load_rows, pick_bucket, prompt_batches, validate_row)
from jaxrl_llm.data.tokenizer import (apply_chat_template, build_char_tokenizer, load_tokenizer,
                                      save_tokenizer)

__all__ = ["apply_chat_template", "BadRowError", "DataStats", "EncodedSplit", "SFTBatcher", "build_char_tokenizer",
           "encode_split", "load_rows", "load_tokenizer", "pick_bucket", "prompt_batches",
           "save_tokenizer", "validate_row"]
