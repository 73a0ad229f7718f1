"""Process-group setup from torchrun/submitit-style environment variables, and teardown."""

from __future__ import annotations

import datetime
import gc
import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from xlsr.process import free_port

log = logging.getLogger(__name__)

# A GPU job's host-side group lives here, not in DistEnv: a DistEnv can outlive `shutdown()` in its
# caller's frame, and must not keep the group (and its threads) alive.
_cpu_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cpu_group(self) -> dist.ProcessGroup | None:
        """A gloo group for small host-side collectives (stop flags) that must not sync the GPU
        stream; None, the default group (itself gloo), on a CPU job."""
        return _cpu_group


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
    global _cpu_group
    _cpu_group = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else None
    return DistEnv(rank, world_size, local_rank, device)


def any_rank_host(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is true on any rank: a host-side collective, no GPU sync."""
    return any_rank_host_each([flag], env)[0]


def any_rank_host_each(flags: list[bool], env: DistEnv) -> list[bool]:
    """``any_rank_host`` for several flags in one collective."""
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags])
    if env.world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX, group=env.cpu_group)
    return [bool(value) for value in values.tolist()]


def any_rank(flag: torch.Tensor, world_size: int) -> torch.Tensor:
    """True on every rank if ``flag`` is true on any rank (stays on the device)."""
    if world_size == 1:
        return flag
    value = flag.float()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value > 0


def shutdown() -> None:
    """Destroy every process group and join its threads, while the interpreter is fully alive.

    `destroy_process_group()` only unregisters the groups; a gloo group's worker threads are joined
    when its last reference goes. A worker still running when the interpreter finalizes can drop
    the last reference to a finished collective's tensor then: freeing the tensor's Python object
    takes the GIL, the finalizing interpreter ends the thread inside a C++ destructor, and the
    process aborts ("terminate called without an active exception", SIGABRT) after a run that
    succeeded. So the groups' last references go here: the caller's backend ``close()`` has released
    what engines and libraries keep, and the reference cycles that still hold a group (models,
    optimizers, engines) are collected now. Groups still alive after that are reported (FSDP's
    DTensor state keeps its mesh's group alive, torch 2.11).
    """
    global _cpu_group
    _cpu_group = None
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    leaked = gloo_worker_threads()
    if leaked and sys.exc_info()[0] is None:  # an exception in flight keeps its frames' objects
        log.info(
            "%d gloo worker thread(s) outlive destroy_process_group(): a process group is still "
            "referenced (its threads are not joined, and the exit can abort)",
            leaked,
        )


def gloo_worker_threads() -> int:
    """Worker threads of live gloo process groups in this process (0 where /proc is missing)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "pt_gloo_runloop"
        except OSError:  # the thread ended meanwhile
            continue
    return count
