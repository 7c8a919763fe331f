"""``jaxrl-llm export``: a run's policy as a Hugging Face checkpoint, or its LoRA adapters in the
PEFT layout.

Merged (the default): ``config.json`` + ``model.safetensors`` (:func:`jaxrl_llm.models.hf.save_hf`)
of the policy with every adapter folded into its weight (:func:`jaxrl_llm.models.lora.merge`), plus
the run's tokenizer: ``transformers`` loads it as a plain model.

Adapters (``--adapters``, LoRA runs): ``adapter_config.json`` + ``adapter_model.safetensors`` as
PEFT (``peft.PeftModel.from_pretrained``) reads them, next to the base model as a Hugging Face
checkpoint in ``base/``. PEFT's ``lora_A.weight`` is ``[r, in]`` and ``lora_B.weight`` ``[out, r]``
over the Hugging Face module's flattened ``[out, in]`` weight; ours are ``A [in dims..., r]`` and
``B [r, out dims...]`` over our ``[in, out]`` layout, which for these modules is the Hugging Face
weight transposed (no permutation), so the export is a reshape and a transpose of each.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxrl_llm.config import ConfigError


def _peft_tensors(params: dict, config) -> tuple[dict, list]:
  """``{peft key: array}`` and the Hugging Face module names of every adapter."""
  from jaxrl_llm.models import lora
  from jaxrl_llm.models.hf import _tensor_table

  r = config.lora.rank
  table = {entry.path: entry.hf_name for entry in _tensor_table(lora.base_config(config))}
  out, modules = {}, []
  for name in config.lora_weights():
    path = tuple(name.split("/"))
    hf = table.get(path)
    if hf is None or not hf.endswith(".weight"):
      raise ConfigError(f"config field 'model.lora.targets': {name} has no Hugging Face module of "
                        f"its own in family {config.family!r}; export the merged checkpoint")
    node = params
    for p in path[:-1]:
      node = node[p]
    a = np.asarray(node[f"{path[-1]}_lora_a"], np.float32)
    b = np.asarray(node[f"{path[-1]}_lora_b"], np.float32)
    module = hf[:-len(".weight")]
    modules.append(module)
    out[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T)
    out[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T)
  return out, modules


def export_run(run_dir: str, out_dir: str, *, adapters: bool = False) -> dict:
  """Writes ``run_dir``'s policy to ``out_dir`` (see the module docstring); returns what it wrote.

  Raises:
    ConfigError: ``adapters`` for a run without LoRA, or targets without a module of their own.
  """
  import safetensors.numpy

  from jaxrl_llm.data.tokenizer import save_tokenizer
  from jaxrl_llm.models import lora
  from jaxrl_llm.models.hf import save_hf
  from jaxrl_llm.rundir.artifacts import load_run

  art = load_run(run_dir)
  config, params = art.model_config, art.policy_params()
  base_cfg = lora.base_config(config)
  os.makedirs(out_dir, exist_ok=True)
  if not adapters:
    save_hf(lora.merge(params, config), base_cfg, out_dir)
    save_tokenizer(art.tokenizer, out_dir)
    return {"merged": out_dir, "lora_rank": config.lora.rank}
  if not config.lora.rank:
    raise ConfigError(f"{run_dir} trained without LoRA (model.lora.rank=0): it has no adapters to "
                      "export; drop --adapters for the whole model")
  tensors, modules = _peft_tensors(params, config)
  lc = config.lora
  base_dir = os.path.join(out_dir, "base")
  save_hf(lora.base_of(params), base_cfg, base_dir)
  save_tokenizer(art.tokenizer, out_dir)
  peft_config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lc.rank, "lora_alpha": lc.alpha,
      "lora_dropout": lc.dropout, "use_rslora": lc.rslora, "target_modules": sorted(modules),
      "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
      "init_lora_weights": True, "modules_to_save": None,
      "base_model_name_or_path": os.path.abspath(base_dir)}
  with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(peft_config, f, indent=1)
  safetensors.numpy.save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"),
                              metadata={"format": "pt"})
  return {"adapters": out_dir, "base": base_dir, "modules": len(modules), "lora_rank": lc.rank}
