"""Validation: the pretraining objective on held-out audio, overall and per (corpus, language).

Every utterance is evaluated alone (batch of one: no padding, nothing depends on what it is batched
with) in eval mode, with time masks and negatives drawn from a generator seeded by its key, so the
numbers are comparable across updates, world sizes, backends and resumes. Ranks evaluate disjoint
shares and their sums are all-reduced; every rank runs the same number of forward passes (sharded
backends gather parameters collectively), repeating its last utterance if it has fewer.

For the language-ID probe, each utterance also goes through the model unmasked and the output of
``validation.probe_layer`` is mean-pooled over time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xlsr.config import TrainConfig
from xlsr.engine.backends import Backend
from xlsr.engine.distributed import DistEnv
from xlsr.engine.metrics import BITS
from xlsr.evaluation.probe import ProbeResult, lid_probe
from xlsr.evaluation.valid_set import ValidSet, ValidUtterance, key_hash, load_valid_set
from xlsr.model.loss import pretraining_loss
from xlsr.model.masking import compute_mask_indices, sample_negatives
from xlsr.seeding import derive_seed

# Per-stream sums, in this order.
FIELDS = ("loss_contrastive", "sample_size", "correct", "prob_perplexity", "code_perplexity", "utterances")


@dataclass
class ValidationResult:
    metrics: dict[str, float]  # valid_* overall, valid/<corpus>/<language>/* per stream, probe_*
    seconds: float


class Validator:
    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.valid_set: ValidSet = load_valid_set(cfg, env.rank, env.world_size)

    def run(self, backend: Backend) -> ValidationResult:
        started = time.perf_counter()
        sums, features = self._evaluate(backend)
        metrics = self._metrics(sums)
        if self.cfg.validation.probe and features is not None:
            languages = sorted({language for _, language in self.valid_set.streams})
            stream_language = [languages.index(language) for _, language in self.valid_set.streams]
            labels = torch.tensor([stream_language[stream] for stream in self.valid_set.labels])
            probe = lid_probe(features, labels, self.valid_set.keys)
            metrics.update(_probe_metrics(probe, languages))
        return ValidationResult(metrics, time.perf_counter() - started)

    def _evaluate(self, backend: Backend) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.env.device
        sums = torch.zeros(len(self.valid_set.streams), len(FIELDS), device=device, dtype=torch.float64)
        dim = self.cfg.model.encoder_embed_dim
        features = torch.zeros(self.valid_set.size, dim, device=device, dtype=torch.float32)
        was_training = backend.module.training
        backend.module.eval()
        try:
            with torch.no_grad(), self._probe_hook(backend) as pooled:
                for utterance, counted in self._schedule():
                    row = self._evaluate_one(backend, utterance)
                    if self.cfg.validation.probe:
                        self._features(backend, utterance)
                    if counted:
                        sums[utterance.stream] += row
                        features[utterance.index] = pooled[0]
        finally:
            backend.module.train(was_training)
        dist.all_reduce(sums)
        if not self.cfg.validation.probe:
            return sums, None
        dist.all_reduce(features)  # each row is non-zero on exactly one rank
        return sums, features.cpu()

    def _schedule(self) -> Iterator[tuple[ValidUtterance, bool]]:
        """This rank's utterances, padded with repeats (not counted) to the longest share."""
        mine = self.valid_set.utterances
        longest = torch.tensor([len(mine)], device=self.env.device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        for position in range(int(longest.item())):
            if position < len(mine):
                yield mine[position], True
            elif mine:
                yield mine[-1], False
            else:
                raise RuntimeError("a rank without validation utterances cannot join the collectives")

    def _evaluate_one(self, backend: Backend, utterance: ValidUtterance) -> torch.Tensor:
        device, m = self.env.device, self.cfg.model
        source = utterance.audio.to(device).unsqueeze(0)
        generator = torch.Generator(device).manual_seed(
            derive_seed(self.cfg.seed, "valid", key_hash(utterance.key))
        )
        frames = m.num_frames(source.shape[1])
        masks = compute_mask_indices(
            (1, frames), None, m.mask_prob, m.mask_length, m.mask_min_masks, m.require_same_masks,
            generator=generator, device=device,
        )  # fmt: skip
        negatives = sample_negatives(masks, m.num_negatives, generator)
        with backend.autocast():
            output = backend.module(source, None, mask_indices=masks, negative_indices=negatives)
        _, _, metrics = pretraining_loss(output, self.cfg.loss)
        values = [metrics[name] for name in FIELDS[:-1]]
        return torch.stack(
            [*(v.double() for v in values), torch.ones((), device=device, dtype=torch.float64)]
        )

    def _features(self, backend: Backend, utterance: ValidUtterance) -> None:
        """An unmasked forward pass; the hook keeps the probe layer's mean-pooled output."""
        source = utterance.audio.to(self.env.device).unsqueeze(0)
        frames = self.cfg.model.num_frames(source.shape[1])
        no_masks = torch.zeros(1, frames, dtype=torch.bool, device=self.env.device)
        negatives = torch.zeros(
            1, frames, self.cfg.model.num_negatives, dtype=torch.long, device=self.env.device
        )
        with backend.autocast():
            backend.module(source, None, mask_indices=no_masks, negative_indices=negatives)

    def _probe_hook(self, backend: Backend) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        return mean_pooled_output(backend.model, self.cfg.validation.probe_layer)

    def _metrics(self, sums: torch.Tensor) -> dict[str, float]:
        metrics = _stream_metrics("valid_", sums.sum(0).tolist())
        for (corpus, language), row in zip(self.valid_set.streams, sums.tolist(), strict=True):
            metrics.update(_stream_metrics(f"valid/{corpus}/{language}/", row))
        return metrics


@contextlib.contextmanager
def mean_pooled_output(model: torch.nn.Module, layer: int) -> Iterator[list[torch.Tensor]]:
    """While active, ``holder[0]`` is the time-mean of transformer layer ``layer``'s output (1-based;
    0 = the last) for the first utterance of the latest forward pass."""
    pooled: list[torch.Tensor] = [torch.zeros(())]
    layers = model.encoder.layers

    def keep(_module, _inputs, output) -> None:
        pooled[0] = output.float().mean(dim=1)[0]

    handle = layers[(layer or len(layers)) - 1].register_forward_hook(keep)
    try:
        yield pooled
    finally:
        handle.remove()


def _stream_metrics(prefix: str, row: list[float]) -> dict[str, float]:
    values = dict(zip(FIELDS, row, strict=True))
    masked, count = max(values["sample_size"], 1.0), max(values["utterances"], 1.0)
    return {
        f"{prefix}loss_contrastive": values["loss_contrastive"] / masked * BITS,
        f"{prefix}accuracy": values["correct"] / masked,
        f"{prefix}prob_perplexity": values["prob_perplexity"] / count,
        f"{prefix}code_perplexity": values["code_perplexity"] / count,
        f"{prefix}utterances": values["utterances"],
    }


def _probe_metrics(probe: ProbeResult, languages: list[str]) -> dict[str, float]:
    metrics = {"probe_lid_accuracy": probe.accuracy, "probe_lid_test_utterances": float(probe.test_size)}
    for label, accuracy in probe.per_class.items():
        metrics[f"probe/{languages[label]}/lid_accuracy"] = accuracy
    return metrics
