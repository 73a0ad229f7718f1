"""`xlsr launch status RUN_DIR` on the login node: the job's state, the last metrics, where the logs are."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from launchers.slurm.cluster import JobInfo, LaunchError, job_info
from launchers.slurm.rundir import JOB_ID_FILE, log_dir, read_job_id
from xlsr.run_dir import HISTORY_NAME, SUMMARY_NAME, read_json_object

UNKNOWN_STATE = "unknown to SLURM (finished long ago, or no SLURM here)"
# Pending reasons that only mean "wait": the job will start once nodes are free or its turn comes.
WAITING_REASONS = frozenset({"Resources", "Priority", "None"})
# What to change for the pending reasons a user can act on (SLURM's codes: man squeue, JOB REASON
# CODES). The job id is filled in for {job}.
OTHER_REASON = "see `scontrol show job {job}` and SLURM's JOB REASON CODES (man squeue)"
PENDING_ADVICE = {
    "PartitionConfig": "the request does not fit the partition's nodes or limits (CPUs, GPUs, memory, "
    "nodes, time): scancel {job} and submit with resources that `sinfo -N -o '%N %c %m %G %l'` shows",
    "PartitionNodeLimit": "more nodes than the partition allows: scancel {job} and submit with fewer "
    "--nodes or another --partition",
    "PartitionTimeLimit": "--time is above the partition's limit: scancel {job} and submit with a "
    "shorter --time or another --partition",
    "PartitionDown": "the partition is down: wait for the administrators, or scancel {job} and submit "
    "to another --partition",
    "PartitionInactive": "the partition is inactive: scancel {job} and submit to another --partition",
    "BadConstraints": "no node has the requested --constraint features: scancel {job} and submit with "
    "features that `sinfo -o '%N %f'` lists",
    "ReqNodeNotAvail": "nodes the job needs are down, drained or reserved: check --exclude/--constraint "
    "and `sinfo -R`; it starts when they return",
    "InvalidAccount": "the --account is not valid for you: scancel {job} and submit with another --account",
    "InvalidQOS": "the --qos is not valid for you: scancel {job} and submit with another --qos",
    "JobHeldUser": "held by a user: `scontrol release {job}` lets it start",
    "JobHeldAdmin": "held by an administrator: ask them to release it",
    "DependencyNeverSatisfied": "a job it depends on failed: scancel {job} and submit again",
    "Dependency": "waiting for the jobs it depends on to finish",
    "BeginTime": "waiting for its start time (a requeued job waits about 2 minutes before it may start)",
    "QOS": "a limit of the job's QOS (QOS*): ask for fewer resources or a shorter --time, or use another "
    "--qos",
    "Assoc": "a limit of your account (Assoc*): wait for your other jobs to end, or use another --account",
    "launch_failed_requeued_held": "it failed to start on a node and SLURM held it: read `scontrol show "
    "job {job}` and the slurmd log, then `scontrol release {job}`",
}


@dataclasses.dataclass(frozen=True)
class RunStatus:
    run_dir: Path
    job_id: str
    job: JobInfo | None  # None: SLURM does not know the job (any more)
    last_metrics: dict[str, Any] | None  # the last training record of metrics.jsonl
    summary: dict[str, Any] | None  # summary.json, written when a start ends


def run_status(run_dir: Path) -> RunStatus:
    """The status of the run directory's last job. Raises LaunchError if none was submitted."""
    run_dir = run_dir.resolve()
    job_id = read_job_id(run_dir)
    if job_id is None:
        raise LaunchError(f"no {JOB_ID_FILE} in {run_dir}")
    return RunStatus(
        run_dir=run_dir,
        job_id=job_id,
        job=job_info(job_id),
        last_metrics=_last_record(run_dir / HISTORY_NAME),
        summary=read_json_object(run_dir / SUMMARY_NAME),
    )


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete training line (not a validation or health one) of metrics.jsonl, which rank
    0 may be appending to right now."""
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "kind" not in record:
            return record
    return None


def status_text(status: RunStatus) -> str:
    state = (status.job.state if status.job else None) or UNKNOWN_STATE
    restarts = status.job.restarts if status.job else None
    requeued = f", requeued {restarts} time(s)" if restarts is not None else ""
    lines = [f"job {status.job_id}: {state}{requeued}"]
    if status.job is not None and state == "PENDING" and status.job.reason not in WAITING_REASONS:
        lines.append(pending_text(status.job_id, status.job.reason))
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


def pending_text(job_id: str, reason: str | None) -> str:
    """SLURM's reason for a pending job that may never start by itself, and what to change."""
    reason = reason or "unknown"
    key = reason.split(",")[0]  # 'ReqNodeNotAvail,_UnavailableNodes:node2'
    key = next((family for family in ("QOS", "Assoc") if key.startswith(family)), key)
    advice = PENDING_ADVICE.get(key, OTHER_REASON)
    return f"pending: Reason={reason}: {advice.format(job=job_id)}"


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
