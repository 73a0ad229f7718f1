"""Writing weights for others: the Python API behind `xlsr export` and `xlsr import`.

Both read through `xlsr.weights.read_weights` (every format xlsr reads). `xlsr export --to hf`
writes a Hugging Face directory: ``Wav2Vec2ForPreTraining`` for wav2vec 2.0, the bare encoder
(``Wav2Vec2Model``) for other objectives, whose heads HF has no class for. `xlsr import` writes an
xlsr model file (`xlsr.weights.model_file`) for ``checkpoint.init_from``.

Example::

    model = load_pretrained("runs/xlsr300m/checkpoints/step-01000000")  # from xlsr.weights
    hidden, frame_padding = model.encode(waveforms, padding_mask)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal

import torch

from xlsr.fileio import atomic_write_text, atomic_write_with, fsync_dir, temporary_sibling, umask_file_mode
from xlsr.model.interop import hf_config_dict, hf_preprocessor_config_dict, to_hf_state_dict
from xlsr.process import UserError
from xlsr.weights import ModelWeights, read_fairseq, read_weights
from xlsr.weights.hf import is_hf_directory, read_hf_directory
from xlsr.weights.model_file import load_model_file, model_file_contents

# Written into every HF export; only a directory holding it may be replaced (with overwrite).
EXPORT_MARKER = "xlsr_export.json"
# Files that make a directory (or one of its parents) a training checkpoint.
CHECKPOINT_MARKERS = ("trainer.pt", "manifest.json", ".metadata")


class OutputExistsError(UserError):
    pass


def export_checkpoint(
    path: str | Path, out_dir: str | Path, target: Literal["hf"] = "hf", overwrite: bool = False
) -> Path:
    """Write an HF directory (config, preprocessor config, safetensors): ``Wav2Vec2ForPreTraining``
    for a wav2vec 2.0 model, the bare ``Wav2Vec2Model`` encoder for other objectives.

    ``out_dir`` must not exist, be empty, or — with ``overwrite`` — be an earlier xlsr HF export;
    it may not lie inside a checkpoint. Nothing else is ever replaced or deleted.
    """
    if target != "hf":
        raise ValueError(f"unknown export target {target!r}")
    out_dir = Path(out_dir)
    _check_export_target(Path(path), out_dir, overwrite)
    weights = read_weights(path)
    weights.build(encoder_only=weights.encoder_only)  # validate before writing anything
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out_dir)
    try:
        tmp.mkdir()
        _write_hf_export(tmp, weights)
        _replace_directory(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _write_hf_export(directory: Path, weights: ModelWeights) -> None:
    from safetensors.torch import save_file

    cfg, whole = weights.model, weights.objective.name == "wav2vec2"
    state = weights.state if whole else weights.encoder_state()
    hf_state = {k: v.contiguous() for k, v in to_hf_state_dict(state).items()}
    save_file(hf_state, directory / "model.safetensors", metadata={"format": "pt"})
    # safetensors creates the file private (0600); give it the mode the other files of the export get.
    os.chmod(directory / "model.safetensors", umask_file_mode())
    config = hf_config_dict(cfg, weights.objective.wav2vec2)
    if not whole:
        config["architectures"] = ["Wav2Vec2Model"]
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2))
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
        weights = read_fairseq(Path(source))
    elif source_format == "hf":
        if not is_hf_directory(Path(source)):
            raise FileNotFoundError(f"{source}: not an HF model directory (no config.json)")
        weights = read_hf_directory(Path(source))
    else:
        raise ValueError(f"unknown import format {source_format!r}")
    weights.build(encoder_only=weights.encoder_only)
    contents = model_file_contents(weights)
    return atomic_write_with(out, lambda handle: torch.save(contents, handle))


def _check_import_target(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise OutputExistsError(f"{out} is a directory; name the .pt file to write")
    if not out.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    load_model_file(out)  # refuses anything that is not an earlier `xlsr import` file
