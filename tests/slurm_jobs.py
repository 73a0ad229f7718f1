"""The SLURM tests' shared cluster and job helpers: submit as a user does, wait, read logs and metrics.

The cluster itself comes from the fixtures of tests/slurm_fixtures.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from slurm_cluster import LocalSlurmCluster

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
COMPARED = ("loss", "loss_contrastive", "accuracy", "prob_perplexity", "code_perplexity", "lr")
# 1 CPU per task: a node of the test cluster offers the machine's 2 cores.
CPU_TASKS = ["--gpus-per-node", "0", "--cpus-per-task", "1", "--time", "20"]
ONE_NODE_TWO_TASKS = ["--nodes", "1", "--tasks-per-node", "2"]
TWO_NODES_ONE_TASK = ["--nodes", "2", "--tasks-per-node", "1"]


def train_overrides(index: Path, run_dir: Path, *extra: str) -> list[str]:
    """The tiny config for 20 updates, metrics on every update, a checkpoint every 5."""
    return [
        f"run_dir={run_dir}",
        f"data.train=[{index}]",
        "optim.max_update=20",
        "logging.interval=1",
        "logging.progress=false",
        "checkpoint.interval_updates=5",
        "distributed.timeout_s=30",
        *extra,
    ]


def run_xlsr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xlsr", *args]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def submit(env: dict[str, str], *args: str) -> str:
    """`xlsr launch slurm --config configs/tiny.yaml <CPU tasks> ARGS`; returns the job id."""
    result = run_xlsr(env, "launch", "slurm", "--config", "configs/tiny.yaml", *CPU_TASKS, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"submitted job (\d+)", result.stdout)
    assert match, result.stdout
    return match[1]


def scontrol_job(env: dict[str, str], job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(condition, timeout_s: float, what: str, detail=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}\n{detail()}")
        time.sleep(0.25)


def logs(run_dir: Path, job_id: str, rank: int = 0) -> str:
    parts = []
    for suffix in ("out", "err"):
        path = run_dir / "submitit" / f"{job_id}_{rank}_log.{suffix}"
        parts.append(path.read_text(errors="replace") if path.exists() else f"({path} missing)")
    return "\n".join(parts)


def wait_finished(env, job_id: str, run_dir: Path, timeout_s: float = 240) -> dict[str, str]:
    wait_for(
        lambda: scontrol_job(env, job_id).get("JobState") in TERMINAL,
        timeout_s,
        f"job {job_id} to end",
        lambda: f"{scontrol_job(env, job_id)}\n{logs(run_dir, job_id)[-3000:]}",
    )
    return scontrol_job(env, job_id)


def run_job(env, run_dir: Path, *args: str) -> tuple[str, dict[str, str]]:
    """Submit, wait for the end; returns the job id and SLURM's final view of the job."""
    job_id = submit(env, *args)
    return job_id, wait_finished(env, job_id, run_dir)


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def wait_step(run_dir: Path, job_id: str, step: int) -> None:
    wait_for(lambda: last_step(run_dir) >= step, 180, f"update {step}", lambda: logs(run_dir, job_id))


def release_requeued(env, job_id: str, run_dir: Path) -> None:
    """A requeued job waits ~2 minutes (BeginTime); make it eligible now, as a free node would.

    Not in the second of the requeue: slurmd still revokes the job's old credential then, and a
    relaunch in that second fails ("Job credential revoked")."""
    wait_for(
        lambda: scontrol_job(env, job_id).get("JobState") == "PENDING",
        120,
        f"job {job_id} to be requeued",
        lambda: f"{scontrol_job(env, job_id)}\n{logs(run_dir, job_id)[-3000:]}",
    )
    time.sleep(1.5)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env=env, check=True)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def compared(records: list[dict], keys=COMPARED) -> list[dict]:
    return [{"step": r["step"], **{key: r[key] for key in keys}} for r in records]


def resumed_from(text: str) -> list[tuple[int, int]]:
    """(checkpoint step, update) of every 'resumed from' line of a log."""
    return [(int(a), int(b)) for a, b in re.findall(r"resumed from \S+/step-(\d+) at update (\d+)", text)]


def task_pids(cluster: LocalSlurmCluster, node: str, run_dir: Path) -> list[int]:
    """The training task(s) of ``run_dir`` on ``node``: children of slurmstepd running submitit."""
    pids = []
    for pid in cluster.pids_in(node):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            parent = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1]
            parent_name = Path(f"/proc/{parent}/comm").read_text().strip()
        except OSError:
            continue
        if parent_name == "slurmstepd" and "submitit.core._submit" in cmdline and str(run_dir) in cmdline:
            pids.append(pid)
    return pids
