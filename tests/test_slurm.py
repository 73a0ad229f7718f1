"""`xlsr launch slurm` and `xlsr shard --slurm` against a real SLURM cluster, not a mock.

The session fixture starts slurmctld + slurmd (+ munged) on loopback with their config and state in
a temporary directory (tests/slurm_cluster.py) and stops them afterwards. Needs root and the Debian
packages `slurmctld slurmd slurm-client munge` (`make system-deps`); without them the cluster tests
fail with that instruction instead of being skipped. The first tests need no cluster: `--dry-run`
output and the checks that run before anything is submitted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from slurm_cluster import ClusterError, LocalSlurmCluster, missing_requirements

from launchers.slurm.cli import parse_mem_gb, parse_time
from launchers.slurm.job import requeue_decision, train_run_dir
from xlsr.cli import main as xlsr_main
from xlsr.config import load_config, to_dict

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
COMPARED = ("loss", "loss_contrastive", "accuracy", "prob_perplexity", "code_perplexity", "lr")
# 2 tasks of 1 CPU each: the whole 2-core machine of CI.
RESOURCES = ["--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "20"]


def train_overrides(index: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.train=[{index}]",
        "optim.max_update=30",
        "logging.interval=5",
        "logging.progress=false",
        "checkpoint.interval_updates=10",
        *extra,
    ]


# --------------------------------------------------------------------------------------------------
# Without a cluster: parsing, dry runs, validation


@pytest.fixture
def no_slurm(monkeypatch):
    """No reachable controller: sinfo fails, so partitions cannot be checked."""
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")


def test_time_and_memory_flags():
    assert [parse_time(t) for t in ("90", "1:30:00", "2-00:00:00", "1-12", "0:30", "10:30")] == [
        90,
        90,
        2880,
        2160,
        1,
        11,
    ]
    assert [parse_mem_gb(m) for m in ("64G", "500GB", "64", "1T")] == [64, 500, 64, 1024]
    with pytest.raises(Exception, match="bad time"):
        parse_time("3 days")


def test_requeue_decision():
    assert requeue_decision("RUNNING", 0, 3)[0]  # USR2 before the time limit: we requeue
    assert requeue_decision(None, 2, 3)[0]  # state unknown: requeue within the cap
    capped, why = requeue_decision("RUNNING", 3, 3)
    assert not capped and "max_requeues=3" in why and "submit the same command again" in why
    # scancel / scontrol requeue / preemption: SLURM is already ending the job, we do not interfere
    assert not requeue_decision("COMPLETING", 0, 3)[0]


def test_job_with_a_config_that_does_not_load_fails_in_one_line(tmp_path, caplog):
    """Inside the job: a missing or broken <run_dir>/config.yaml is one log line and exit code 2."""
    assert train_run_dir(tmp_path) == 2
    assert f"cannot train {tmp_path}: config file not found: {tmp_path}/config.yaml" in caplog.text
    caplog.clear()
    (tmp_path / "config.yaml").write_text("optim:\n  lrr: 1\n")
    assert train_run_dir(tmp_path) == 2
    (record,) = caplog.records
    assert "optim.lrr" in record.getMessage() and "\n" not in record.getMessage()
    assert record.exc_info is None  # no traceback


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(no_slurm, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = xlsr_main(
        [
            "launch",
            "slurm",
            "--config",
            "configs/tiny.yaml",
            f"run_dir={run_dir}",
            "optim.lr=1e-3",
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
            "--partition",
            "gpu",
            "--time",
            "3-00:00:00",
            "--mem",
            "500G",
            "--account",
            "speech",
            "--qos",
            "high",
            "--constraint",
            "h100",
            "--exclude",
            "node[01-02]",
            "--max-requeues",
            "5",
            "--sbatch",
            "gres=gpu:8",
            "--setup",
            "export NCCL_DEBUG=WARN",
            "--dry-run",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert not run_dir.exists()  # nothing written
    assert "partition not checked" in err
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=8",  # one task per GPU
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=10",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=4320",
        "#SBATCH --mem=500GB",
        "#SBATCH --account=speech",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --exclude='node[01-02]'",
        "#SBATCH --gres=gpu:8",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        f"#SBATCH --output={run_dir}/submitit/%j_0_log.out",
        "export NCCL_DEBUG=WARN",
        f"--output {run_dir}/submitit/%j_%t_log.out",
        f"-m submitit.core._submit {run_dir}/submitit",
    ):
        assert line in out, line
    assert "16 rank(s)" in out and "requeues at most 5" in out
    # the resolved config, flags included, is what the job would run
    assert "#   lr: 0.001" in out and "#   partition: gpu" in out and "#   max_requeues: 5" in out


def test_validation_errors_before_submitting(no_slurm, tmp_path, capsys):
    # a missing config file
    assert xlsr_main(["launch", "slurm", "--config", "configs/nope.yaml", "--dry-run"]) == 2
    assert "config file not found: configs/nope.yaml" in capsys.readouterr().err
    # a mistyped override
    assert xlsr_main(["launch", "slurm", "--config", "configs/tiny.yaml", "optim.lrr=1", "--dry-run"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    # not a dry run and no reachable SLURM: a clear error, nothing written
    run_dir = tmp_path / "run"
    assert xlsr_main(["launch", "slurm", "--config", "configs/tiny.yaml", f"run_dir={run_dir}"]) == 2
    assert "cannot reach SLURM" in capsys.readouterr().err and not run_dir.exists()


def test_refuses_a_run_directory_of_another_config(no_slurm, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    existing = load_config("configs/tiny.yaml", [f"run_dir={run_dir}", "optim.lr=1e-3"])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(existing)))
    base = ["launch", "slurm", "--config", "configs/tiny.yaml", "--dry-run"]
    # another learning rate: refused, with a diff
    assert xlsr_main([*base, f"run_dir={run_dir}", "optim.lr=5e-4"]) == 2
    err = capsys.readouterr().err
    assert "belongs to a different config" in err and "--allow-config-change" in err
    assert "-  lr: 0.001" in err and "+  lr: 0.0005" in err
    # ... unless asked
    assert xlsr_main([*base, f"run_dir={run_dir}", "optim.lr=5e-4", "--allow-config-change"]) == 0
    assert "changes (--allow-config-change)" in capsys.readouterr().err
    # the same run with other resources (more nodes, another time limit) is the same run
    same = [*base, f"run_dir={run_dir}", "optim.lr=1e-3", "--nodes", "4", "--time", "60"]
    assert xlsr_main(same) == 0
    assert "resources differ from the last launch" in (err := capsys.readouterr().err)
    assert "nodes: 1 -> 4" in err and "time_min: " in err


def test_shard_array_dry_run(no_slurm, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "en").mkdir(parents=True)
    out_dir = tmp_path / "shards"
    args = ["shard", str(corpus), str(out_dir), "--slurm", "--array", "4", "--workers", "2", "--dry-run"]
    assert xlsr_main(args) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-3%4" in out and "#SBATCH --cpus-per-task=2" in out
    assert "#SBATCH --dependency=afterok:ARRAY_JOB_ID" in out
    assert f"{out_dir}/submitit/%A_%a_0_log.out" in out and not out_dir.exists()
    assert xlsr_main(["shard", str(corpus), str(out_dir), "--slurm", "--array", "0", "--dry-run"]) == 2


# --------------------------------------------------------------------------------------------------
# A real cluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    problem = missing_requirements()
    if problem:
        pytest.fail(problem, pytrace=False)
    cluster = LocalSlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterError as exc:
        cluster.stop()
        pytest.fail(f"could not start the local SLURM cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def env(slurm) -> dict[str, str]:
    return {**slurm.env, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def run_xlsr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xlsr", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def submit(env: dict[str, str], *args: str) -> str:
    result = run_xlsr(env, "launch", "slurm", "--config", "configs/tiny.yaml", *RESOURCES, *args)
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
        time.sleep(0.5)


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


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def release_requeued(env, job_id: str, run_dir: Path) -> None:
    """A requeued job waits ~2 minutes (BeginTime); make it eligible now, as a free node would."""
    wait_for(
        lambda: scontrol_job(env, job_id).get("JobState") == "PENDING",
        120,
        f"job {job_id} to be requeued",
        lambda: f"{scontrol_job(env, job_id)}\n{logs(run_dir, job_id)[-3000:]}",
    )
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env=env, check=True)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(env, demo_index, tmp_path_factory) -> tuple[Path, str]:
    """Scenario 1's job: the tiny config on 2 tasks (gloo), W&B offline, never interrupted."""
    run_dir = tmp_path_factory.mktemp("slurm_runs") / "whole"
    job_id = submit(env, *train_overrides(demo_index, run_dir, "logging.wandb_mode=offline"))
    state = wait_finished(env, job_id, run_dir)
    assert state["JobState"] == "COMPLETED", logs(run_dir, job_id)
    return run_dir, job_id


