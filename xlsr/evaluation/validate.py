"""Validation: the pretraining objective on held-out audio, overall and per (corpus, language).

Every utterance is evaluated alone (batch of one: no padding, nothing depends on what it is batched
with) in eval mode, with the objective's masks (and negatives) drawn from a generator seeded by its
key, so the numbers are comparable across updates, world sizes, backends and resumes. The loop
hands over a forward module, the plain model (for the probe's hooks) and its autocast; this package
knows neither the engine nor what the objective computes. Ranks evaluate disjoint
shares and their sums are all-reduced; every rank runs the same number of forward passes (sharded
backends gather parameters collectively), repeating its last utterance if it has fewer.

The probes (phone recognition, language ID) run on checkpoints instead: `xlsr.evaluation.probes`.
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
from xlsr.evaluation.valid_set import ValidSet, ValidUtterance, key_hash, load_valid_set
from xlsr.objectives import Objective
from xlsr.seeding import derive_seed

Autocast = Callable[[], contextlib.AbstractContextManager]


@dataclass
class ValidationResult:
    metrics: dict[str, float]  # valid_* overall, valid/<corpus>/<language>/* per stream
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
        sums = self._evaluate(module, model, autocast, progress)
        return ValidationResult(self._metrics(sums), time.perf_counter() - started)

    def _evaluate(
        self, module: nn.Module, model: nn.Module, autocast: Autocast, progress: Callable[[], None]
    ) -> torch.Tensor:
        device = self.device
        sums = torch.zeros(len(self.valid_set.streams), len(self.fields), device=device, dtype=torch.float64)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                for utterance, counted in self._schedule():
                    source = utterance.audio.to(device).unsqueeze(0)
                    row = self._evaluate_one(module, model, autocast, source, utterance.key)
                    if counted:
                        sums[utterance.stream] += row
                    progress()
        finally:
            module.train(was_training)
        dist.all_reduce(sums)
        return sums

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
