"""A character-level tokenizer built locally with ``tokenizers`` and saved as a ``transformers``
fast tokenizer, so later code loads it exactly like a downloaded one (``AutoTokenizer`` on a
directory). Nothing is downloaded.
"""

from __future__ import annotations

import os
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
# Printable ASCII without the vertical whitespace: enough for arithmetic and for user JSONL rows.
CHARS = tuple(sorted(set(string.printable) - set("\t\n\r\x0b\x0c")))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
  """``<pad>=0, <bos>=1, <eos>=2, <unk>=3``, then one id per printable ASCII character."""
  vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
  tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS,
                                 eos_token=EOS, unk_token=UNK)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> None:
  """Writes ``tokenizer.json`` and its configs to ``directory`` (process 0 only in a
  multi-process run)."""
  from jaxrl_llm.parallel.distributed import is_primary

  if is_primary():
    tokenizer.save_pretrained(str(directory))


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
  """Loads a tokenizer saved by :func:`save_tokenizer` (or any local HF tokenizer directory)."""
  return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def apply_chat_template(tokenizer, messages: list[dict], *, add_generation_prompt: bool = True
                        ) -> list[int]:
  """Token ids of ``messages`` rendered with the tokenizer's chat template.

  transformers 5 returns a dict from ``apply_chat_template(tokenize=True)`` unless
  ``return_dict=False``; this always returns a flat ``list[int]``.
  """
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("this tokenizer has no chat_template; set tokenizer.chat_template first")
  ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                      add_generation_prompt=add_generation_prompt)
  return list(ids)
