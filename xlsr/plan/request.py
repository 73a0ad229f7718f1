"""What a plan is asked for, and its defaults (torch-free: the command line's parser reads them)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_GPU = "h100"
DEFAULT_MFU = 0.35  # the project's goal for 0.3B (docs/performance.md), not a measurement
DEFAULT_STORAGE_GBPS = 1.0  # sustained write rate of a shared filesystem to one job
DEFAULT_MAX_PASSES = 100.0


@dataclass(frozen=True)
class PlanRequest:
    """The allocation to plan for and the assumptions to use (`xlsr plan`'s flags)."""

    gpus: int
    nodes: int | None = None  # default: gpus / launcher.gpus_per_node, rounded up
    gpu: str | None = None  # a key of xlsr.hardware.GPUS; None: launcher.gpu, else DEFAULT_GPU (said so)
    measured: str | None = None  # gpu_check.json
    mfu: float | None = None
    decode_seconds: float = 3.0  # CPU seconds of decode benchmark over the shards (0: default rate)
    storage_gbps: float = DEFAULT_STORAGE_GBPS
    max_passes: float = DEFAULT_MAX_PASSES
