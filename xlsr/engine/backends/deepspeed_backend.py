"""DeepSpeed ZeRO (stages 1-3) behind the trainer's `Backend` interface.

DeepSpeed owns parameter/gradient/optimizer partitioning, the gradient all-reduce, loss scaling and
its checkpoint format; xlsr keeps the optimizer (our Adam, run by ZeRO on its fp32 partitions), the
LR schedule, activation checkpointing (the same `checkpoint_wrapper` policy as the torch backends:
for pure data parallelism it is equivalent to DeepSpeed's own) and the update-skipping rule.

Resuming on a different world size converts the checkpoint once with DeepSpeed's universal
checkpoint tool (``<checkpoint>/universal``) and loads that.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from xlsr.config import TrainConfig
from xlsr.engine.backends.base import Weights, load_initial_weights
from xlsr.engine.distributed import DistEnv, any_rank
from xlsr.engine.optim import build_optimizer, build_scheduler
from xlsr.engine.parallel import PRECISION_DTYPES, apply_activation_checkpointing
from xlsr.objectives import Objective

UNIVERSAL_DIR = "universal"


def deepspeed_config(cfg: TrainConfig, world_size: int, load_universal: bool) -> dict[str, Any]:
    precision = cfg.distributed.precision
    return {
        # xlsr forms the batches; DeepSpeed only needs to know how many micro-batches make an update.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": cfg.optim.update_freq,
        "train_batch_size": world_size * cfg.optim.update_freq,
        "zero_optimization": {"stage": cfg.distributed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        # fairseq's initial scale 128 = 2^7; 0 = dynamic scaling.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 7},
        "gradient_clipping": cfg.optim.clip_norm,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "checkpoint": {"load_universal": load_universal},
    }


class _CastInputs(nn.Module):
    """Feeds the engine floating inputs in its parameter dtype (DeepSpeed does not cast them)."""

    def __init__(self, engine, dtype: torch.dtype):
        super().__init__()
        self.engine, self.dtype = engine, dtype

    def forward(self, source: torch.Tensor, *args, **kwargs):
        return self.engine(source.to(self.dtype), *args, **kwargs)


class DeepSpeedBackend:
    def __init__(
        self,
        cfg: TrainConfig,
        env: DistEnv,
        objective: Objective,
        resume_world_size: int | None,
        initial_weights: Weights | None = None,
        lr_multiplier: Callable[[int], float] | None = None,
    ):
        self.cfg, self.env = cfg, env
        self.universal = resume_world_size is not None and resume_world_size != env.world_size
        model = self.model = objective.build_model(init_seed=cfg.seed).to(env.device)
        if initial_weights is not None:  # before ZeRO partitions the parameters
            load_initial_weights(model, initial_weights, full_state_dict=False)
        apply_activation_checkpointing(model, cfg.distributed)
        self.optimizer = build_optimizer(model.parameters(), cfg.optim)
        scheduler = build_scheduler(self.optimizer, cfg.optim, lr_multiplier)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=self.optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(cfg, env.world_size, self.universal),
            dist_init_required=False,
        )
        self.module = _CastInputs(self.engine, PRECISION_DTYPES[cfg.distributed.precision])

    def loss_multiplier(self) -> float:
        return float(self.cfg.optim.update_freq)  # the engine divides each micro-batch loss by it

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine knows the accumulation boundary itself

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine holds the parameters in the training precision

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # advances the micro-step counter only

    def update(self, loss_sum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # DeepSpeed computes the gradient norm inside its step, so the skip rule looks at the loss;
        # fp16 gradient overflow is caught by DeepSpeed's own loss scaler.
        found_inf = any_rank(~torch.isfinite(loss_sum), self.env.world_size)
        self.optimizer.pending_skip = found_inf
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return found_inf, torch.as_tensor(0.0 if norm is None else norm, device=self.env.device).float()

    def lr(self) -> float:
        return self.engine.get_lr()[0]

    def loss_scale(self) -> float:
        return float(getattr(self.engine.optimizer, "cur_scale", 1.0))

    def save(self, directory: Path, asynchronous: bool) -> None:
        self.engine.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)
        return None  # DeepSpeed writes synchronously

    def load(self, directory: Path) -> None:
        tag = directory.name
        if self.universal:
            if self.env.is_main and not (directory / UNIVERSAL_DIR).is_dir():
                convert_to_universal(directory)
            dist.barrier()
            directory, tag = directory / UNIVERSAL_DIR, UNIVERSAL_DIR
        loaded, _ = self.engine.load_checkpoint(str(directory.parent), tag=tag)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {directory}")

    def state_dict(self) -> dict[str, Any]:
        return {}  # DeepSpeed saves its scheduler and loss scaler in its own files

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Tear the engine down (its ZeRO-3 hooks and partitioned buffers) while the process group
        still exists, instead of leaving it to interpreter exit, and let go of what DeepSpeed's
        module state keeps of it, so that `shutdown()` destroys the process groups for real."""
        self.engine.destroy()
        release_module_state(self.model)


