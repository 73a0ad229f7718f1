"""What every update backend offers the trainer, and the helpers they share."""

from __future__ import annotations

import contextlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from xlsr.model.encoder import SpeechEncoder
from xlsr.weights import UnreadableCheckpointError


@dataclass
class Weights:
    """``checkpoint.init_from`` weights for a fresh run: a full (unsharded) state dict; ``strict`` =
    every parameter of the model, else only the encoder's (the objective's head starts fresh)."""

    state: dict[str, torch.Tensor]
    source: str
    strict: bool = True


class Backend(Protocol):
    model: SpeechEncoder  # the plain model (schedules, frame geometry); same parameters as ``module``
    module: nn.Module  # what the trainer calls for the forward pass
    scheduler: torch.optim.lr_scheduler.LambdaLR  # the LR schedule (`xlsr.engine.optim`)

    def autocast(self) -> contextlib.AbstractContextManager: ...

    # Multiplies each micro-batch loss before backward (loss scale; accumulation correction).
    def loss_multiplier(self) -> torch.Tensor | float: ...

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def update(self, loss_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the accumulated gradient; returns (skipped flag, gradient norm) as device tensors."""
        ...

    def lr(self) -> float: ...

    def loss_scale(self) -> float: ...

    def save(self, directory: Path, asynchronous: bool) -> Future | None:
        """Write model and optimizer state; an asynchronous save returns the future to wait on."""
        ...

    def load(self, directory: Path) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Release what the backend started (process groups, engines, threads): a clean exit."""
        ...


def load_initial_weights(module: nn.Module, weights: Weights, full_state_dict: bool) -> None:
    """Load ``checkpoint.init_from`` weights; a model that does not fit is a user error naming the file."""
    try:
        if full_state_dict:  # DDP or FSDP2: each rank keeps its shard of the full state
            options = StateDictOptions(full_state_dict=True, strict=weights.strict)
            set_model_state_dict(module, weights.state, options=options)
        else:
            module.load_state_dict(weights.state, strict=weights.strict)
    except (RuntimeError, KeyError) as exc:
        raise UnreadableCheckpointError(
            f"checkpoint.init_from={weights.source} does not fit the configured model: {exc}"
        ) from None
