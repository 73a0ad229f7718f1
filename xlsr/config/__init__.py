"""Typed configuration.

Config flows one way: a YAML recipe, then dotted command-line overrides (``optim.lr=5e-4``), are
converted into the dataclasses of :mod:`xlsr.config.schema` (a ``model.preset`` from
:mod:`xlsr.config.presets` supplies the model fields a recipe does not set), checked by
:func:`xlsr.config.validation.validate`, and consumed by the components. See docs/configuration.md.
"""

from xlsr.config.batch import effective_batch_hours, effective_batch_samples, for_world_size
from xlsr.config.loading import PRESET_KEY, dump_config, from_dict, load_config, save_config, to_dict
from xlsr.config.presets import MODEL_PRESETS, WAV2VEC2_PRESETS
from xlsr.config.schema import (
    MEL_HOP_SAMPLES,
    SAMPLE_RATE,
    BestRQConfig,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DistributedConfig,
    HealthConfig,
    LauncherConfig,
    LoggingConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    ProbeJobConfig,
    TrainConfig,
    ValidationConfig,
    Wav2Vec2Config,
)
from xlsr.config.validation import validate

__all__ = [
    "MEL_HOP_SAMPLES",
    "MODEL_PRESETS",
    "PRESET_KEY",
    "SAMPLE_RATE",
    "WAV2VEC2_PRESETS",
    "BestRQConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "HealthConfig",
    "LauncherConfig",
    "LoggingConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "ProbeJobConfig",
    "TrainConfig",
    "ValidationConfig",
    "Wav2Vec2Config",
    "dump_config",
    "effective_batch_hours",
    "effective_batch_samples",
    "for_world_size",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "validate",
]
