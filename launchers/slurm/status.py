"""`xlsr launch status RUN_DIR` on the login node: the job's state, the last metrics, where the logs are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from launchers.slurm.cluster import JobInfo, LaunchError, job_info
from launchers.slurm.rundir import JOB_ID_FILE, log_dir, read_job_id

UNKNOWN_STATE = "unknown to SLURM (finished long ago, or no SLURM here)"


@dataclasses.dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    job_id: str
    job: JobInfo | None  # None: SLURM does not know the job (any more)
    last_metrics: dict[str, Any] | None  # the last record of metrics.jsonl
    summary: dict[str, Any] | None  # summary.json, written when a start ends


def run_status(run_dir: Path) -> RunStatus:
    """The status of the run directory's last job. Raises LaunchError if none was submitted."""
    run_dir = run_dir.resolve()
    job_id = read_job_id(run_dir)
    if job_id is None:
        raise LaunchError(f"no {JOB_ID_FILE} in {run_dir}")
    summary = run_dir / "summary.json"
    return RunStatus(
        run_dir=run_dir,
        job_id=job_id,
        job=job_info(job_id),
        last_metrics=_last_record(run_dir / "metrics.jsonl"),
        summary=json.loads(summary.read_text()) if summary.is_file() else None,
    )


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete line of a JSONL file that rank 0 may be appending to right now."""
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def status_text(status: RunStatus) -> str:
    state = (status.job.state if status.job else None) or UNKNOWN_STATE
    restarts = status.job.restarts if status.job else None
    requeued = f", requeued {restarts} time(s)" if restarts is not None else ""
    lines = [f"job {status.job_id}: {state}{requeued}"]
    if status.last_metrics is not None:
        last = status.last_metrics
        lines.append(f"last metrics: update {last['step']}, loss {last['loss']:.4f}")
    if status.summary is not None:
        done = status.summary
        lines.append(
            f"summary: {done.get('status')} at update {done.get('step')}, checkpoint {done.get('checkpoint')}"
        )
    lines.append(paths_text(status.run_dir, status.job_id))
    return "\n".join(lines)


def paths_text(run_dir: Path, job_id: str, world_size: int | None = None) -> str:
    """Where a job's logs, metrics and checkpoints are, and how to follow and stop it."""
    logs = log_dir(run_dir)
    ranks = f"0..{world_size - 1}" if world_size else "RANK"
    return "\n".join(
        [
            f"run dir:   {run_dir}",
            f"logs:      {logs}/{job_id}_0_log.out (rank 0: update lines), {job_id}_0_log.err (log)",
            f"           {logs}/{job_id}_<rank>_log.{{out,err}} for ranks {ranks}",
            f"metrics:   {run_dir}/metrics.jsonl   checkpoints: {run_dir}/checkpoints/",
            f"follow:    squeue -j {job_id}    tail -f {logs}/{job_id}_0_log.out",
            f"status:    xlsr launch status {run_dir}",
            f"stop:      scancel {job_id}   (saves a checkpoint; submit the same command again to continue)",
        ]
    )
