"""xlsr model files (``.pt``): what `xlsr import` writes and ``checkpoint.init_from`` reads.

{"format": "xlsr-model", "version": 2, "model_config": {...} (the encoder), "objective_config":
{...}, "model": state dict}, loaded with ``weights_only=True`` (no code runs). Version 1 (xlsr 0.1)
had no objective and kept wav2vec 2.0's fields in the model config: `upgrade` moves them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from xlsr.config import ModelConfig, ObjectiveConfig, Wav2Vec2Config, from_dict, to_dict
from xlsr.model.interop import UnreadableCheckpointError
from xlsr.weights.base import ModelWeights

MODEL_FILE_FORMAT = "xlsr-model"
MODEL_FILE_VERSION = 2


def is_model_file(path: Path) -> bool:
    return path.is_file() and path.suffix != ".json"


def load_model_file(path: Path) -> dict[str, Any]:
    """The file's contents in the current version; anything else is refused with one line."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage, text, truncated or unsafe pickles raise many types
        raise UnreadableCheckpointError(
            f"{path}: not an xlsr model file ({type(exc).__name__}); `xlsr import --from fairseq` "
            "converts fairseq files"
        ) from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FILE_FORMAT:
        raise UnreadableCheckpointError(
            f"{path}: not an xlsr model file (use `xlsr import --from fairseq` for fairseq files)"
        )
    return upgrade(data)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 → 2: wav2vec 2.0's fields move from the model config to the objective section
    (version 1 files are all wav2vec 2.0)."""
    if data.get("version", 1) != 1:
        return data
    moved = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
    model = {key: value for key, value in data["model_config"].items() if key not in moved}
    w2v2 = {key: value for key, value in data["model_config"].items() if key in moved}
    objective = to_dict(ObjectiveConfig(name="wav2vec2"))
    objective["wav2vec2"].update(w2v2)
    return {**data, "version": 2, "model_config": model, "objective_config": objective}


def read_model_file(path: Path) -> ModelWeights:
    data = load_model_file(path)
    model = from_dict(ModelConfig, data["model_config"], source=str(path))
    objective = from_dict(ObjectiveConfig, data["objective_config"], source=str(path))
    return ModelWeights(model, data["model"], objective, str(path))


def model_file_contents(weights: ModelWeights) -> dict[str, Any]:
    return {
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "model_config": to_dict(weights.model),
        "objective_config": to_dict(weights.objective),
        "model": weights.state,
    }
