"""`xlsr probe`: the language-ID probe on any checkpoint, outside training.

Accepts whatever `xlsr.weights.read_weights` reads (a training checkpoint of any objective, an
`xlsr import` file, an HF directory, a fairseq ``.pt``), so a run can be compared with a released
model on the same held-out data. Only the encoder is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from xlsr.config import SAMPLE_RATE, ConfigError, DataConfig, ValidationConfig
from xlsr.evaluation.probe import ProbeResult, lid_probe
from xlsr.evaluation.valid_set import load_valid_set
from xlsr.weights import read_weights


@dataclass
class OfflineProbe:
    checkpoint: str
    layer: int
    languages: list[str]
    utterances: int
    result: ProbeResult

    def as_dict(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "layer": self.layer,
            "utterances": self.utterances,
            "train_utterances": self.result.train_size,
            "test_utterances": self.result.test_size,
            "probe_lid_accuracy": self.result.accuracy,
            "per_language": {self.languages[c]: acc for c, acc in sorted(self.result.per_class.items())},
        }


def probe_checkpoint(
    path: str | Path,
    indexes: list[str],
    layer: int = 0,
    max_seconds_per_language: float = 300.0,
    crop_seconds: float = 20.0,
    device: str = "cpu",
) -> OfflineProbe:
    weights = read_weights(path)
    model_cfg, model = weights.model, weights.build(encoder_only=True).to(device).eval()
    if not 0 <= layer <= model_cfg.encoder_layers:
        raise ConfigError(f"--layer must be in [0, {model_cfg.encoder_layers}] (0 = the last), got {layer}")
    crop = int(crop_seconds * SAMPLE_RATE)
    data = DataConfig(
        valid=list(indexes),
        max_sample_size=crop,
        min_sample_size=min(SAMPLE_RATE, crop),
        normalize=model_cfg.extractor_mode == "layer_norm",  # as the model was pretrained
    )
    validation = ValidationConfig(max_seconds_per_language=max_seconds_per_language)
    valid_set = load_valid_set(data, validation)
    features = torch.zeros(valid_set.size, model_cfg.encoder_embed_dim)
    with torch.no_grad(), mean_pooled_output(model, layer) as pooled:
        for utterance in valid_set.utterances:
            model.encode(utterance.audio.to(device).unsqueeze(0))
            features[utterance.index] = pooled[0].cpu()
    languages = sorted({language for _, language in valid_set.streams})
    labels = torch.tensor([languages.index(valid_set.streams[s][1]) for s in valid_set.labels])
    result = lid_probe(features, labels, valid_set.keys)
    return OfflineProbe(str(path), layer, languages, valid_set.size, result)


@contextlib.contextmanager
def mean_pooled_output(model: torch.nn.Module, layer: int) -> Iterator[list[torch.Tensor]]:
    """While active, ``holder[0]`` is the time-mean of transformer layer ``layer``'s output (1-based;
    0 = the last) for the first utterance of the latest forward pass."""
    pooled: list[torch.Tensor] = [torch.zeros(())]
    layers = model.blocks

    def keep(_module, _inputs, output) -> None:
        pooled[0] = output.float().mean(dim=1)[0]

    handle = layers[(layer or len(layers)) - 1].register_forward_hook(keep)
    try:
        yield pooled
    finally:
        handle.remove()