def test_unknown_partition_is_refused_before_submitting(env, tmp_path):
    args = ["--config", "configs/tiny.yaml", f"run_dir={tmp_path}/r", "--partition", "gpuu"]
    result = run_xlsr(env, "launch", "slurm", *args)
    assert result.returncode == 2
    assert "unknown partition 'gpuu'" in result.stderr
    assert "partitions on this cluster: debug" in result.stderr
    assert not (tmp_path / "r").exists()


def test_slurm_job_trains_on_two_tasks_and_saves(uninterrupted, env):
    """Scenario 1: submitted with 2 tasks, trained with gloo, checkpoint, W&B offline run, logs per rank."""
    run_dir, job_id = uninterrupted
    assert (run_dir / "slurm_job_id").read_text().strip() == job_id
    saved = load_config(run_dir / "config.yaml")
    assert saved.run_dir == str(run_dir) and saved.launcher.gpus_per_node == 0
    assert saved.launcher.cpus_per_task == 1 and saved.launcher.time_min == 20
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 30
    assert summary["checkpoint"].endswith("step-00000030") and Path(summary["checkpoint"]).is_dir()
    rank0 = logs(run_dir, job_id, 0)
    assert f"SLURM job {job_id}, restart 0, rank 0 of 2" in rank0
    assert "training" in rank0 and "on 2 rank(s), device cpu" in rank0 and "update 30/30" in rank0
    assert (run_dir / "submitit" / f"{job_id}_1_log.err").exists()  # one log per rank
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((run_dir / "wandb").iterdir())
    status = run_xlsr(env, "launch", "status", str(run_dir))
    assert f"job {job_id}: COMPLETED" in status.stdout and "update 30, loss" in status.stdout


