"""Pretrained weights in and out: the Python API behind `xlsr export` and `xlsr import`.

Formats it reads (``load_model_weights``):
- an xlsr training checkpoint, ``<run>/checkpoints/step-N/`` (DCP or DeepSpeed files + config.yaml);
- an xlsr model file written by `xlsr import` (``.pt``: {"format": "xlsr-model", "model_config",
  "model"}), which ``checkpoint.init_from`` accepts to continue pretraining;
- a Hugging Face ``Wav2Vec2ForPreTraining`` directory (config.json + safetensors or .bin);
- a fairseq checkpoint (``.pt``), loaded without executing pickled code.

Example::

    model = load_pretrained("runs/xlsr300m/checkpoints/step-01000000")
    hidden, frame_padding = model.encode(waveforms, padding_mask)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

import torch

from xlsr.config import ModelConfig, from_dict, load_config, to_dict
from xlsr.engine.checkpoint import load_model_state
from xlsr.fileio import atomic_write_text, atomic_write_with, fsync_dir, temporary_sibling
from xlsr.model.interop import (
    UnreadableCheckpointError,
    from_hf_state_dict,
    hf_config_dict,
    hf_preprocessor_config_dict,
    load_fairseq_checkpoint,
    model_config_from_hf,
    to_hf_state_dict,
)
from xlsr.model.wav2vec2 import Wav2Vec2Model
from xlsr.process import UserError

XLSR_MODEL_FORMAT = "xlsr-model"
# Written into every HF export; only a directory holding it may be replaced (with overwrite).
EXPORT_MARKER = "xlsr_export.json"
# Files that make a directory (or one of its parents) a training checkpoint.
CHECKPOINT_MARKERS = ("trainer.pt", "manifest.json", ".metadata")


class OutputExistsError(UserError):
    pass


def load_model_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, full state dict) of any supported checkpoint, on the CPU."""
    path = Path(path)
    if path.is_dir() and (path / "trainer.pt").is_file():
        return load_config(path / "config.yaml").model, load_model_state(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf(path)
    if path.is_file():
        data = _load_model_file(path)
        return from_dict(ModelConfig, data["model_config"], source=str(path)), data["model"]
    if path.exists():
        raise UnreadableCheckpointError(
            f"{path}: a directory that is neither a training checkpoint (trainer.pt) nor an HF model "
            "(config.json)"
        )
    raise FileNotFoundError(
        f"{path}: expected a training checkpoint (step-N/), an xlsr model file, or an HF model directory"
    )


def _load_model_file(path: Path) -> dict:
    """An `xlsr import` file, refused with one line if it is anything else."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage, text or truncated files raise many types
        raise UnreadableCheckpointError(
            f"{path}: not an xlsr model file ({type(exc).__name__}); `xlsr import --from fairseq` "
            "converts fairseq files"
        ) from None
    if not isinstance(data, dict) or data.get("format") != XLSR_MODEL_FORMAT:
        raise UnreadableCheckpointError(
            f"{path}: not an xlsr model file (use `xlsr import --from fairseq` for fairseq files)"
        )
    return data


def _load_hf(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    try:
        cfg = model_config_from_hf(json.loads((directory / "config.json").read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableCheckpointError(
            f"{directory / 'config.json'}: not a wav2vec 2.0 config ({exc})"
        ) from None
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file

        hf_state = load_file(directory / "model.safetensors")
    elif (directory / "pytorch_model.bin").is_file():
        hf_state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    return cfg, from_hf_state_dict(hf_state, cfg)


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Wav2Vec2Model:
    model = Wav2Vec2Model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UnreadableCheckpointError(f"weights do not fit the model config: {exc}") from None
    return model


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Wav2Vec2Model:
    """A model in eval mode from any supported checkpoint."""
    return build_model(*load_model_weights(path)).to(device).eval()


def export_checkpoint(
    path: str | Path, out_dir: str | Path, target: Literal["hf"] = "hf", overwrite: bool = False
) -> Path:
    """Write an HF ``Wav2Vec2ForPreTraining`` directory (config, preprocessor config, safetensors).

    ``out_dir`` must not exist, be empty, or — with ``overwrite`` — be an earlier xlsr HF export;
    it may not lie inside a checkpoint. Nothing else is ever replaced or deleted.
    """
    if target != "hf":
        raise ValueError(f"unknown export target {target!r}")
    out_dir = Path(out_dir)
    _check_export_target(Path(path), out_dir, overwrite)
    cfg, state = load_model_weights(path)
    build_model(cfg, state)  # validate before writing anything
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out_dir)
    try:
        tmp.mkdir()
        _write_hf_export(tmp, cfg, state)
        _replace_directory(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_hf_export(directory: Path, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    hf_state = {k: v.contiguous() for k, v in to_hf_state_dict(state).items()}
    save_file(hf_state, directory / "model.safetensors", metadata={"format": "pt"})
    atomic_write_text(directory / "config.json", json.dumps(hf_config_dict(cfg), indent=2))
    preprocessor = hf_preprocessor_config_dict(cfg.extractor_mode == "layer_norm", cfg.extractor_mode)
    atomic_write_text(directory / "preprocessor_config.json", json.dumps(preprocessor, indent=2))
    atomic_write_text(directory / EXPORT_MARKER, json.dumps({"kind": "hf", "writer": "xlsr export"}))


def _check_export_target(source: Path, out_dir: Path, overwrite: bool) -> None:
    source, target = source.resolve(), out_dir.resolve()
    if target == source or source in target.parents or target in source.parents:
        raise OutputExistsError(
            f"{out_dir}: overlaps the checkpoint being exported ({source}); choose another"
        )
    for directory in (target, *target.parents):
        if any((directory / marker).exists() for marker in CHECKPOINT_MARKERS):
            raise OutputExistsError(f"{out_dir}: inside the training checkpoint {directory}; choose another")
    if out_dir.is_file() or out_dir.is_symlink():
        raise OutputExistsError(f"{out_dir} exists and is not a directory; refusing to replace it")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / EXPORT_MARKER).is_file():
        raise OutputExistsError(
            f"{out_dir} is not empty and not an earlier xlsr export; refusing to touch it"
        )
    if not overwrite:
        raise OutputExistsError(f"{out_dir} holds an earlier export; pass --overwrite to replace it")


def _replace_directory(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an existing (checked) ``target`` is moved aside, then removed."""
    old = temporary_sibling(target, "old") if target.exists() else None
    if old is not None:
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_checkpoint(
    source: str | Path, out: str | Path, source_format: Literal["hf", "fairseq"], overwrite: bool = False
) -> Path:
    """Convert a published checkpoint into an xlsr model file for ``checkpoint.init_from``.

    An existing ``out`` is replaced only with ``overwrite`` and only if it is an xlsr model file.
    """
    out = Path(out)
    _check_import_target(out, overwrite)
    if source_format == "fairseq":
        cfg, state = load_fairseq_checkpoint(source)
    elif source_format == "hf":
        if not Path(source, "config.json").is_file():
            raise FileNotFoundError(f"{source}: not an HF model directory (no config.json)")
        cfg, state = _load_hf(Path(source))
    else:
        raise ValueError(f"unknown import format {source_format!r}")
    build_model(cfg, state)
    model_file = {"format": XLSR_MODEL_FORMAT, "version": 1, "model_config": to_dict(cfg), "model": state}
    return atomic_write_with(out, lambda handle: torch.save(model_file, handle))


def _check_import_target(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory; name the .pt file to write")
    if not out.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    _load_model_file(out)  # refuses anything that is not an earlier `xlsr import` file
