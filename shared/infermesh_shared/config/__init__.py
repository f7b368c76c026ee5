"""Configuration of the three services: one JSON Schema each, flags derived from it,
defaults < config file (YAML/JSON, flat or grouped) < command line, then validation."""

from .errors import ConfigError
from .kv_sizing import blocks_for_budget, kv_block_bytes
from .loader import config_from_options, load_config, resolve_config
from .model_metadata import ModelMetadata, ModelMetadataError, read_model_metadata
from .schema import SERVICES, load_schema
from .typed import (
    CONFIG_CLASSES,
    FrontendConfig,
    ReschedulerConfig,
    SchedulerConfig,
    WorkerConfig,
    build_config,
    replace_options,
)

__all__ = [
    "CONFIG_CLASSES",
    "SERVICES",
    "ConfigError",
    "FrontendConfig",
    "ReschedulerConfig",
    "SchedulerConfig",
    "WorkerConfig",
    "build_config",
    "config_from_options",
    "replace_options",
    "ModelMetadata",
    "ModelMetadataError",
    "blocks_for_budget",
    "kv_block_bytes",
    "load_config",
    "load_schema",
    "read_model_metadata",
    "resolve_config",
]