def test_time_limit_signal_checkpoints_requeues_and_resumes(uninterrupted, env, demo_index, tmp_path):
    """Scenario 2: USR2 (what SLURM sends before the time limit) → save → rank 0 requeues the job →
    it resumes from the saved step in the same run directory with the same W&B run id, and ends
    with the uninterrupted run's losses."""
    whole, _ = uninterrupted
    run_dir = tmp_path / "preempted"
    job_id = submit(env, *train_overrides(demo_index, run_dir, "logging.wandb_mode=offline"))
    wait_for(lambda: last_step(run_dir) >= 10, 180, "update 10", lambda: logs(run_dir, job_id))
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
    release_requeued(env, job_id, run_dir)
    state = wait_finished(env, job_id, run_dir)
    text = logs(run_dir, job_id)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text
    assert "got SIGUSR2: saving a checkpoint" in text and "requeueing (restart 1 of at most 20)" in text
    assert f"SLURM job {job_id}, restart 1, rank 0 of 2, master" in text and f"run dir {run_dir}" in text
    resumed = re.search(r"resumed from \S+/step-(\d+) at update (\d+)", text)
    assert resumed and int(resumed[1]) == int(resumed[2]) >= 10, text
    # the same W&B run, continued: one offline directory per start, all with the stored id
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(run_id in path.name for path in offline), offline
    # exact resume: every interval not cut by the stop has the uninterrupted run's values
    stop = int(resumed[1])
    ours, theirs = metrics(run_dir), metrics(whole)
    assert [m["step"] for m in ours] == [m["step"] for m in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if not a["step"] - 5 < stop < a["step"]:
            assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}, a["step"]
    assert ours[-1]["step"] == 30


