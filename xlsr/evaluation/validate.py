"""Validation: the pretraining objective on held-out audio, overall and per (corpus, language).

Every utterance is evaluated alone (batch of one: no padding, nothing depends on what it is batched
with) in eval mode, with the objective's masks (and negatives) drawn from a generator seeded by its
key, so the numbers are comparable across updates, world sizes, backends and resumes. The loop
hands over a forward module, the plain model (for the probe's hooks) and its autocast; this package
knows neither the engine nor what the objective computes. Ranks evaluate disjoint
shares and their sums are all-reduced; every rank runs the same number of forward passes (sharded
backends gather parameters collectively), repeating its last utterance if it has fewer.

For the language-ID probe, each utterance also goes through the model unmasked and the output of
``validation.probe_layer`` is mean-pooled over time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from xlsr.config import TrainConfig
from xlsr.evaluation.probe import ProbeResult, lid_probe
from xlsr.evaluation.valid_set import ValidSet, ValidUtterance, key_hash, load_valid_set
from xlsr.objectives import Objective
from xlsr.seeding import derive_seed

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class ValidationResult:
    metrics: dict[str, float]  # valid_* overall, valid/<corpus>/<language>/* per stream, probe_*
    seconds: float


class Validator:
    def __init__(
        self, cfg: TrainConfig, objective: Objective, rank: int, world_size: int, device: torch.device
    ):
        self.cfg, self.objective, self.device = cfg, objective, device
        self.fields = (*objective.spec.sums, "utterances")  # per-stream sums, in this order
        self.valid_set: ValidSet = load_valid_set(cfg.data, cfg.validation, rank, world_size)

    def run(
        self,
        module: nn.Module,
        model: nn.Module,
        autocast: Autocast,
        progress: Callable[[], None] | None = None,
    ) -> ValidationResult:
        """Validate ``module`` (``model``, possibly wrapped; every rank calls this together);
        ``progress`` is called after every utterance (the hang watchdog's beat)."""
        started = time.perf_counter()
        progress = progress or (lambda: None)
        sums, features = self._evaluate(module, model, autocast, progress)
        metrics = self._metrics(sums)
        if self.cfg.validation.probe and features is not None:
            languages = sorted({language for _, language in self.valid_set.streams})
            stream_language = [languages.index(language) for _, language in self.valid_set.streams]
            labels = torch.tensor([stream_language[stream] for stream in self.valid_set.labels])
            probe = lid_probe(features, labels, self.valid_set.keys)
            metrics.update(_probe_metrics(probe, languages))
            progress()
        return ValidationResult(metrics, time.perf_counter() - started)

    def _evaluate(
        self, module: nn.Module, model: nn.Module, autocast: Autocast, progress: Callable[[], None]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = self.device
        sums = torch.zeros(len(self.valid_set.streams), len(self.fields), device=device, dtype=torch.float64)
        dim = self.cfg.model.encoder_embed_dim
        features = torch.zeros(self.valid_set.size, dim, device=device, dtype=torch.float32)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), mean_pooled_output(model, self.cfg.validation.probe_layer) as pooled:
                for utterance, counted in self._schedule():
                    source = utterance.audio.to(device).unsqueeze(0)
                    row = self._evaluate_one(module, model, autocast, source, utterance.key)
                    if self.cfg.validation.probe:
                        with autocast():
                            self.objective.features(module, source)
                    if counted:
                        sums[utterance.stream] += row
                        features[utterance.index] = pooled[0]
                    progress()
        finally:
            module.train(was_training)
        dist.all_reduce(sums)
        if not self.cfg.validation.probe:
            return sums, None
        dist.all_reduce(features)  # each row is non-zero on exactly one rank
        return sums, features.cpu()

    def _schedule(self) -> Iterator[tuple[ValidUtterance, bool]]:
        """This rank's utterances, padded with repeats (not counted) to the longest share."""
        mine = self.valid_set.utterances
        longest = torch.tensor([len(mine)], device=self.device)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        for position in range(int(longest.item())):
            if position < len(mine):
                yield mine[position], True
            elif mine:
                yield mine[-1], False
            else:
                raise RuntimeError("a rank without validation utterances cannot join the collectives")

    def _evaluate_one(
        self, module: nn.Module, model: nn.Module, autocast: Autocast, source: torch.Tensor, key: str
    ) -> torch.Tensor:
        generator = torch.Generator(self.device).manual_seed(
            derive_seed(self.cfg.seed, "valid", key_hash(key))
        )
        prepared = self.objective.prepare(model, source, None, generator)
        with autocast():
            _, metrics = self.objective.loss(module, prepared)
        values = [metrics[name].double() for name in self.fields[:-1]]
        return torch.stack([*values, torch.ones((), device=self.device, dtype=torch.float64)])

    def _metrics(self, sums: torch.Tensor) -> dict[str, float]:
        metrics = self._stream_metrics("valid_", sums.sum(0).tolist())
        for (corpus, language), row in zip(self.valid_set.streams, sums.tolist(), strict=True):
            metrics.update(self._stream_metrics(f"valid/{corpus}/{language}/", row))
        return metrics

    def _stream_metrics(self, prefix: str, row: list[float]) -> dict[str, float]:
        values = dict(zip(self.fields, row, strict=True))
        metrics = self.objective.interval_metrics(values, values["utterances"], prefix)
        metrics[f"{prefix}utterances"] = values["utterances"]
        return metrics


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


def _probe_metrics(probe: ProbeResult, languages: list[str]) -> dict[str, float]:
    metrics = {"probe_lid_accuracy": probe.accuracy, "probe_lid_test_utterances": float(probe.test_size)}
    for label, accuracy in probe.per_class.items():
        metrics[f"probe/{languages[label]}/lid_accuracy"] = accuracy
    return metrics
