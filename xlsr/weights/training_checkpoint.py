"""An xlsr training checkpoint, ``<run>/checkpoints/step-N/``: its config.yaml names the model and
objective; meta.json names the backend whose files hold the weights.

Backends write one of two layouts, each read here without a process group: torch DCP (DDP, FSDP2;
read through `xlsr.weights.safe_load`, which executes no code from the files) and DeepSpeed ZeRO
(consolidated to fp32 by DeepSpeed's own reader). `STATE_READERS` maps the backend to its reader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xlsr.config import load_config
from xlsr.model.interop import UnreadableCheckpointError
from xlsr.run_dir import CONFIG_NAME, META_NAME, TRAINER_STATE_NAME, read_json_object
from xlsr.weights.base import ModelWeights
from xlsr.weights.safe_load import SafeFullLoadPlanner, SafeReader


def read_dcp_model_state(path: Path) -> dict[str, torch.Tensor]:
    """Full model weights of a DCP checkpoint (DDP or FSDP2, any world size)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # no process group needed

    if not (path / ".metadata").is_file():
        raise UnreadableCheckpointError(f"{path} is not a checkpoint directory (no .metadata)")
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=SafeReader(path), planner=SafeFullLoadPlanner(), no_dist=True)
    return state["model"]


def read_deepspeed_model_state(path: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed ZeRO checkpoint (any stage, any world size)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)


# distributed.backend (as meta.json records it) -> the reader of its weights.
STATE_READERS: dict[str, Callable[[Path], dict[str, torch.Tensor]]] = {
    "ddp": read_dcp_model_state,
    "fsdp": read_dcp_model_state,
    "deepspeed": read_deepspeed_model_state,
}


def is_training_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / TRAINER_STATE_NAME).is_file()


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Full (unsharded) model weights of a training checkpoint, readable without a process group."""
    path = Path(path)
    backend = (read_json_object(path / META_NAME) or {}).get("backend", "ddp")
    if backend not in STATE_READERS:
        raise UnreadableCheckpointError(f"{path / META_NAME}: unknown backend {backend!r}")
    return STATE_READERS[backend](path)


def read_training_checkpoint(path: Path) -> ModelWeights:
    cfg = load_config(path / CONFIG_NAME)
    return ModelWeights(cfg.model, load_model_state(path), cfg.objective, str(path))
