"""Run configuration: frozen dataclasses, one per concern, built from a YAML recipe plus overrides.

`load_config(PretrainConfig, "recipe.yaml", ["optim.lr=3e-4", "steps=150"])` reads the recipe
(nested mappings mirror nested dataclasses), applies `key=value` overrides (a dotted path, or a
bare leaf name when only one field has it), coerces every value by its annotation, and builds the
frozen tree. Mistakes become a one-line `UserError` naming the file, line and key. The loading
machinery lives in `config_io.py` (building), `config_yaml.py` (reading YAML) and `config_dump.py`
(writing); `config/sections.py` holds the shared sections, `config/trainers.py` the commands'
configs, and this package re-exports them all.

Left out on purpose: environment-variable overrides, recipe includes/inheritance, and any
derived value stored as a field (derived values are properties). Each class's `__post_init__`
only validates.
"""

from __future__ import annotations

from alignlab.config.sections import (
    SEED_MAX,
    EvalConfig,
    GenerationConfig,
    GPTConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RunConfig,
    TokenizerConfig,
    knob,
)
from alignlab.config.trainers import (
    LANG_WHY,
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    PretrainConfig,
    RewardModelConfig,
    SFTConfig,
)
from alignlab.config_dump import config_hash, config_to_dict, describe_config, dump_yaml
from alignlab.config_io import ConfigError, config_from_dict, load_config

__all__ = ["LANG_WHY", "SEED_MAX", "ConfigError", "DPOConfig", "EvalConfig", "GPTConfig", "GRPOConfig",
           "GenerationConfig", "LoRAConfig", "ModelConfig", "OptimConfig", "PPOConfig", "PretrainConfig",
           "RewardConfig", "RewardModelConfig", "RunConfig", "SFTConfig", "TokenizerConfig", "config_from_dict",
           "config_hash", "config_to_dict", "describe_config", "dump_yaml", "knob", "load_config"]
