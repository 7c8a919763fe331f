"""Config (de)serialisation and type-checked ``--set a.b.c=value`` overrides.

Type checking and strict key handling come from ``dacite`` (``strict=True`` rejects unknown keys,
``WrongTypeError`` rejects wrong types); override values are parsed as YAML scalars/flow sequences
(``3``, ``1e-3``, ``true``, ``[16, 32]``, ``"+-"``). What we add is the error text: an unknown key names
itself and its nearest valid spellings, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import typing
from typing import Any, Iterable

import dacite
import yaml

from jaxrl_llm.config.schema import Config, ConfigError


def to_dict(config: Config) -> dict[str, Any]:
  """The config as plain JSON-able data (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def _float_hook(value):
  # JSON and YAML write 1.0 as 1; accept ints (never bools) where a float is declared.
  if isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


_DACITE = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _float_hook})


def _all_paths(cls, prefix: str = "") -> list[str]:
  out = []
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    path = f"{prefix}{f.name}"
    tp = hints[f.name]
    if dataclasses.is_dataclass(tp):
      out.append(path)
      out.extend(_all_paths(tp, path + "."))
    else:
      out.append(path)
  return out


def _suggest(key: str, candidates: Iterable[str]) -> str:
  close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5)
  return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def from_dict(data: dict[str, Any]) -> Config:
  """Builds and validates a :class:`Config` from plain data.

  Raises:
    ConfigError: an unknown key (with suggestions), a wrong type or an invalid value, naming the
      dotted field.
  """
  _check_keys(data, Config, "")
  try:
    return dacite.from_dict(Config, data, config=_DACITE)
  except dacite.WrongTypeError as e:
    raise ConfigError(f"config field '{e.field_path}': expected {_type_name(e.field_type)}, "
                      f"got {e.value!r} ({type(e.value).__name__})") from None
  except dacite.MissingValueError as e:
    raise ConfigError(f"config field '{e.field_path}': missing value") from None
  except dacite.DaciteError as e:  # Any other structural problem.
    raise ConfigError(f"config: {e}") from None


def _type_name(tp) -> str:
  if isinstance(tp, type):
    return tp.__name__
  return str(tp).replace("typing.", "")


def _check_keys(data: Any, cls, prefix: str):
  if not isinstance(data, dict):
    raise ConfigError(f"config field '{prefix.rstrip('.') or '<root>'}': expected a mapping, "
                      f"got {type(data).__name__}")
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  for key, value in data.items():
    if key not in names:
      full = f"{prefix}{key}"
      raise ConfigError(f"unknown config key '{full}'"
                        f"{_suggest(full, _all_paths(Config)) or _suggest(key, names)}")
    if dataclasses.is_dataclass(hints[key]):
      _check_keys(value, hints[key], f"{prefix}{key}.")


def parse_override(text: str) -> tuple[list[str], Any]:
  """Splits ``'a.b.c=value'`` into a key path and a YAML-parsed value."""
  if "=" not in text:
    raise ConfigError(f"override {text!r} must look like key.path=value")
  key, raw = text.split("=", 1)
  key = key.strip()
  if not key:
    raise ConfigError(f"override {text!r} has an empty key")
  try:
    value = yaml.safe_load(raw) if raw.strip() else ""
  except yaml.YAMLError:
    value = raw
  return key.split("."), value


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
  """Returns ``config`` with each ``key.path=value`` applied, re-validated as a whole.

  >>> from experiments import get_experiment
  >>> cfg = apply_overrides(get_experiment("sft-arithmetic"), ["train.steps=10"])
  >>> cfg.train.steps
  10

  Raises:
    ConfigError: unknown key (naming its nearest valid spellings), wrong type or invalid value.
  """
  data = to_dict(config)
  valid = _all_paths(Config)
  for text in overrides:
    path, value = parse_override(text)
    full = ".".join(path)
    if full not in valid:
      raise ConfigError(f"unknown config key '{full}'{_suggest(full, valid)}")
    node = data
    for part in path[:-1]:
      node = node[part]
    if isinstance(node[path[-1]], dict):
      raise ConfigError(f"config key '{full}' is a section; set one of its fields, e.g. "
                        f"'{full}.{next(iter(node[path[-1]]))}=...'")
    node[path[-1]] = _coerce(value, _field_type(path), text.split("=", 1)[1])
  return from_dict(data)


def _field_type(path: list[str]):
  cls = Config
  for part in path[:-1]:
    cls = typing.get_type_hints(cls)[part]
  return typing.get_type_hints(cls)[path[-1]]


def _coerce(value: Any, tp, raw: str) -> Any:
  """Reads a command-line value the way its declared type wants it.

  YAML alone reads ``1e-3`` as a string and ``run_name=007`` as an int; the declared type settles
  both. Anything that still does not fit is left for dacite to reject with a type error.
  """
  raw = raw.strip()
  if tp is float and isinstance(value, str):
    try:
      return float(raw)
    except ValueError:
      return value
  if tp is str or typing.get_origin(tp) is typing.Literal:
    return raw if not (len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"") else value
  return value


def save_json(config: Config, path: str | os.PathLike) -> None:
  """Writes the config as indented JSON (atomically: temp file + rename). In a multi-process run
  only process 0 writes."""
  from jaxrl_llm.parallel.distributed import is_primary

  if not is_primary():
    return
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load_json(path: str | os.PathLike) -> Config:
  """Reads a config written by :func:`save_json` (or by hand) and validates it."""
  with open(path) as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None
  return from_dict(data)


def shrink_for_tests(config, env=None):
  """With ``$JAXRL_LLM_SHRINK_STEPS=N`` (set by the tests that execute the documentation's
  commands; the CLI and every training loop apply it), every stage of a run is cut to at most N
  steps and 16 evaluation rows (and an ORM / PRM run labels steps for 16 training prompts);
  otherwise the config is returned unchanged."""
  env = os.environ if env is None else env
  value = env.get("JAXRL_LLM_SHRINK_STEPS", "").strip()
  if not value:
    return config
  n = max(1, int(value))
  t = config.train
  train = dataclasses.replace(
      t, steps=min(t.steps, n), checkpoint_every=min(t.checkpoint_every, n),
      eval_every=min(t.eval_every, n) if t.eval_every else 0,
      eval_examples=min(t.eval_examples or 16, 16), test_examples=min(t.test_examples or 16, 16))
  init = config.init
  if init.sft_steps:
    init = dataclasses.replace(init, sft_steps=min(init.sft_steps, n),
                               sft_warmup_steps=min(init.sft_warmup_steps, max(n - 1, 0)))
  data = config.data
  if data.step_labels:  # an ORM / PRM run that labels its own steps: 16 training prompts
    data = dataclasses.replace(data, step_prompts=min(data.step_prompts or 16, 16))
  shrunk = dataclasses.replace(config, train=train, init=init, data=data)
  if shrunk != config:
    print(f"jaxrl-llm: JAXRL_LLM_SHRINK_STEPS={n}: at most {n} steps per stage", file=sys.stderr)
  return shrunk


__all__ = ["to_dict", "from_dict", "apply_overrides", "parse_override", "save_json", "load_json",
           "shrink_for_tests"]
