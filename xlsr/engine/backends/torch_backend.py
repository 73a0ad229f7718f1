"""DDP or FSDP2 (applied by `xlsr.engine.parallel`), xlsr's Adam and LR schedule, a device-side fp16
loss scaler, and DCP checkpoints (reshardable to any world size)."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from xlsr.config import TrainConfig
from xlsr.engine.backends.base import Weights, load_initial_weights
from xlsr.engine.distributed import DistEnv, any_rank
from xlsr.engine.optim import build_optimizer, build_scheduler
from xlsr.engine.parallel import PRECISION_DTYPES, parallelize
from xlsr.objectives import Objective
from xlsr.weights.safe_load import SafeLoadPlanner, SafeReader


class TorchBackend:
    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        objective: Objective,
        initial_weights: Weights | None = None,
        lr_multiplier: Callable[[int], float] | None = None,
    ):
        self.cfg, self.env = cfg, env
        if cfg.distributed.backend == "fsdp":  # sharded first, then initialised shard by shard
            with torch.device("meta"):
                self.model = objective.build_model()
        else:  # identical initial weights on every rank: the init depends on the seed alone
            self.model = objective.build_model(init_seed=cfg.seed).to(env.device)
        frozen_encoder = cfg.model.feature_grad_mult == 0
        self.module = parallelize(
            self.model, cfg.distributed, env,
            find_unused_parameters=cfg.model.encoder_layerdrop > 0 or frozen_encoder, init_seed=cfg.seed,
        )  # fmt: skip
        if initial_weights is not None:
            load_initial_weights(self.module, initial_weights, full_state_dict=True)
        self.optimizer = build_optimizer(self.module.parameters(), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, lr_multiplier)
        self.fp16 = cfg.distributed.precision == "fp16"
        self.scale = torch.ones((), device=env.device)
        # The writer thread of an async save runs collectives while training runs its own; on a shared
        # group the two threads' collectives interleave differently on each rank and deadlock.
        self.checkpoint_group = (
            dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=cfg.distributed.timeout_s))
            if cfg.checkpoint.async_save
            else None
        )
        self.scale_growth = torch.zeros((), device=env.device)
        if self.fp16:  # fairseq's fp16_init_scale
            self.scale.fill_(128.0)

    def loss_multiplier(self) -> torch.Tensor:
        return self.scale

    def autocast(self) -> contextlib.AbstractContextManager:
        precision = self.cfg.distributed.precision
        if precision == "fp32" or self.cfg.distributed.backend != "ddp":
            return contextlib.nullcontext()  # FSDP's mixed-precision policy casts the parameters itself
        return torch.autocast(self.env.device.type, dtype=PRECISION_DTYPES[precision])

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        if last or not hasattr(self.module, "no_sync"):
            return contextlib.nullcontext()
        return self.module.no_sync()  # DDP: all-reduce only once per update

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def update(self, loss_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = [p for p in self.module.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        if self.fp16:
            torch._foreach_div_(grads, self.scale)
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            norm = norm.full_tensor()
        if self.cfg.optim.clip_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optim.clip_norm, norm, foreach=True)
        # A NaN loss on one rank must skip the update everywhere.
        found_inf = any_rank(~(torch.isfinite(norm) & torch.isfinite(loss_sum)), self.env.world_size)
        self._update_scale(found_inf)
        self.optimizer.step(skip=found_inf)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return found_inf, norm.float()

    def _update_scale(self, found_inf: torch.Tensor) -> None:
        """Dynamic fp16 loss scaling on the device: halve on overflow, double after a clean window."""
        if not self.fp16:
            return
        window = max(1, 2**14 // (self.env.world_size * self.cfg.optim.update_freq))
        grown = self.scale_growth + 1 >= window
        doubled = torch.where(grown, self.scale * 2, self.scale)
        self.scale.copy_(torch.where(found_inf, self.scale / 2, doubled))
        self.scale_growth.copy_(torch.where(found_inf | grown, 0.0, self.scale_growth + 1))

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def loss_scale(self) -> float:
        return float(self.scale)

    def save(self, directory: Path, asynchronous: bool) -> Future | None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        if not asynchronous:
            dcp.save(state, checkpoint_id=str(directory))
            return None
        # Staging copies the state to CPU memory before this returns; writing continues in a thread.
        response = dcp.async_save(state, checkpoint_id=str(directory), process_group=self.checkpoint_group)
        return getattr(response, "upload_completion", response)

    def load(self, directory: Path) -> None:
        model_state, optim_state = get_state_dict(self.module, self.optimizer)
        state = {"model": model_state, "optim": optim_state}
        # Reshards to this world size; the metadata is read without executing code from it.
        dcp.load(state, storage_reader=SafeReader(directory), planner=SafeLoadPlanner())
        set_state_dict(
            self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler.state_dict(),
            "loss_scale": self.scale.cpu(),
            "scale_growth": self.scale_growth.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scale.copy_(state["loss_scale"])
        self.scale_growth.copy_(state["scale_growth"])

    def close(self) -> None:
        if self.checkpoint_group is not None:
            dist.destroy_process_group(self.checkpoint_group)
            self.checkpoint_group = None
