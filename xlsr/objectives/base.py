"""What a pretraining objective gives the engine, evaluation and reporting.

The engine knows an objective only through `Objective`: it builds the model, draws the objective's
random inputs for a micro-batch on the device (`Objective.prepare`), runs the forward pass and the
loss (`Objective.loss`), and reports metrics whose names, reductions, console columns, alarms and
"best" key come from the objective's `MetricSpec`. Adding an objective is one module in this
package, its entry in `xlsr.objectives.OBJECTIVES`, its config section and a recipe
(docs/architecture.md, "Adding an objective").

Every objective's loss is a sum over ``sample_size`` frames (the masked frames): the engine divides
the gradient by the total ``sample_size`` of the effective batch over all ranks and micro-batches,
as fairseq normalises it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from xlsr.model.encoder import SpeechEncoder

BITS = 1 / math.log(2)

# How a metric sum becomes a logged value: "bits" = per frame in bits (÷ sample_size ÷ ln 2),
# "rate" = per frame (÷ sample_size), "mean" = per forward pass (÷ micro-batches, or utterances in
# validation), "count" = the normaliser itself (not logged).
Reduction = Literal["bits", "rate", "mean", "count"]


@dataclass
class Prepared:
    """One micro-batch on the device with the objective's random draws, ready for `Objective.loss`."""

    source: Tensor  # (B, L) audio
    padding_mask: Tensor | None  # (B, L) True = padding
    sample_size: Tensor  # () float: the frames the loss sums over (the gradient's normaliser)
    draws: dict[str, Tensor]  # the objective's draws (time masks, negatives, ...)
    generator: torch.Generator  # for draws made inside the forward pass


@dataclass(frozen=True)
class Alarm:
    """A failure signature an objective recognises in its interval metrics; ``signal`` names the
    health policy that applies (``health.at_chance`` or ``health.codebook``)."""

    signal: str
    message: str


@dataclass(frozen=True)
class MetricSpec:
    """The metrics an objective's loss returns and how they are reduced, shown and judged."""

    # Per-micro-batch sums that `Objective.loss` returns, in order: name -> (reduction, logged name).
    # Every objective has a "sample_size" entry with reduction "count".
    sums: dict[str, tuple[Reduction, str]]
    # Columns of the console line after the total loss: (metric, format, label).
    console: tuple[tuple[str, str, str], ...]
    # The objective's main loss in bits and its chance level (a run that never leaves it is stuck).
    loss_key: str
    chance_bits: float
    # Codebook usage (a perplexity) and the codebook size it is compared with.
    usage_key: str
    codebook_size: int
    # Values of schedules inside the model, reported every logging interval (e.g. a temperature).
    schedule_keys: tuple[str, ...] = ()
    # The validation metric that picks the best checkpoint (lower is better).
    best_key: str = field(default="")

    def reduce(self, sums: dict[str, float], passes: float, prefix: str = "") -> dict[str, float]:
        """Logged values from sums over frames and ``passes`` forward passes."""
        frames = max(sums["sample_size"], 1.0)
        divisors = {"bits": frames / BITS, "rate": frames, "mean": max(passes, 1.0)}
        return {
            prefix + name: sums[key] / divisors[reduction]
            for key, (reduction, name) in self.sums.items()
            if reduction != "count"
        }


class Objective(Protocol):
    name: str
    spec: MetricSpec

    def build_model(self, init_seed: int = 0) -> SpeechEncoder:
        """The model, initialised from ``init_seed`` (on the meta device when built inside one)."""
        ...

    def set_num_updates(self, model: nn.Module, num_updates: int) -> None:
        """Advance the model's schedules (e.g. a temperature) to ``num_updates``."""
        ...

    def schedule_metrics(self, model: nn.Module) -> dict[str, float]: ...

    def prepare(
        self, model: nn.Module, source: Tensor, padding_mask: Tensor | None, generator: torch.Generator
    ) -> Prepared:
        """Draw the micro-batch's masks (and what else the loss needs) on the device, from ``generator``."""
        ...

    def loss(
        self, module: nn.Module, prepared: Prepared, layer_keep: list[bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward pass through ``module`` (the model, possibly wrapped) and the loss summed over
        ``prepared.sample_size`` frames, with the detached metric sums of ``spec.sums``."""
        ...

    def features(self, module: nn.Module, source: Tensor) -> None:
        """An unmasked forward pass of one utterance; probes read the layers through hooks."""
        ...

    def interval_metrics(self, sums: dict[str, float], passes: float, prefix: str = "") -> dict[str, float]:
        """The logged values of ``spec.sums`` (and any the objective derives from them)."""
        ...

    def validation_columns(self, metrics: dict[str, float]) -> list[str]:
        """The validation console line's columns for this objective."""
        ...

    def alarms(self, metrics: dict[str, float], past_warmup: bool) -> list[Alarm]:
        """This objective's known failure signatures in one interval's metrics."""
        ...

    def flops_per_crop(self, crop_samples: int) -> float:
        """Training FLOPs (3 × forward) for one utterance of ``crop_samples`` samples."""
        ...

    def head_activation_bytes(self, crop_samples: int, compute_bytes: int) -> float:
        """Bytes the head and loss keep for backward for one utterance (the encoder's are
        `xlsr.model.activations`); ``compute_bytes`` is 2 under 16-bit autocast, 4 in fp32."""
        ...


def stuck_at_chance(metrics: dict[str, float], spec: MetricSpec, past_warmup: bool) -> list[Alarm]:
    """The alarm every objective shares: its main loss still at chance level after warmup."""
    loss = metrics.get(spec.loss_key)
    if past_warmup and loss is not None and abs(loss - spec.chance_bits) < 0.01:
        return [
            Alarm(
                "at_chance",
                f"{spec.loss_key} {loss:.3f} bits = chance level: the predictions are uniform "
                "(stuck run; lower the LR or raise the effective batch)",
            )
        ]
    return []
