"""`make_plan`: a config and an allocation → memory, speed, data, loader and checkpoint figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xlsr.config import SAMPLE_RATE, TrainConfig, for_world_size
from xlsr.hardware import CONTEXT_GIB, GpuSpec, gpu_of_device_name, gpu_spec
from xlsr.objectives import build_objective
from xlsr.plan.data import DataPlan, plan_data, read_train_shards, with_run_totals
from xlsr.plan.errors import PlanError
from xlsr.plan.loader import LoaderPlan, default_decode_rate, measure_decode_rate, plan_loader
from xlsr.plan.memory import (
    ALLOCATOR_HEADROOM,
    MemoryEstimate,
    ParameterCounts,
    estimate_memory,
    largest_fitting_crops,
    total_by_checkpointing,
)
from xlsr.plan.speed import DEFAULT_MFU, Mfu, SpeedPlan, measured_mfu, plan_speed
from xlsr.plan.suggest import memory_suggestions

DEFAULT_GPU = "h100"
DEFAULT_STORAGE_GBPS = 1.0  # sustained write rate of a shared filesystem to one job
DEFAULT_MAX_PASSES = 100.0
# Bytes per parameter in a checkpoint: fp32 weights and Adam's two moments (DeepSpeed adds its
# 16-bit weights).
CHECKPOINT_BYTES_PER_PARAMETER = {"ddp": 12, "fsdp": 12, "deepspeed": 14}


@dataclass(frozen=True)
class PlanRequest:
    """The allocation to plan for and the assumptions to use (`xlsr plan`'s flags)."""

    gpus: int
    nodes: int | None = None  # default: gpus / launcher.gpus_per_node, rounded up
    gpu: str | None = None  # a key of xlsr.hardware.GPUS; None: DEFAULT_GPU, said so
    measured: str | None = None  # gpu_check.json
    mfu: float | None = None
    decode_seconds: float = 3.0  # CPU seconds of decode benchmark over the shards (0: default rate)
    storage_gbps: float = DEFAULT_STORAGE_GBPS
    max_passes: float = DEFAULT_MAX_PASSES


@dataclass(frozen=True)
class CheckpointPlan:
    size_bytes: float
    save_seconds: float
    saves: int


@dataclass(frozen=True)
class Plan:
    cfg: TrainConfig  # with update_freq for the world size
    request: PlanRequest
    gpu: GpuSpec
    nodes: int
    counts: ParameterCounts
    memory: MemoryEstimate
    memory_by_checkpointing: dict[str, float]  # bytes per GPU for each activation checkpointing mode
    largest_crops: int
    suggestions: tuple[str, ...]
    speed: SpeedPlan
    data: DataPlan
    loader: LoaderPlan
    checkpoint: CheckpointPlan
    assumptions: tuple[str, ...] = field(default=())

    @property
    def world_size(self) -> int:
        return self.request.gpus

    @property
    def fits(self) -> bool:
        return self.memory.device_total <= self.gpu.memory_bytes

    @property
    def repeated_streams(self) -> list:
        return [s for s in self.data.streams if s.passes > self.request.max_passes]


def make_plan(cfg: TrainConfig, request: PlanRequest) -> Plan:
    """Plan ``cfg`` on ``request.gpus`` GPUs. Raises PlanError (one line) for impossible requests."""
    _check_request(request)
    gpu = _gpu(request)
    nodes = request.nodes or math.ceil(request.gpus / max(cfg.launcher.gpus_per_node, 1))
    cfg = for_world_size(cfg, request.gpus)
    objective = build_objective(cfg)
    counts = ParameterCounts.of(objective)
    memory = estimate_memory(cfg, request.gpus, "cuda", counts=counts)
    by_checkpointing = total_by_checkpointing(cfg, request.gpus, counts)
    largest = largest_fitting_crops(cfg, request.gpus, gpu.memory_bytes, counts)
    data = plan_data(cfg.data, read_train_shards(cfg.data))
    crops_per_update = data.batch.crops * request.gpus * cfg.optim.update_freq
    checkpoint = _checkpoint_plan(cfg, counts, request)
    speed = plan_speed(
        objective.flops_per_crop, cfg.data.max_sample_size, data.batch.mean_crop_seconds * SAMPLE_RATE,
        crops_per_update, request.gpus, gpu.peak_flops, _mfu(request, counts, cfg), cfg.last_update,
        checkpoint.saves * checkpoint.save_seconds / 3600,
    )  # fmt: skip
    data = with_run_totals(data, speed.audio_seconds_per_update * speed.updates / 3600)
    decode = (
        measure_decode_rate(cfg.data, data.shards, request.decode_seconds)
        if request.decode_seconds > 0 else default_decode_rate(cfg.data)
    )  # fmt: skip
    loader = plan_loader(
        cfg.data, speed.audio_seconds_per_update / speed.time_per_update_s / request.gpus,
        request.gpus // nodes, decode, data.bytes_per_stored_second, data.batch.stored_per_visible,
    )  # fmt: skip
    suggestions = (
        () if memory.device_total <= gpu.memory_bytes else memory_suggestions(cfg, request.gpus, gpu, counts)
    )
    assumptions = _assumptions(request, data, decode.source, speed.mfu)
    return Plan(
        cfg, request, gpu, nodes, counts, memory, by_checkpointing, largest, suggestions, speed, data, loader,
        checkpoint, assumptions,
    )  # fmt: skip


def plan_of_run(cfg: TrainConfig, world_size: int, device_name: str | None) -> Plan:
    """The plan of a starting run: its world size, and its GPU as the driver names it (else
    ``launcher.gpu``); the loader's decode rate is the default (no benchmark inside training)."""
    known = gpu_of_device_name(device_name) if device_name else None
    gpu = known.key if known else cfg.launcher.gpu
    return make_plan(cfg, PlanRequest(world_size, gpu=gpu, decode_seconds=0))


def _check_request(request: PlanRequest) -> None:
    if request.gpus < 1:
        raise PlanError(f"--gpus must be at least 1, got {request.gpus}")
    if request.nodes is not None and (request.nodes < 1 or request.gpus % request.nodes):
        raise PlanError(f"--nodes {request.nodes} must divide --gpus {request.gpus} (equal GPUs per node)")
    if request.mfu is not None and not 0 < request.mfu <= 1:
        raise PlanError(f"--mfu must lie in (0, 1], got {request.mfu}")
    if request.storage_gbps <= 0:
        raise PlanError(f"--storage-gbps must be positive, got {request.storage_gbps}")


def _gpu(request: PlanRequest) -> GpuSpec:
    try:
        return gpu_spec(request.gpu or DEFAULT_GPU)
    except ValueError as exc:
        raise PlanError(str(exc)) from None


def _mfu(request: PlanRequest, counts: ParameterCounts, cfg: TrainConfig) -> Mfu:
    if request.mfu is not None:
        return Mfu(request.mfu, "given (--mfu)")
    if request.measured:
        return measured_mfu(request.measured, counts.total, cfg.distributed.activation_checkpointing)
    return Mfu(DEFAULT_MFU, "default target, not measured (pass --measured gpu_check.json)")


def _checkpoint_plan(cfg: TrainConfig, counts: ParameterCounts, request: PlanRequest) -> CheckpointPlan:
    size = CHECKPOINT_BYTES_PER_PARAMETER[cfg.distributed.backend] * counts.total
    saves = cfg.last_update // max(cfg.checkpoint.interval_updates, 1)
    return CheckpointPlan(size, size / (request.storage_gbps * 1e9), saves)


def _assumptions(request: PlanRequest, data: DataPlan, decode_source: str, mfu: Mfu) -> tuple[str, ...]:
    lines = [
        f"GPU: {request.gpu or DEFAULT_GPU}{'' if request.gpu else ' (default; pass --gpu)'}",
        f"MFU {mfu.value:.0%}: {mfu.source}",
        "memory: worst-case micro-batch of data.max_tokens // data.max_sample_size full crops; "
        f"{ALLOCATOR_HEADROOM:.0%} allocator headroom and {CONTEXT_GIB:g} GiB of CUDA context and NCCL added",
        f"decode rate: {decode_source}",
        f"storage: {request.storage_gbps:g} GB/s to write checkpoints; shard bytes from {data.bytes_source}",
    ]
    if not data.batch.from_index:
        lines.append("data: no data.train given, so every utterance is taken as one full crop")
    return tuple(lines)
