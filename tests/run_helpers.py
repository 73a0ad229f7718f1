"""Running `xlsr` as a user does, from tests: the command, a tiny training config, the run's history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# Metrics that depend on the data, the model and the optimizer only (not on timing or memory).
TRAINING_KEYS = (
    "loss",
    "loss_contrastive",
    "accuracy",
    "prob_perplexity",
    "code_perplexity",
    "grad_norm",
    "lr",
    "masked_frames_per_update",
    "crops_per_update",
)


def xlsr(
    *args: str, timeout: float = 900, env: dict[str, str] = ENV, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xlsr", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


def train_args(index: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        "--config",
        "configs/tiny.yaml",
        f"run_dir={run_dir}",
        f"data.train=[{index}]",
        "logging.interval=5",
        "logging.wandb_mode=disabled",
        "logging.progress=false",
        *overrides,
    ]


def metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The run's training lines of metrics.jsonl, or its validation lines with ``kind="valid"``."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line.get("kind") == kind]


def training_metrics(run_dir: Path) -> list[dict]:
    return [{key: line[key] for key in ("step", *TRAINING_KEYS)} for line in metrics(run_dir)]
