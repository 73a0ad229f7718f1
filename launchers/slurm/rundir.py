"""The run directory of a SLURM training run: what the login node writes and the job reads.

One run directory per run, reused by every requeue and resubmission::

    <run_dir>/config.yaml      resolved config (recipe + overrides + launcher flags); every rank reads it
    <run_dir>/slurm_job_id     the last submitted job id (`xlsr launch status` reads it)
    <run_dir>/submitit/<job>_<rank>_log.{out,err}   per-rank logs (appended to across requeues)
    <run_dir>/checkpoints/step-N/   <run_dir>/metrics.jsonl   <run_dir>/wandb_run_id   <run_dir>/wandb/
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from xlsr.fileio import atomic_write_text
from xlsr.run_dir import CONFIG_NAME

if TYPE_CHECKING:
    from xlsr.config import TrainConfig

JOB_ID_FILE = "slurm_job_id"
LOG_DIR = "submitit"  # submitit's folder: pickled task, results and the per-rank logs


def config_path(run_dir: Path) -> Path:
    return run_dir / CONFIG_NAME


def log_dir(run_dir: Path) -> Path:
    return run_dir / LOG_DIR


def read_saved_config(run_dir: Path) -> TrainConfig | None:
    """The config the run directory was last launched with; None for a new run directory.

    Raises ``ConfigError`` when the file exists but no longer loads."""
    from xlsr.config import load_config

    path = config_path(run_dir)
    return load_config(path) if path.is_file() else None


def save_run_config(cfg: TrainConfig, run_dir: Path) -> None:
    from xlsr.config import save_config

    save_config(cfg, config_path(run_dir))


def read_job_id(run_dir: Path) -> str | None:
    path = run_dir / JOB_ID_FILE
    return path.read_text().strip() if path.is_file() else None


def write_job_id(run_dir: Path, job_id: str) -> None:
    atomic_write_text(run_dir / JOB_ID_FILE, f"{job_id}\n")
