"""Reading a finished (or running) run directory back: its config, tokenizer and trained params.

Stages of a pipeline hand models to each other through run directories: the reward model starts
from the SFT run's policy, PPO from the SFT policy and scores with the reward-model run, a judge
labels with any run's policy. :func:`load_run` restores the newest complete checkpoint *as saved*
(no optimizer or mesh needed) and picks the params of the requested role.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from jaxrl_llm.config import Config, ConfigError, load_json
from jaxrl_llm.data import load_tokenizer
from jaxrl_llm.rundir.checkpoint import Checkpointer


@dataclasses.dataclass
class RunArtifacts:
  """What a run directory holds.

  Attributes:
    config: the run's :class:`Config`.
    model_config: the resolved model config (vocabulary size set; a Hugging Face checkpoint's own
      config when the run started from one).
    tokenizer: the run's tokenizer.
    state: the checkpointed state as a nested dict of arrays (``params``, ``opt_state``, ...; PPO:
      ``actor``/``critic``).
    extra: the checkpoint's host-side JSON (step, data position, ...).
    step: the checkpoint's step.
  """

  run_dir: str
  config: Config
  model_config: Any
  tokenizer: Any
  state: dict
  extra: dict
  step: int

  def policy_params(self, dtype: str | None = None) -> dict:
    """The decoder params of the run's policy (SFT, RL, DPO, PPO actor), for
    :attr:`model_config`. With ``dtype`` (a new run starting from this policy, in its
    ``model.param_dtype``): LoRA adapters merged into the base (the policy as a plain model, see
    :func:`jaxrl_llm.models.lora.merge`) and every leaf cast to ``dtype``."""
    state = self.state
    if "actor" in state:  # PPO: actor TrainState (+ critic).
      state = state["actor"]
    params = state["params"]
    if "policy" in params and "value_head" in params:  # PPO with a shared-trunk critic.
      params = params["policy"]
    if "trunk" in params:
      raise ValueError(f"{self.run_dir} holds a reward/value model, not a policy")
    if dtype:
      import jax
      import jax.numpy as jnp

      from jaxrl_llm.models import lora

      params = jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)),
                            lora.merge(params, self.model_config))
    return params

  def head_params(self) -> dict:
    """``{"trunk", "head"}`` params of a reward-model run."""
    params = self.state["params"]
    if "trunk" not in params:
      raise ValueError(f"{self.run_dir} holds a policy, not a reward model (no 'trunk'/'head')")
    return params


def _model_config(config: Config, tokenizer):
  path = config.init.hf_checkpoint
  if path:
    from jaxrl_llm.models.hf import config_from_hf

    with open(os.path.join(path, "config.json")) as f:
      return config_from_hf(json.load(f), param_dtype=config.model.param_dtype,
                            dtype=config.model.dtype)
  if config.init.policy_run:
    return stored_as(load_run(config.init.policy_run, restore=False).model_config, config)
  return config.model.with_vocab(len(tokenizer))


def stored_as(model_config, config: Config):
  """A source run's model config with this run's ``model.param_dtype`` (storage),
  ``model.dtype`` (compute) and ``model.lora`` (adapters): the architecture comes from the
  source, the rest from the run (a LoRA source is merged: :meth:`RunArtifacts.policy_params`)."""
  return dataclasses.replace(model_config, param_dtype=config.model.param_dtype,
                             dtype=config.model.dtype, lora=config.model.lora)


def load_run(run_dir: str, *, restore: bool = True) -> RunArtifacts:
  """Loads ``run_dir``'s config, tokenizer and (``restore``) its newest complete checkpoint.

  Raises:
    FileNotFoundError: naming what is missing (not a run directory, no tokenizer, no checkpoint).
  """
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{run_dir!r} has no config.json; is it a run directory?")
  config = load_json(path)
  if isinstance(config.data.length_buckets, str):  # "auto": the buckets the run chose.
    report = os.path.join(run_dir, "data_report.json")
    if os.path.exists(report):
      with open(report) as f:
        buckets = tuple(json.load(f)["length_buckets"])
      config = dataclasses.replace(config, data=dataclasses.replace(config.data,
                                                                    length_buckets=buckets))
  tok_dir = os.path.join(run_dir, "tokenizer")
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    raise FileNotFoundError(f"{run_dir!r} has no tokenizer/ directory")
  tokenizer = load_tokenizer(tok_dir)
  model_config = _model_config(config, tokenizer)
  state, extra, step = {}, {}, -1
  if restore and config.algorithm.name == "rft" and not os.path.isdir(
      os.path.join(run_dir, "checkpoints")):
    # RFT fine-tunes once per round (RUN_DIR/rounds/<r>/sft); its policy is the last round's.
    rounds = os.path.join(run_dir, "rounds")
    done = sorted((int(r) for r in os.listdir(rounds) if r.isdigit() and os.path.isdir(
        os.path.join(rounds, r, "sft", "checkpoints"))), reverse=True) \
        if os.path.isdir(rounds) else []
    if not done:
      raise FileNotFoundError(f"{run_dir!r} (RFT) has no finished round with a checkpoint yet")
    last = load_run(os.path.join(rounds, str(done[0]), "sft"))
    return RunArtifacts(run_dir=run_dir, config=config, model_config=model_config,
                        tokenizer=tokenizer, state=last.state, extra=last.extra, step=last.step)
  if restore:
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), keep=config.train.keep_checkpoints,
                        async_save=False)
    try:
      latest = ckpt.latest_step()
      if latest is None:
        raise FileNotFoundError(f"{run_dir!r} has no complete checkpoint yet")
      state, extra = ckpt.restore(latest, None)
      step = latest
    finally:
      ckpt.close()
  return RunArtifacts(run_dir=run_dir, config=config, model_config=model_config,
                      tokenizer=tokenizer, state=state, extra=extra, step=step)


def run_tokenizer(config: Config, run_dir: str):
  """``(tokenizer, model_config)`` of a run that starts from ``init.policy_run`` (that run's) or
  from scratch (the run's own ``tokenizer/``, or a new character tokenizer); saved in
  ``RUN_DIR/tokenizer`` so the run directory is self-contained."""
  from jaxrl_llm.data import build_char_tokenizer, save_tokenizer

  tok_dir = os.path.join(run_dir, "tokenizer")
  have = os.path.exists(os.path.join(tok_dir, "tokenizer.json"))
  if config.init.policy_run:
    art = load_run(config.init.policy_run, restore=False)
    tokenizer, model_config = art.tokenizer, stored_as(art.model_config, config)
  else:
    tokenizer = load_tokenizer(tok_dir) if have else build_char_tokenizer()
    model_config = config.model.with_vocab(len(tokenizer))
  if not have:
    save_tokenizer(tokenizer, tok_dir)
  return tokenizer, model_config


def policy_source(config: Config):
  """``(model_config, tokenizer)`` of the policy a run starts from: ``init.policy_run`` or
  ``init.hf_checkpoint`` (a local Hugging Face directory), or ``(None, None)`` for a fresh model.

  Raises:
    FileNotFoundError: the checkpoint directory or its config.json is missing (with a download
      hint naming the model).
    ConfigError: its config.json is not a usable model config.
  """
  if config.init.policy_run:
    art = load_run(config.init.policy_run, restore=False)
    return stored_as(art.model_config, config), art.tokenizer
  path = config.init.hf_checkpoint
  if not path:
    return None, None
  if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "config.json")):
    name = os.path.basename(os.path.normpath(path)) or "MODEL"
    repo = f"Qwen/{name}" if name.lower().startswith("qwen") else f"ORG/{name}"
    raise FileNotFoundError(
        f"init.hf_checkpoint: {path!r} is not a directory with a Hugging Face config.json "
        f"(download the model yourself, e.g. `hf download {repo} --local-dir {path}`, or pass "
        "--set init.hf_checkpoint=DIR)")
  from jaxrl_llm.models.hf import config_from_hf

  config_path = os.path.join(path, "config.json")
  try:
    with open(config_path) as f:
      model_config = config_from_hf(json.load(f), param_dtype=config.model.param_dtype,
                                    dtype=config.model.dtype)
  except (KeyError, ValueError, TypeError) as e:
    detail = f"missing key {e.args[0]!r}" if isinstance(e, KeyError) else str(e)
    raise ConfigError(f"config field 'init.hf_checkpoint': {config_path} is not a usable Hugging "
                      f"Face model config ({type(e).__name__}: {detail})") from None
  return model_config, load_tokenizer(path)
