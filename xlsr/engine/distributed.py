"""Process-group setup from torchrun/submitit-style environment variables."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xlsr.process import free_port


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    # A gloo group for small host-side collectives (stop flags) that must not sync the GPU stream.
    cpu_group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _gpu_index(local_rank: int) -> int:
    """This process's GPU: LOCAL_RANK among the node's GPUs, or the only one visible when the scheduler
    binds one GPU per task (e.g. SLURM's --gpus-per-task=1 / --gpu-bind)."""
    count = torch.cuda.device_count()
    if local_rank < count:
        return local_rank
    if count == 1:
        return 0
    raise RuntimeError(
        f"LOCAL_RANK={local_rank} but this process sees {count} GPUs (CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): give every task all the node's GPUs or one"
    )


def init_distributed(timeout_s: int) -> DistEnv:
    """Join the process group described by RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT.

    Without those variables this is a single-process run (world size 1) that still creates a
    process group, so every code path is the same.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()) if world_size == 1 else "29500")
    if torch.cuda.is_available():
        device = torch.device("cuda", _gpu_index(local_rank))
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else dist.group.WORLD
    return DistEnv(rank, world_size, local_rank, device, cpu_group)


def any_rank_host(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any rank: a host-side collective, no GPU sync."""
    value = torch.tensor([1.0 if flag else 0.0])
    if env.world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=env.cpu_group)
    return bool(value.item())


def any_rank(flag: torch.Tensor, world_size: int) -> torch.Tensor:
    """True on every rank if ``flag`` is true on any rank (stays on the device)."""
    if world_size == 1:
        return flag
    value = flag.float()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value > 0


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