def release_module_state(model: nn.Module) -> None:
    """Drop what DeepSpeed's module-level state keeps of this job's model and process groups.

    Each of these keeps a process group, and so its gloo threads, alive into interpreter exit, where
    they can abort the process (see `xlsr.engine.distributed.shutdown`); seen with DeepSpeed 0.19:

    - ZeRO-3 pushes the top module onto ``parameter_offload.FWD_MODULE_STACK`` when the engine is
      built and never pops it: the model, its hooks, the engine, the optimizer and the group that
      every partitioned parameter holds stay reachable;
    - ``PartitionedParameterCoordinator.__params_to_release`` is memoized on the class with
      ``functools.lru_cache``, whose keys hold the coordinator and the model's modules;
    - ``deepspeed.utils.groups`` caches the groups it creates (a clone of the world group, expert,
      data and model parallel groups) in module globals;
    - ``TorchBackend.barrier`` and ``monitored_barrier`` take the default group as a default
      argument, evaluated when ``deepspeed.comm`` was imported (after ``init_process_group``); None
      means the same there, the current default group.

    Modules not imported hold nothing; a DeepSpeed without one of these simply has nothing to drop.
    """
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    stack = getattr(offload, "FWD_MODULE_STACK", None)
    if stack is not None:
        stack[:] = [module for module in stack if module is not model]
    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    cls = getattr(coordinator, "PartitionedParameterCoordinator", None)
    memoized = vars(cls).get("_PartitionedParameterCoordinator__params_to_release") if cls else None
    for cell in getattr(memoized, "__closure__", None) or ():  # the lru_cache, under an NVTX wrapper
        cache_clear = getattr(cell.cell_contents, "cache_clear", None)
        if cache_clear is not None:
            cache_clear()
    groups = sys.modules.get("deepspeed.utils.groups")
    for name, value in list(vars(groups).items()) if groups else ():
        if isinstance(value, dist.ProcessGroup):
            setattr(groups, name, None)
        elif isinstance(value, dict) and any(isinstance(v, dist.ProcessGroup) for v in value.values()):
            value.clear()
    comm = sys.modules.get("deepspeed.comm.torch")
    for method in vars(comm.TorchBackend).values() if comm else ():
        defaults = getattr(method, "__defaults__", None)
        if defaults and any(isinstance(d, dist.ProcessGroup) for d in defaults):
            method.__defaults__ = tuple(None if isinstance(d, dist.ProcessGroup) else d for d in defaults)


def convert_to_universal(directory: Path) -> None:
    """DeepSpeed's offline conversion that lets ZeRO state load on another world size."""
    output = directory / UNIVERSAL_DIR
    tmp = output.with_name(output.name + ".tmp")
    subprocess.run(
        [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(directory),
         "--output_folder", str(tmp), "--inject_missing_state"],
        check=True,
    )  # fmt: skip
    tmp.rename(output)
