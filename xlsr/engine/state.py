"""The trainer's own stateful parts: the run's progress and every random number generator.

Like every part the checkpointer saves (backend, data stream), each exposes ``state_dict()`` and
``load_state_dict()``. ``TrainState`` is the same on every rank and saved once; ``RNGState`` is
per rank.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


class TrainState:
    """Updates done, skipped-update counters (device tensors: no sync per update), and the run's
    identity: ``run_uid`` marks the checkpoints this run wrote (pruning touches no others), and the
    W&B run id keeps one W&B run across requeues."""

    def __init__(self, device: torch.device):
        self.step = 0
        self.run_uid: str | None = None
        self.wandb_run_id: str | None = None
        self.skipped_total = torch.zeros((), device=device)

    def record_update(self, skipped: torch.Tensor) -> None:
        """Count a finished update; ``skipped`` is the device-side flag of a non-finite one (a streak
        of them is the health sentinel's ``nonfinite`` signal, `xlsr.engine.health`)."""
        self.step += 1
        self.skipped_total.add_(skipped.float())

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "skipped_total": self.skipped_total.cpu(),
            "run_uid": self.run_uid,
            "wandb_run_id": self.wandb_run_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.skipped_total.copy_(state["skipped_total"])
        self.run_uid = state["run_uid"]
        self.wandb_run_id = state["wandb_run_id"]


class RNGState:
    """This process's global generators (torch CPU and CUDA, numpy, Python): dropout and the like."""

    def __init__(self, device: torch.device):
        self.device = device

    def state_dict(self) -> dict[str, Any]:
        kind, keys, *rest = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            # numpy's legacy state without arrays, so checkpoints load with ``weights_only=True``.
            "numpy": (kind, keys.tolist(), *rest),
            "python": random.getstate(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        random.setstate(state["python"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