def test_scontrol_requeue_saves_then_requeue_cap_then_resubmit(uninterrupted, env, demo_index, tmp_path):
    """SIGTERM path: `scontrol requeue` (SLURM signals every process of the job) → the trainer saves
    at that update and SLURM requeues. Then, with --max-requeues 1 spent, a USR2 saves and the job
    ends instead of requeueing; submitting the same command again finishes the run.

    W&B is on (offline): SLURM's SIGTERM reaches wandb-core too, and its death must cost nothing but
    W&B points (MetricsLogger turns W&B off with a warning)."""
    whole, _ = uninterrupted
    run_dir = tmp_path / "requeued"
    args = [
        *train_overrides(
            demo_index, run_dir, "logging.wandb_mode=offline", "checkpoint.interval_updates=100"
        ),
        "--max-requeues",
        "1",
    ]
    job_id = submit(env, *args)
    wait_for(lambda: last_step(run_dir) >= 5, 180, "update 5", lambda: logs(run_dir, job_id))
    subprocess.run(["scontrol", "requeue", job_id], env=env, check=True)
    release_requeued(env, job_id, run_dir)
    wait_for(
        lambda: "restart 1, rank 0" in logs(run_dir, job_id) and last_step(run_dir) >= 15,
        180,
        "the restarted job to pass update 15",
        lambda: logs(run_dir, job_id),
    )
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
    state = wait_finished(env, job_id, run_dir)
    text = logs(run_dir, job_id)
    assert "got SIGTERM: saving a checkpoint" in text and "leaving the requeue decision to SLURM" in text
    first = re.search(r"resumed from \S+/step-(\d+) at update (\d+)", text)
    assert first and 5 <= int(first[1]) < 15, text  # saved on the signal, not a periodic checkpoint
    assert "not requeued: the job already restarted 1 time(s), launcher.max_requeues=1" in text
    assert state["JobState"] == "FAILED" and state["ExitCode"] == f"{75}:0", state
    # the same command again: accepted for this run directory, resumes and finishes
    second_id = submit(env, *args)
    assert second_id != job_id
    assert wait_finished(env, second_id, run_dir)["JobState"] == "COMPLETED", logs(run_dir, second_id)
    resumed = re.search(r"resumed from \S+/step-(\d+) at update (\d+)", logs(run_dir, second_id))
    assert resumed and int(resumed[1]) >= 15
    assert {k: metrics(run_dir)[-1][k] for k in COMPARED} == {k: metrics(whole)[-1][k] for k in COMPARED}


def test_shard_job_array_writes_shards_and_a_merged_index(env, demo_index, tmp_path):
    """Scenario 3: `xlsr shard --slurm --array 3`: 3 array tasks write the shards, then the merge job
    writes index.json, the same as one process writing everything (conftest's demo_index)."""
    corpus = demo_index.parent.parent / "corpus"
    out_dir = tmp_path / "shards"
    args = ["--corpus", "demo", "--shard-size", "400000", "--workers", "1", "--slurm", "--array", "3"]
    result = run_xlsr(env, "shard", str(corpus), str(out_dir), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = re.search(r"submitted array job (\d+) \(3 task\(s\)\) and merge job (\d+)", result.stdout)
    assert ids, result.stdout
    array_id, merge_id = ids.groups()
    state = wait_finished(env, merge_id, out_dir, timeout_s=180)
    merge_log = (out_dir / "submitit" / f"{merge_id}_0_log.out").read_text()
    assert state["JobState"] == "COMPLETED", merge_log
    for task in range(3):
        assert scontrol_job(env, f"{array_id}_{task}")["JobState"] == "COMPLETED"
        task_log = (out_dir / "submitit" / f"{array_id}_{task}_0_log.out").read_text()
        assert f"task {task}/3:" in task_log
    merged, reference = (json.loads(p.read_text()) for p in (out_dir / "index.json", demo_index))
    assert merged["shards"] == reference["shards"] and merged["totals"] == reference["totals"]
    assert len(merged["shards"]) > 3 and "skipped" in merge_log
