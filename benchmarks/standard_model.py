"""The standard benchmark model, built once: a random ``transformers`` Qwen2 (hidden 256,
intermediate 688, 4 layers, 4 heads, 2 KV heads, vocabulary 32000, tied embeddings, float32,
``torch.manual_seed(0)``) saved as a Hugging Face checkpoint, so every benchmark -- ours through
``load_hf`` and a peer's through its own loader -- reads the same weights.

  from standard_model import checkpoint, load
  params, config = load()          # our params and ModelConfig
  path = checkpoint()              # the checkpoint directory (built on first use)

The directory is ``$JAXRL_LLM_BENCH_MODEL`` or ``~/.cache/jaxrl_llm/standard-qwen2``.
"""

import os

CONFIG = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=True,
              max_position_embeddings=1024)


def checkpoint() -> str:
  """The checkpoint directory, written on first use (seeded: the same weights every time)."""
  path = os.environ.get("JAXRL_LLM_BENCH_MODEL") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxrl_llm", "standard-qwen2")
  if not os.path.exists(os.path.join(path, "config.json")):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**CONFIG))
    tmp = path + ".tmp"
    model.save_pretrained(tmp)
    os.replace(tmp, path)
  return path


def load():
  """``(params, ModelConfig)`` of the standard model through ``load_hf``."""
  from jaxrl_llm.models.hf import load_hf

  return load_hf(checkpoint())


def torch_model():
  """The same weights as a ``transformers`` model (eval mode)."""
  import transformers

  return transformers.AutoModelForCausalLM.from_pretrained(checkpoint()).eval()
