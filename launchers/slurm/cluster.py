"""Questions to the SLURM controller (sinfo, scontrol), from the login node and from inside a job.

Every query tolerates a missing or silent controller: it answers None, and the caller decides
whether that is an error (submitting) or only a note (a dry run, a status report, a requeue).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import subprocess

from launchers.slurm.resources import SINFO_FORMAT, Partition, Request, impossible_request, parse_partitions
from xlsr.process import UserError

# A job in one of these states may still write to its run directory.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
    }
)


class LaunchError(UserError):
    """A problem found before anything was submitted (or a submission SLURM refused)."""


@dataclasses.dataclass(frozen=True)
class JobInfo:
    """What `scontrol show job` says about a job."""

    state: str | None
    restarts: int | None
    reason: str | None = None  # why it is pending (Resources, Priority, PartitionConfig, ...)


def run_slurm_command(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """Run a SLURM client command; None when it is not installed or does not answer."""
    if shutil.which(cmd[0]) is None:
        return None
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        return None  # SLURM's clients would retry reading it for 60 s before failing
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def cluster_partitions() -> dict[str, Partition] | None:
    """Every partition with its nodes and limits (None when sinfo is missing or the controller does
    not answer)."""
    result = run_slurm_command(["sinfo", "-h", "-N", "-o", SINFO_FORMAT])
    if result is None or result.returncode != 0:
        return None
    return parse_partitions(result.stdout)


def check_request(partition: str | None, request: Request | None, dry_run: bool) -> str | None:
    """Raise LaunchError for an unknown partition, or a request its nodes and limits can never run
    (``request`` None: check the partition only). Returns a note when SLURM could not be asked."""
    partitions = cluster_partitions()
    if partitions is None:
        if not dry_run:
            raise LaunchError(
                "cannot reach SLURM (`sinfo` is missing or fails): is this a login node, and is "
                "SLURM_CONF right? Use --dry-run to only print the job, or `xlsr launch local` here."
            )
        return "partition and resources not checked: sinfo is not available here"
    if partition is not None and partition not in partitions:
        names = sorted(partitions)
        close = difflib.get_close_matches(partition, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LaunchError(
            f"unknown partition '{partition}'{hint}; partitions on this cluster: {', '.join(names)}"
        )
    chosen = partitions.get(partition) if partition else _default(partitions)
    problem = impossible_request(request, chosen) if request and chosen else None
    if problem:
        raise LaunchError(f"{problem}; SLURM would leave the job pending forever")
    return None


def _default(partitions: dict[str, Partition]) -> Partition | None:
    return next((p for p in partitions.values() if p.default), None)


def job_info(job_id: str) -> JobInfo | None:
    """SLURM's view of a job, or None when SLURM does not know it (forgotten, or no SLURM here)."""
    result = run_slurm_command(["scontrol", "show", "job", "-o", str(job_id)])
    if result is None or result.returncode != 0:
        return None
    state = re.search(r"\bJobState=(\S+)", result.stdout)
    restarts = re.search(r"\bRestarts=(\d+)", result.stdout)
    reason = re.search(r"\bReason=(\S+)", result.stdout)
    return JobInfo(
        state[1] if state else None,
        int(restarts[1]) if restarts else None,
        reason[1] if reason and reason[1] != "None" else None,
    )


def job_state(job_id: str) -> str | None:
    """RUNNING, PENDING, COMPLETING, ... or None if unknown."""
    info = job_info(job_id)
    return info.state if info else None


def requeue_job(job_id: str) -> str | None:
    """`scontrol requeue JOB`; returns why it failed, or None on success."""
    result = run_slurm_command(["scontrol", "requeue", job_id], timeout=60)
    if result is None:
        return "scontrol not found"
    if result.returncode != 0:
        return result.stderr.strip() or f"exit code {result.returncode}"
    return None
