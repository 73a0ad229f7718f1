"""Probe results in W&B: a linked "probes" run in the training run's group.

Probes finish after (and apart from) the updates they describe, often in another process or SLURM
job, while the training run is still being written: W&B does not let two processes write one run.
So each run directory gets one more run, id ``<training run id>-probes``, ``job_type="probe"``, in
the group named by the training run's id (the training run joins that group too), resumed by every
prober. Its charts run over the same ``update`` axis as training's. W&B is an observer: a failure
here is a warning, never a lost probe (the lines are in ``probes.jsonl`` already).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from xlsr.config import TrainConfig
from xlsr.run_dir import UPDATE_KEY, WANDB_ID_NAME

log = logging.getLogger("xlsr.probes")


def probe_values(record: dict[str, Any]) -> dict[str, float]:
    """``probe/<metric>``, its interval, baseline and per-language values, for one probes.jsonl line."""
    metric = record["metric"]
    values = {
        f"probe/{metric}": record["value"],
        f"probe/{metric}_low": record["interval"][0],
        f"probe/{metric}_high": record["interval"][1],
        f"probe/{metric}_audio_hours": record["audio_hours"],
    }
    if record.get("baseline") is not None:
        values[f"probe/{metric}_baseline"] = record["baseline"]
    for language, entry in record["per_language"].items():
        values[f"probe/{language}/{metric}"] = entry["value"]
    return values


def log_probes(cfg: TrainConfig, run_dir: Path, records: list[dict[str, Any]]) -> None:
    id_file = run_dir / WANDB_ID_NAME
    if cfg.logging.wandb_mode == "disabled" or not id_file.is_file():
        return
    try:
        import wandb

        run_id = id_file.read_text().strip()
        run = wandb.init(
            project=cfg.logging.wandb_project,
            entity=cfg.logging.wandb_entity,
            name=f"{cfg.logging.run_name or run_dir.name}-probes",
            id=f"{run_id}-probes",
            group=run_id,
            job_type="probe",
            resume="allow",
            dir=run_dir,
            mode=cfg.logging.wandb_mode,
            reinit="create_new",  # inline probes share a process with the training run
            settings=wandb.Settings(silent=True),
        )
        run.define_metric("*", step_metric=UPDATE_KEY)
        for record in sorted(records, key=lambda r: r["step"]):
            run.log({UPDATE_KEY: record["step"], **probe_values(record)})
        run.finish()
    except Exception as exc:
        log.warning("W&B: probe results not logged (%s); they are in probes.jsonl", exc)
