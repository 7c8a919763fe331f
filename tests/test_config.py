import json
import os

import pytest

from experiments import EXPERIMENTS, get_experiment
from jaxrl_llm.cli import main
from jaxrl_llm.config import (Config, ConfigError, MeshConfig, apply_overrides, from_dict,
                              load_json, save_json, to_dict)


def test_every_experiment_is_a_complete_valid_config():
  for name in EXPERIMENTS:
    cfg = get_experiment(name)
    assert isinstance(cfg, Config) and cfg.experiment == name
    assert from_dict(to_dict(cfg)) == cfg


def test_overrides_are_typed():
  cfg = get_experiment("sft-arithmetic")
  out = apply_overrides(cfg, ["train.steps=7", "optimizer.learning_rate=1", "seed=3",
                              "data.length_buckets=[8, 16]", "model.tie_embeddings=false"])
  assert out.train.steps == 7 and out.seed == 3
  assert out.optimizer.learning_rate == 1.0 and isinstance(out.optimizer.learning_rate, float)
  assert out.data.length_buckets == (8, 16)
  assert out.model.tie_embeddings is False
  with pytest.raises(ConfigError, match=r"train\.steps.*expected int"):
    apply_overrides(cfg, ["train.steps=abc"])
  with pytest.raises(ConfigError, match=r"model\.tie_embeddings.*expected bool"):
    apply_overrides(cfg, ["model.tie_embeddings=3"])


def test_unknown_key_names_itself_and_suggests():
  cfg = get_experiment("sft-arithmetic")
  with pytest.raises(ConfigError) as e:
    apply_overrides(cfg, ["train.step=3"])
  assert "'train.step'" in str(e.value) and "'train.steps'" in str(e.value)
  with pytest.raises(ConfigError, match="'optimizer.learning_rate'"):
    apply_overrides(cfg, ["optimzer.learning_rate=1e-3"])
  data = to_dict(cfg)
  data["model"]["d_modle"] = 3
  with pytest.raises(ConfigError, match="unknown config key 'model.d_modle'.*'model.d_model'"):
    from_dict(data)


@pytest.mark.parametrize("override,field", [
    ("optimizer.learning_rate=-1", "optimizer.learning_rate"),
    ("model.n_kv_heads=3", "model.n_kv_heads"),
    ("data.length_buckets=[16, 8]", "data.length_buckets"),
    ("data.length_buckets=[128]", "data.length_buckets"),  # Larger than model.max_seq_len.
    ("train.grad_accum_steps=5", "train.grad_accum_steps"),
    ("data.on_bad_row=ignore", "data.on_bad_row"),
    ("data.train_size=100000", "data.train_size"),
    ("mesh.fsdp=0", "mesh.fsdp"),
    ("model.logprob_impl=cuda", "model.logprob_impl"),
    ("model.logprob_block_n=12", "model.logprob_block_n"),
    ("model.logprob_block_v=-1", "model.logprob_block_v"),
])
def test_invalid_values_name_the_field(override, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    apply_overrides(get_experiment("sft-arithmetic"), [override])


def test_json_round_trip(tmp_path):
  cfg = apply_overrides(get_experiment("sft-arithmetic"), ["seed=11", "data.operators=+-*"])
  save_json(cfg, tmp_path / "config.json")
  assert load_json(tmp_path / "config.json") == cfg
  json.loads((tmp_path / "config.json").read_text())  # Plain JSON.


def test_mesh_shape_resolution():
  assert MeshConfig(data=-1, fsdp=2, tensor=2).shape(8) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ConfigError, match="mesh"):
    MeshConfig(data=3, fsdp=1, tensor=1).shape(8)
  with pytest.raises(ConfigError, match="at most one axis"):
    MeshConfig(data=-1, fsdp=-1)


def test_cli_rejects_bad_key_before_compiling(capsys, tmp_path, monkeypatch):
  import jaxrl_llm.train.sft_loop as loop

  monkeypatch.setattr(loop, "build", lambda *a, **k: pytest.fail("must not get this far"))
  code = main(["run", "sft-arithmetic", "--set", "trian.steps=3", "--run-dir", str(tmp_path)])
  assert code == 2
  err = capsys.readouterr().err
  assert "unknown config key 'trian.steps'" in err and "'train.steps'" in err
  assert not (tmp_path / "config.json").exists()
  assert main(["run", "no-such-experiment"]) == 2
  assert "unknown experiment" in capsys.readouterr().err


def test_cli_compilation_cache_setting(tmp_path):
  import jax

  from jaxrl_llm.cli import enable_compilation_cache

  before = jax.config.jax_compilation_cache_dir
  min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  assert enable_compilation_cache({"JAXRL_LLM_COMPILATION_CACHE": "off"}) is None
  # A cache configured already (here: the test session's own) is kept.
  assert enable_compilation_cache({"JAXRL_LLM_COMPILATION_CACHE": str(tmp_path)}) == before
  assert jax.config.jax_compilation_cache_dir == before
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    target = str(tmp_path / "xla")
    assert enable_compilation_cache({"JAXRL_LLM_COMPILATION_CACHE": target}) == target
    assert jax.config.jax_compilation_cache_dir == target and os.path.isdir(target)
    jax.config.update("jax_compilation_cache_dir", None)
    blocker = tmp_path / "file"
    blocker.write_text("")  # A path under a regular file cannot be created.
    assert enable_compilation_cache({"JAXRL_LLM_COMPILATION_CACHE": str(blocker / "x")}) is None
    assert not jax.config.jax_compilation_cache_dir
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
