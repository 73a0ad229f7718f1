"""`make_plan`: a config and an allocation → memory, speed, data, loader and checkpoint figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from xlsr.config import SAMPLE_RATE, TrainConfig, for_world_size
from xlsr.hardware import CONTEXT_GIB, GpuSpec, gpu_of_device_name, gpu_spec
from xlsr.objectives import build_objective
from xlsr.plan.data import DataPlan, plan_data, read_train_shards, with_run_totals
from xlsr.plan.errors import PlanError
from xlsr.plan.loader import DecodeRate, LoaderPlan, default_decode_rate, measure_decode_rate, plan_loader
from xlsr.plan.memory import (
    ALLOCATOR_HEADROOM,
    MemoryEstimate,
    ParameterCounts,
    Ranks,
    estimate_memory,
    largest_fitting_crops,
    total_by_checkpointing,
)
from xlsr.plan.request import DEFAULT_GPU, DEFAULT_MFU, PlanRequest
from xlsr.plan.speed import Mfu, SpeedPlan, measured_mfu, plan_speed
from xlsr.plan.suggest import memory_suggestions

# Bytes per parameter in a checkpoint: fp32 weights and Adam's two moments (DeepSpeed adds its
# 16-bit weights).
CHECKPOINT_BYTES_PER_PARAMETER = {"ddp": 12, "fsdp": 12, "deepspeed": 14}


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
    gpu = _gpu(request, cfg)
    nodes = request.nodes or math.ceil(request.gpus / max(cfg.launcher.gpus_per_node, 1))
    ranks = Ranks(request.gpus, max(request.gpus // nodes, 1))
    cfg = for_world_size(cfg, request.gpus)
    objective = build_objective(cfg)
    counts = ParameterCounts.of(objective)
    memory = estimate_memory(cfg, ranks, "cuda", counts=counts)
    fits = memory.device_total <= gpu.memory_bytes
    data = plan_data(cfg.data, read_train_shards(cfg.data))
    checkpoint = _checkpoint_plan(cfg, counts, request)
    speed = plan_speed(
        objective.flops_per_crop, cfg.data.max_sample_size, data.batch.mean_crop_seconds * SAMPLE_RATE,
        data.batch.crops * request.gpus * cfg.optim.update_freq, request.gpus, gpu.peak_flops,
        _mfu(request, counts, cfg), cfg.last_update, checkpoint.saves * checkpoint.save_seconds / 3600,
    )  # fmt: skip
    data = with_run_totals(data, speed.audio_seconds_per_update * speed.updates / 3600)
    decode = _decode_rate(cfg, data, request)
    loader = plan_loader(
        speed.audio_seconds_per_update / speed.time_per_update_s / request.gpus, ranks.per_node, decode,
        data.bytes_per_stored_second, data.batch.stored_per_visible, cfg.data.num_workers,
    )  # fmt: skip
    return Plan(
        cfg, request, gpu, nodes, counts, memory, total_by_checkpointing(cfg, ranks, counts),
        largest_fitting_crops(cfg, ranks, gpu.memory_bytes, counts),
        () if fits else memory_suggestions(cfg, ranks, gpu, counts), speed, data, loader, checkpoint,
        _assumptions(request, cfg, data, decode.source, speed.mfu),
    )  # fmt: skip


def plan_of_run(cfg: TrainConfig, world_size: int, ranks_per_node: int, device_name: str | None) -> Plan:
    """The plan of a starting run: its ranks, and its GPU as the driver names it (else
    ``launcher.gpu``); the loader's decode rate is the default (no benchmark inside training)."""
    known = gpu_of_device_name(device_name) if device_name else None
    nodes = max(world_size // max(ranks_per_node, 1), 1)
    request = PlanRequest(world_size, nodes, known.key if known else None, decode_seconds=0)
    return make_plan(cfg, request)


def _decode_rate(cfg: TrainConfig, data: DataPlan, request: PlanRequest) -> DecodeRate:
    if request.decode_seconds > 0:
        return measure_decode_rate(
            cfg.data, data.shards, request.decode_seconds, data.batch.stored_per_visible
        )
    return default_decode_rate(cfg.data, data.batch.stored_per_visible)


def _check_request(request: PlanRequest) -> None:
    if request.gpus < 1:
        raise PlanError(f"--gpus must be at least 1, got {request.gpus}")
    if request.nodes is not None and request.nodes < 1:
        raise PlanError(f"--nodes must be at least 1, got {request.nodes}")
    if request.nodes is not None and request.gpus % request.nodes:
        raise PlanError(f"--nodes {request.nodes} must divide --gpus {request.gpus} (equal GPUs per node)")
    if request.mfu is not None and not 0 < request.mfu <= 1:
        raise PlanError(f"--mfu must lie in (0, 1], got {request.mfu}")
    if request.storage_gbps <= 0:
        raise PlanError(f"--storage-gbps must be positive, got {request.storage_gbps}")


def _gpu(request: PlanRequest, cfg: TrainConfig) -> GpuSpec:
    try:
        return gpu_spec(request.gpu or cfg.launcher.gpu or DEFAULT_GPU)
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
    saves = math.ceil(cfg.last_update / max(cfg.checkpoint.interval_updates, 1))  # and the last update
    return CheckpointPlan(size, size / (request.storage_gbps * 1e9), saves)


def _assumptions(
    request: PlanRequest, cfg: TrainConfig, data: DataPlan, decode_source: str, mfu: Mfu
) -> tuple[str, ...]:
    if request.gpu:
        card = request.gpu
    elif cfg.launcher.gpu:
        card = f"{cfg.launcher.gpu} (launcher.gpu)"
    else:
        card = f"{DEFAULT_GPU} (default; pass --gpu or set launcher.gpu)"
    lines = [
        f"GPU: {card}",
        f"MFU {mfu.value:.0%}: {mfu.source}",
        "memory: the fullest micro-batch of the bucket that needs the most (data.max_tokens // edge crops); "
        f"{ALLOCATOR_HEADROOM:.0%} allocator headroom and {CONTEXT_GIB:g} GiB of CUDA context and NCCL added",
        f"decode rate: {decode_source}",
        f"storage: {request.storage_gbps:g} GB/s to write checkpoints; shard bytes from {data.bytes_source}",
    ]
    if not data.batch.from_index:
        lines.append("data: no data.train given, so every utterance is taken as one full crop")
    return tuple(lines)
