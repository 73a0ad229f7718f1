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

from xlsr.config import ModelConfig, atomic_write_text, from_dict, load_config, to_dict
from xlsr.engine.checkpoint import load_model_state
from xlsr.model.interop import (
    from_hf_state_dict,
    hf_config_dict,
    hf_preprocessor_config_dict,
    load_fairseq_checkpoint,
    model_config_from_hf,
    to_hf_state_dict,
)
from xlsr.model.wav2vec2 import Wav2Vec2Model

XLSR_MODEL_FORMAT = "xlsr-model"


def load_model_weights(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(model config, full state dict) of any supported checkpoint, on the CPU."""
    path = Path(path)
    if path.is_dir() and (path / "trainer.pt").is_file():
        return load_config(path / "config.yaml").model, load_model_state(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf(path)
    if path.is_file():
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, dict) and data.get("format") == XLSR_MODEL_FORMAT:
            return from_dict(ModelConfig, data["model_config"], source=str(path)), data["model"]
        raise ValueError(
            f"{path}: not an xlsr model file (use `xlsr import --from fairseq` for fairseq files)"
        )
    raise FileNotFoundError(
        f"{path}: expected a training checkpoint (step-N/), an xlsr model file, or an HF model directory"
    )


def _load_hf(directory: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    cfg = model_config_from_hf(json.loads((directory / "config.json").read_text()))
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
        raise ValueError(f"weights do not fit the model config: {exc}") from None
    return model


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> Wav2Vec2Model:
    """A model in eval mode from any supported checkpoint."""
    return build_model(*load_model_weights(path)).to(device).eval()


def export_checkpoint(path: str | Path, out_dir: str | Path, target: Literal["hf"] = "hf") -> Path:
    """Write an HF ``Wav2Vec2ForPreTraining`` directory (config, preprocessor config, safetensors)."""
    if target != "hf":
        raise ValueError(f"unknown export target {target!r}")
    cfg, state = load_model_weights(path)
    build_model(cfg, state)  # validate before writing anything
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file

    hf_state = {k: v.contiguous() for k, v in to_hf_state_dict(state).items()}
    save_file(hf_state, tmp / "model.safetensors", metadata={"format": "pt"})
    atomic_write_text(tmp / "config.json", json.dumps(hf_config_dict(cfg), indent=2))
    normalize = cfg.extractor_mode == "layer_norm"
    preprocessor = hf_preprocessor_config_dict(normalize, cfg.extractor_mode)
    atomic_write_text(tmp / "preprocessor_config.json", json.dumps(preprocessor, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def import_checkpoint(source: str | Path, out: str | Path, source_format: Literal["hf", "fairseq"]) -> Path:
    """Convert a published checkpoint into an xlsr model file for ``checkpoint.init_from``."""
    if source_format == "fairseq":
        cfg, state = load_fairseq_checkpoint(source)
    elif source_format == "hf":
        if not Path(source, "config.json").is_file():
            raise FileNotFoundError(f"{source}: not an HF model directory (no config.json)")
        cfg, state = _load_hf(Path(source))
    else:
        raise ValueError(f"unknown import format {source_format!r}")
    build_model(cfg, state)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save({"format": XLSR_MODEL_FORMAT, "version": 1, "model_config": to_dict(cfg), "model": state}, tmp)
    tmp.replace(out)
    return out
