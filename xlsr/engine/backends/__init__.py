"""Update backends: how micro-batch losses become parameter updates, and how that state is saved.

- `TorchBackend` (`xlsr.engine.backends.torch_backend`): DDP or FSDP2 (applied by
  `xlsr.engine.parallel`), xlsr's Adam and LR schedule, a device-side fp16 loss scaler, and DCP
  checkpoints (reshardable to any world size).
- `DeepSpeedBackend` (`xlsr.engine.backends.deepspeed_backend`): ZeRO stages 1-3 with DeepSpeed's own
  partitioning, reduction, loss scaling and checkpoint format.

The trainer sees only the methods below; it never reads ``distributed.backend``. Each backend
builds the model itself (FSDP on the meta device, then shard by shard; DDP and DeepSpeed whole,
from the seed), loads ``checkpoint.init_from`` weights where its layout needs them, and owns the
forward pass's precision context. Both skip a non-finite update on the device: the optimizer's
``pending_skip`` flag is set before the step and the parameters stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable

from xlsr.config import TrainConfig
from xlsr.engine.backends.base import Backend, Weights
from xlsr.engine.distributed import DistEnv
from xlsr.objectives import Objective

__all__ = ["Backend", "build_backend"]


def build_backend(
    cfg: TrainConfig,
    env: DistEnv,
    objective: Objective,
    resume_world_size: int | None,
    initial_weights: Weights | None,
    lr_multiplier: Callable[[int], float] | None = None,
) -> Backend:
    """The backend named by ``distributed.backend``, with the objective's model built and initialised.

    ``resume_world_size`` is the world size of the checkpoint about to be loaded (None for a fresh
    run); ``initial_weights`` are the ``checkpoint.init_from`` weights of a fresh run;
    ``lr_multiplier(n)`` multiplies the LR schedule (the health sentinel's damping after a rollback).
    """
    if cfg.distributed.backend == "deepspeed":
        from xlsr.engine.backends.deepspeed_backend import DeepSpeedBackend

        return DeepSpeedBackend(cfg, env, objective, resume_world_size, initial_weights, lr_multiplier)
    from xlsr.engine.backends.torch_backend import TorchBackend

    return TorchBackend(cfg, env, objective, initial_weights, lr_multiplier)
