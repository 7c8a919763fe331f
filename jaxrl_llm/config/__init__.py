"""Typed, frozen, validated run configuration (see :mod:`jaxrl_llm.config.schema`)."""

from jaxrl_llm.config.io import apply_overrides, from_dict, load_json, parse_override, save_json, to_dict
from jaxrl_llm.config.schema import (
    MESH_AXES,
    AlgorithmConfig,
    Config,
    ConfigError,
    DataConfig,
    InitConfig,
    LoggingConfig,
    LoraConfig,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)

__all__ = [
    "MESH_AXES", "AlgorithmConfig", "Config", "ConfigError", "DataConfig", "InitConfig", "LoggingConfig",
    "LoraConfig", "MeshConfig", "ModelConfig", "OptimizerConfig", "RewardConfig", "RolloutConfig", "TrainConfig", "apply_overrides", "from_dict",
    "load_json", "parse_override", "save_json", "to_dict",
]
