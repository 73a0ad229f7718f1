"""Time per update and for the whole run at a stated MFU (docs/planning.md, "Speed").

time per update = FLOPs per update / (GPUs × peak FLOP/s × MFU), FLOPs per update being the
objective's own training count (3 × forward) for the expected crops of an update. The MFU is the
one the GPU check measured for the nearest model size (``--measured gpu_check.json``), a given one
(``--mfu``), or ``xlsr.plan.request.DEFAULT_MFU``: a target, not a measurement.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from xlsr.config import SAMPLE_RATE
from xlsr.plan.errors import PlanError

# The GPU check's model names and their parameter counts (xlsr/config/presets.py).
CHECKED_MODELS = {"BASE": 95.0e6, "0.3B": 317.4e6, "1B": 965.5e6, "2B": 2162.9e6}


@dataclass(frozen=True)
class Mfu:
    value: float
    source: str


def measured_mfu(path: str | Path, parameters: int, checkpointing: str) -> Mfu:
    """The MFU the GPU check (``gpu_check.json``) measured for the measured model size nearest
    ``parameters``: its training part (same activation checkpointing preferred), else its model-speed
    part."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"--measured {path}: not a readable gpu_check.json ({exc})") from None
    if not isinstance(report, dict) or report.get("dry_run"):
        raise PlanError(f"--measured {path}: not a GPU check's report (or a --cpu-dry-run one)")
    training = [row for row in _rows(report, "training") if row.get("mfu")]
    speed = [row for row in _rows(report, "model_speed") if row.get("mfu") and row.get("contender") == "xlsr"]
    for rows, part in ((training, "training"), (speed, "model speed")):
        sizes = {row.get("model") for row in rows} & set(CHECKED_MODELS)
        if not sizes:
            continue
        # The nearest size measured: MFU changes slowly with the size, not at all with the data.
        name = min(sizes, key=lambda model: abs(math.log(CHECKED_MODELS[model] / parameters)))
        rows = [row for row in rows if row.get("model") == name]
        same = [row for row in rows if row.get("activation_checkpointing") == checkpointing] or rows
        best = max(same, key=lambda row: row["mfu"])
        detail = (
            f", activation checkpointing {best['activation_checkpointing']}" if part == "training" else ""
        )
        return Mfu(float(best["mfu"]), f"measured: {path}, {part} of {name}{detail}")
    raise PlanError(f"--measured {path}: no measured MFU in it (pass --mfu instead)")


def _rows(report: dict, part: str) -> list[dict]:
    """The rows of one part of a GPU check's report; anything malformed counts as no rows."""
    parts = report.get("parts")
    section = parts.get(part) if isinstance(parts, dict) else None
    rows = section.get("rows") if isinstance(section, dict) else None
    return [row for row in rows if isinstance(row, dict)] if isinstance(rows, list) else []


@dataclass(frozen=True)
class SpeedPlan:
    mfu: Mfu
    peak_flops_per_gpu: float
    flops_per_audio_second: float  # at the recipe's crop length
    flops_per_update: float
    audio_seconds_per_update: float
    time_per_update_s: float
    updates: int
    checkpoint_hours: float  # time spent saving, over the run

    @property
    def training_hours(self) -> float:
        return self.updates * self.time_per_update_s / 3600

    @property
    def wall_clock_hours(self) -> float:
        return self.training_hours + self.checkpoint_hours


def plan_speed(
    flops_per_crop,
    crop_samples: int,
    mean_crop_samples: float,
    crops_per_update: float,
    gpus: int,
    peak_flops: float,
    mfu: Mfu,
    updates: int,
    checkpoint_hours: float,
) -> SpeedPlan:
    flops_per_update = crops_per_update * flops_per_crop(round(mean_crop_samples))
    time_per_update = flops_per_update / (gpus * peak_flops * mfu.value)
    return SpeedPlan(
        mfu=mfu,
        peak_flops_per_gpu=peak_flops,
        flops_per_audio_second=flops_per_crop(crop_samples) / (crop_samples / SAMPLE_RATE),
        flops_per_update=flops_per_update,
        audio_seconds_per_update=crops_per_update * mean_crop_samples / SAMPLE_RATE,
        time_per_update_s=time_per_update,
        updates=updates,
        checkpoint_hours=checkpoint_hours,
    )
