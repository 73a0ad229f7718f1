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


class NonFiniteError(RuntimeError):
    pass


class TrainState:
    """Updates done, skipped-update counters (device tensors: no sync per update), and the run's
    identity: ``run_uid`` marks the checkpoints this run wrote (pruning touches no others), and the
    W&B run id keeps one W&B run across requeues."""

    def __init__(self, device: torch.device):
        self.step = 0
        self.run_uid: str | None = None
        self.wandb_run_id: str | None = None
        self.skipped_total = torch.zeros((), device=device)
        self.consecutive_nonfinite = torch.zeros((), device=device)
        # The streak as last copied to the host without waiting (pinned: the copy is asynchronous),
        # and the event that says when that copy has landed.
        self._streak_on_host = torch.zeros((), pin_memory=device.type == "cuda")
        self._streak_copied = torch.cuda.Event() if device.type == "cuda" else None

    def record_update(self, skipped: torch.Tensor) -> None:
        """Count a finished update; ``skipped`` is the device-side flag of a non-finite one."""
        self.step += 1
        self.consecutive_nonfinite.mul_(skipped).add_(skipped.float())
        self.skipped_total.add_(skipped.float())

    def poll_nonfinite(self, limit: int) -> None:
        """`check_nonfinite` without a host sync, for every update: reads the streak from the last
        asynchronous copy that has landed (a few updates old), then starts the next copy. A skipped
        update changes nothing, so raising a few updates late loses nothing."""
        if self._streak_copied is not None and not self._streak_copied.query():
            return  # the previous copy is still in flight
        self._raise_if_streak(int(self._streak_on_host), limit)  # a host tensor: no device sync
        self._streak_on_host.copy_(self.consecutive_nonfinite, non_blocking=True)
        if self._streak_copied is not None:
            self._streak_copied.record()

    def check_nonfinite(self, limit: int) -> None:
        """Raise once ``limit`` updates in a row were skipped (one host sync: call it rarely)."""
        self._raise_if_streak(int(self.consecutive_nonfinite.item()), limit)

    @staticmethod
    def _raise_if_streak(count: int, limit: int) -> None:
        if count >= limit:
            raise NonFiniteError(
                f"{count} consecutive updates had a non-finite loss or gradient (limit "
                f"optim.max_consecutive_nonfinite={limit}); stopping without saving. Lower optim.lr, "
                "set optim.clip_norm, or use bf16."
            )

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
