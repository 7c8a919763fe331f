"""Test setup: 8 fake CPU devices (set before jax is imported) and shared tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxrl_llm.config import (Config, DataConfig, LoggingConfig, MeshConfig,  # noqa: E402
                              ModelConfig, OptimizerConfig, TrainConfig)

assert jax.device_count() == 8, "tests need 8 fake CPU devices; was jax imported before conftest?"

# A persistent compilation cache for this test session only (a fresh directory each run, so no
# stale entry can outlive a code change): the many end-to-end runs rebuild their jitted closures,
# but most of what they compile (sampler, evaluation, the model's forward) is the same HLO, which
# is then loaded instead of recompiled. Keyed by the HLO and compile options; results are the same.
_CACHE_DIR = tempfile.mkdtemp(prefix="jaxrl-llm-test-xla-cache-")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data directory for the whole session: each dataset is generated once."""
  return str(tmp_path_factory.mktemp("tfds"))


def tiny_config(data_dir: str, **train_overrides) -> Config:
  """A model and task small enough that a step takes milliseconds on CPU."""
  train = dict(steps=6, batch_size=16, grad_accum_steps=2, checkpoint_every=2, keep_checkpoints=3,
               async_checkpointing=True, eval_every=3, eval_examples=16, eval_batch_size=8,
               test_examples=16)
  train.update(train_overrides)
  return Config(
      experiment="tiny-test",
      seed=7,
      model=ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=16),
      data=DataConfig(digits=1, operators="+-", train_size=120, validation_size=20, test_size=20,
                      length_buckets=(8, 12), data_dir=data_dir),
      optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=2),
      train=TrainConfig(**train),
      mesh=MeshConfig(data=-1),
      logging=LoggingConfig(progress="plain", log_every=2),
  )


@pytest.fixture(scope="session")
def tiny(data_dir):
  return tiny_config(data_dir)


def replace(config: Config, **sections) -> Config:
  """``replace(cfg, train=dict(steps=3))``: a copy with some fields of some sections replaced."""
  kwargs = {}
  for name, fields in sections.items():
    if isinstance(fields, dict):
      kwargs[name] = dataclasses.replace(getattr(config, name), **fields)
    else:
      kwargs[name] = fields
  return dataclasses.replace(config, **kwargs)
