"""What would fit when a plan does not: each memory lever tried on its own."""

from __future__ import annotations

from xlsr.config import TrainConfig
from xlsr.hardware import GpuSpec
from xlsr.plan.memory import ParameterCounts, Ranks, estimate_memory, largest_fitting_crops, with_overrides

MAX_GPUS_TRIED = 4096


def memory_suggestions(
    cfg: TrainConfig, ranks: Ranks, gpu: GpuSpec, counts: ParameterCounts
) -> tuple[str, ...]:
    """One line per change that makes ``cfg`` fit on ``gpu`` (as dotted overrides where possible)."""
    capacity = gpu.memory_bytes
    suggestions = []
    for override, changed in _levers(cfg):
        if estimate_memory(changed, ranks, counts=counts).device_total <= capacity:
            largest = largest_fitting_crops(changed, ranks, capacity, counts)
            suggestions.append(f"{override} (up to {largest} crops per micro-batch)")
    largest = largest_fitting_crops(cfg, ranks, capacity, counts)
    if largest >= 1:
        tokens = largest * cfg.data.max_sample_size
        keep = " with optim.batch_tokens set, the effective batch stays" if cfg.optim.batch_tokens else ""
        suggestions.append(f"data.max_tokens={tokens} ({largest} crops per micro-batch{keep})")
    more = _gpus_that_fit(cfg, ranks, capacity, counts)
    if more is not None:
        suggestions.append(f"{more} GPUs or more (sharded state per GPU shrinks)")
    return tuple(suggestions)


def _levers(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    dist, levers = cfg.distributed, []
    for mode in ("layers", "layers+conv"):
        if dist.activation_checkpointing == "none" or (
            mode == "layers+conv" and dist.activation_checkpointing == "layers"
        ):
            changed = with_overrides(cfg, distributed={"activation_checkpointing": mode})
            levers.append((f"distributed.activation_checkpointing={mode}", changed))
    if dist.backend == "ddp":
        levers.append(("distributed.backend=fsdp", with_overrides(cfg, distributed={"backend": "fsdp"})))
    if dist.backend == "deepspeed" and dist.zero_stage < 3:
        levers.append(("distributed.zero_stage=3", with_overrides(cfg, distributed={"zero_stage": 3})))
    return levers


def _gpus_that_fit(cfg: TrainConfig, ranks: Ranks, capacity: float, counts: ParameterCounts) -> int | None:
    """The fewest GPUs (doubling, on nodes like these) on which ``cfg`` fits, when sharding helps."""
    if cfg.distributed.backend == "ddp":
        return None
    world = ranks.world * 2
    while world <= MAX_GPUS_TRIED:
        if estimate_memory(cfg, Ranks(world, ranks.per_node), counts=counts).device_total <= capacity:
            return world
        world *= 2
    return None
