"""Hugging Face wav2vec 2.0 directories: config.json + model.safetensors (or pytorch_model.bin).

``Wav2Vec2ForPreTraining`` holds the whole wav2vec 2.0 model; a bare ``Wav2Vec2Model`` (what
`xlsr export` writes for objectives other than wav2vec 2.0) holds the encoder only.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from xlsr.config import ObjectiveConfig
from xlsr.model.interop import UnreadableCheckpointError, from_hf_state_dict, model_config_from_hf
from xlsr.weights.base import ModelWeights

HF_CONFIG_NAME = "config.json"


def is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / HF_CONFIG_NAME).is_file()


def read_hf_directory(directory: Path) -> ModelWeights:
    try:
        cfg, w2v2 = model_config_from_hf(json.loads((directory / HF_CONFIG_NAME).read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableCheckpointError(
            f"{directory / HF_CONFIG_NAME}: not a wav2vec 2.0 config ({exc})"
        ) from None
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        hf_state = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        hf_state = _load_bin(directory / "pytorch_model.bin")
    else:
        raise UnreadableCheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin")
    objective = ObjectiveConfig(name="wav2vec2", wav2vec2=w2v2)
    return ModelWeights(cfg, from_hf_state_dict(hf_state, cfg), objective, str(directory))


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``pytorch_model.bin``, unpickled with ``weights_only`` (a crafted file runs no code)."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler names the refused global; other damage raises many types
        match = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(exc))
        reason = f"it would call {match.group(1) or match.group(2)}" if match else type(exc).__name__
        raise UnreadableCheckpointError(f"{path}: refused, not a plain state dict ({reason})") from None
    if not isinstance(state, dict):
        raise UnreadableCheckpointError(f"{path}: not a state dict")
    return state
