"""Training jobs on a real two-node SLURM cluster (tests/slurm_cluster.py), compared with local runs.

Each node is a network + UTS namespace with its own hostname and address, so a 2-node job's ranks
talk TCP across the cluster's bridge as on two machines. Every job trains configs/tiny.yaml for 20
updates (10 for hybrid sharding; 1 CPU per task, gloo) with metrics on every update, so "per-update
losses" are the lines of metrics.jsonl. Needs root and `slurmctld slurmd slurm-client munge`
(`make system-deps`); without them these tests fail with that instruction instead of being skipped.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from run_helpers import TRAINING_KEYS, xlsr
from slurm_jobs import (
    ONE_NODE_TWO_TASKS,
    TWO_NODES_ONE_TASK,
    compared,
    last_step,
    logs,
    metrics,
    release_requeued,
    resumed_from,
    run_job,
    run_xlsr,
    scontrol_job,
    submit,
    task_pids,
    train_overrides,
    wait_finished,
    wait_for,
    wait_step,
)

from launchers.slurm.job import LOST_RANK_EXIT_CODE
from xlsr.checkpoint_files import complete_checkpoints
from xlsr.config import load_config
from xlsr.engine.watchdog import HANG_DIR, hung_before
from xlsr.faults import FAULT_ENV
from xlsr.process import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow
pytest_plugins = ["slurm_fixtures"]  # the session's cluster: fixtures `slurm`, `env`

TIMEOUT_S = 30  # distributed.timeout_s of every job (train_overrides)
FSDP = ("distributed.backend=fsdp",)
HYBRID = ("distributed.backend=fsdp", "distributed.fsdp_sharding=hybrid")


def local_run(index: Path, run_dir: Path, nproc: int, *extra: str) -> list[dict]:
    """`xlsr launch local --nproc N` with the SLURM jobs' config: the reference for parity."""
    args = train_overrides(index, run_dir, "logging.wandb_mode=disabled", *extra)
    result = xlsr("launch", "local", "--nproc", str(nproc), "--config", "configs/tiny.yaml", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(run_dir)


def assert_same_updates(ours: list[dict], local: list[dict], tolerance: float = 0.0) -> None:
    """Per update, every training metric equal (within ``tolerance``, relative) to the local run's."""
    assert [m["step"] for m in ours] == [m["step"] for m in local]
    for a, b in zip(ours, local, strict=True):
        for key in TRAINING_KEYS:
            assert abs(a[key] - b[key]) <= tolerance * max(1.0, abs(b[key])), (a["step"], key, a[key], b[key])


@pytest.fixture(scope="module")
def ddp_run(env, demo_index, tmp_path_factory) -> tuple[Path, str]:
    """2 nodes × 1 task, DDP, W&B offline, never interrupted: the reference of the scenarios below."""
    run_dir = tmp_path_factory.mktemp("slurm_runs") / "ddp"
    args = [*train_overrides(demo_index, run_dir, "logging.wandb_mode=offline"), *TWO_NODES_ONE_TASK]
    job_id, state = run_job(env, run_dir, *args)
    assert state["JobState"] == "COMPLETED", logs(run_dir, job_id)
    return run_dir, job_id


def test_two_node_ddp_job_equals_a_local_run(ddp_run, env, demo_index, tmp_path):
    """One task on each node (own hostname and address), DDP over TCP: the per-update metrics are
    those of `xlsr launch local --nproc 2`, bit for bit. Also what a finished job leaves behind."""
    run_dir, job_id = ddp_run
    job = scontrol_job(env, job_id)
    assert job["NumNodes"] == "2" and job["NodeList"] == "node[1-2]", job
    rank0, rank1 = logs(run_dir, job_id, 0), logs(run_dir, job_id, 1)
    assert f"SLURM job {job_id}, restart 0, rank 0 of 2, master node1:" in rank0
    assert "on 2 rank(s), device cpu" in rank0 and "update 20/20" in rank0
    assert (run_dir / "submitit" / f"{job_id}_1_log.err").is_file() and "Traceback" not in rank1, rank1
    assert_same_updates(metrics(run_dir), local_run(demo_index, tmp_path / "local", 2))
    # the run directory: job id, saved config with the flags, summary, W&B offline run, status
    assert (run_dir / "slurm_job_id").read_text().strip() == job_id
    launcher = load_config(run_dir / "config.yaml").launcher
    assert launcher.nodes == 2 and launcher.gpus_per_node == 0 and launcher.cpus_per_task == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 20
    assert summary["checkpoint"].endswith("step-00000020") and Path(summary["checkpoint"]).is_dir()
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list((run_dir / "wandb").iterdir())
    status = run_xlsr(env, "launch", "status", str(run_dir))
    assert f"job {job_id}: COMPLETED" in status.stdout and "update 20, loss" in status.stdout


def test_preempted_two_node_job_requeues_and_resumes_on_both_nodes(ddp_run, env, demo_index, tmp_path):
    """USR2 (what SLURM sends before the time limit, or a preemption notice) reaches both nodes'
    tasks → they save → rank 0 requeues the job → it restarts on both nodes from the saved step,
    with the same W&B run id, and ends with the uninterrupted run's metrics."""
    whole, _ = ddp_run
    run_dir = tmp_path / "preempted"
    job_id = submit(
        env, *train_overrides(demo_index, run_dir, "logging.wandb_mode=offline"), *TWO_NODES_ONE_TASK
    )
    wait_step(run_dir, job_id, 7)
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
    release_requeued(env, job_id, run_dir)
    state = wait_finished(env, job_id, run_dir)
    text = logs(run_dir, job_id)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text
    assert state["NodeList"] == "node[1-2]", state
    assert "got SIGUSR2: saving a checkpoint" in text and "requeueing (restart 1 of at most 20)" in text
    assert f"SLURM job {job_id}, restart 1, rank 0 of 2, master node1" in text
    assert f"run dir {run_dir}" in text
    ((saved, at),) = resumed_from(text)
    assert saved == at >= 7, text
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(run_id in path.name for path in offline), offline
    # exact resume: with a metrics line per update, no logging interval is cut by the stop
    assert compared(metrics(run_dir)) == compared(metrics(whole))


def test_one_node_job_scontrol_requeue_then_requeue_cap_then_resubmit(ddp_run, env, demo_index, tmp_path):
    """1 node × 2 tasks. SIGTERM path: `scontrol requeue` (SLURM signals every process of the job)
    → the trainer saves at that update and SLURM requeues. Then, with --max-requeues 1 spent, a USR2
    saves and the job ends instead of requeueing; submitting the same command again finishes the run
    with the 2-node run's final metrics (same world size, same config).

    W&B is on (offline): SLURM's SIGTERM reaches wandb-core too, and its death must cost nothing but
    W&B points (MetricsLogger turns W&B off with a warning)."""
    whole, _ = ddp_run
    run_dir = tmp_path / "requeued"
    args = [
        *train_overrides(demo_index, run_dir, "logging.wandb_mode=offline", "checkpoint.interval_updates=99"),
        *ONE_NODE_TWO_TASKS,
        "--max-requeues",
        "1",
    ]
    job_id = submit(env, *args)
    wait_step(run_dir, job_id, 4)
    subprocess.run(["scontrol", "requeue", job_id], env=env, check=True)
    release_requeued(env, job_id, run_dir)
    wait_for(
        lambda: "restart 1, rank 0" in logs(run_dir, job_id) and last_step(run_dir) >= 12,
        180,
        "the restarted job to pass update 12",
        lambda: logs(run_dir, job_id),
    )
    subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
    state = wait_finished(env, job_id, run_dir)
    text = logs(run_dir, job_id)
    assert state["NumNodes"] == "1" and "rank 0 of 2" in text, state
    assert "got SIGTERM: saving a checkpoint" in text and "leaving the requeue decision to SLURM" in text
    first = resumed_from(text)[0]
    assert 4 <= first[0] < 12, text  # saved on the signal, not a periodic checkpoint
    assert "not requeued: the job already restarted 1 time(s), launcher.max_requeues=1" in text
    assert state["JobState"] == "FAILED" and state["ExitCode"] == f"{PREEMPTED_EXIT_CODE}:0", state
    # the same command again: accepted for this run directory, resumes and finishes
    second_id, state = run_job(env, run_dir, *args)
    assert second_id != job_id and state["JobState"] == "COMPLETED", logs(run_dir, second_id)
    assert resumed_from(logs(run_dir, second_id))[0][0] >= 12
    assert compared(metrics(run_dir))[-1] == compared(metrics(whole))[-1]


def test_a_dead_node_ends_the_job_and_the_same_command_resumes(ddp_run, slurm, env, demo_index, tmp_path):
    """Node 2's task is killed mid-run (as when its node dies): rank 0 fails in its next collective,
    says so in one line, and the job ends well within distributed.timeout_s + a margin, no hang.
    Submitting the same command again resumes from the last complete checkpoint and ends with the
    uninterrupted run's metrics, every update of them."""
    whole, _ = ddp_run
    run_dir = tmp_path / "node_died"
    args = [*train_overrides(demo_index, run_dir), *TWO_NODES_ONE_TASK]
    job_id = submit(env, *args)
    wait_step(run_dir, job_id, 7)
    (victim,) = task_pids(slurm, "node2", run_dir)
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    killed = time.monotonic()
    state = wait_finished(env, job_id, run_dir, timeout_s=TIMEOUT_S + 60)
    assert time.monotonic() - killed < TIMEOUT_S + 30, "the job outlived distributed.timeout_s + 30 s"
    assert state["JobState"] == "FAILED", state
    last_saved = complete_checkpoints(run_dir / "checkpoints")[-1]
    rank0 = logs(run_dir, job_id)
    assert "rank 0 lost contact with another rank of job" in rank0, rank0[-3000:]
    assert f"resume from the last complete checkpoint: {last_saved[1]} (update {last_saved[0]})" in rank0
    assert f"node1: task 0: Exited with exit code {LOST_RANK_EXIT_CODE}" in rank0
    # the same command again
    second_id, state = run_job(env, run_dir, *args)
    assert state["JobState"] == "COMPLETED", logs(run_dir, second_id)
    assert resumed_from(logs(run_dir, second_id)) == [(last_saved[0], last_saved[0])]
    assert compared(metrics(run_dir)) == compared(metrics(whole))


def test_fsdp_two_nodes_equals_local_then_resumes_on_one_node_and_back(env, demo_index, tmp_path):
    """FSDP2 on 2 nodes × 1 task equals a local 2-process run per update. Its checkpoint (DCP,
    sharded over 2 ranks) then resumes on 1 node × 1 task (resharded to 1 rank), and that one's
    back on 2 nodes: the run continues to the end on each new topology."""
    run_dir = tmp_path / "fsdp"
    base = train_overrides(demo_index, run_dir, "logging.wandb_mode=disabled", *FSDP)
    job_id, state = run_job(env, run_dir, *base, "stop_at_update=8", *TWO_NODES_ONE_TASK)
    assert state["JobState"] == "COMPLETED" and state["NodeList"] == "node[1-2]", logs(run_dir, job_id)
    local = local_run(demo_index, tmp_path / "local", 2, *FSDP, "stop_at_update=8")
    assert_same_updates(metrics(run_dir), local)
    for stop, topology, world in (
        (14, ["--nodes", "1", "--tasks-per-node", "1"], 1),
        (20, TWO_NODES_ONE_TASK, 2),
    ):
        start = last_step(run_dir)
        job_id, state = run_job(env, run_dir, *base, f"stop_at_update={stop}", *topology)
        text = logs(run_dir, job_id)
        assert state["JobState"] == "COMPLETED", text
        assert resumed_from(text) == [(start, start)] and f"on {world} rank(s)" in text
        new = [m for m in metrics(run_dir) if m["step"] > start]
        assert [m["step"] for m in new] == list(range(start + 1, stop + 1))
        assert {m["world_size"] for m in new} == {world}, new


def test_hybrid_fsdp_on_two_nodes_equals_a_local_run(env, demo_index, tmp_path):
    """FSDP2 hybrid sharding on 2 nodes × 2 tasks: shard within a node, replicate across the nodes
    (a 2 × 2 device mesh). The local 4-process run shards over all 4 (one node), so the gradient
    sums run in another order: equal per update up to float rounding."""
    run_dir = tmp_path / "hybrid"
    args = train_overrides(demo_index, run_dir, "logging.wandb_mode=disabled", *HYBRID, "optim.max_update=10")
    job_id, state = run_job(env, run_dir, *args, "--nodes", "2", "--tasks-per-node", "2")
    assert state["JobState"] == "COMPLETED" and state["NodeList"] == "node[1-2]", logs(run_dir, job_id)
    assert "on 4 rank(s)" in logs(run_dir, job_id)
    local = local_run(demo_index, tmp_path / "local", 4, *HYBRID, "optim.max_update=10")
    assert_same_updates(metrics(run_dir), local, tolerance=1e-5)


def test_shard_job_array_over_both_nodes_writes_the_same_index(env, demo_index, tmp_path):
    """`xlsr shard --slurm --array 4` with 1 CPU per task fills both nodes; the merge job's index.json
    is the one a single process writes (conftest's demo_index)."""
    corpus = demo_index.parent.parent / "corpus"
    out_dir = tmp_path / "shards"
    args = ["--corpus", "demo", "--shard-size", "400000", "--workers", "1", "--slurm", "--array", "4"]
    result = run_xlsr(env, "shard", str(corpus), str(out_dir), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = re.search(r"submitted array job (\d+) \(4 task\(s\)\) and merge job (\d+)", result.stdout)
    assert ids, result.stdout
    array_id, merge_id = ids.groups()
    state = wait_finished(env, merge_id, out_dir, timeout_s=180)
    merge_log = (out_dir / "submitit" / f"{merge_id}_0_log.out").read_text()
    assert state["JobState"] == "COMPLETED", merge_log
    nodes = set()
    for task in range(4):
        job = scontrol_job(env, f"{array_id}_{task}")
        assert job["JobState"] == "COMPLETED", job
        nodes.add(job["NodeList"])
        assert f"task {task}/4:" in (out_dir / "submitit" / f"{array_id}_{task}_0_log.out").read_text()
    assert nodes == {"node1", "node2"}
    merged, reference = (json.loads(p.read_text()) for p in (out_dir / "index.json", demo_index))
    assert merged["shards"] == reference["shards"] and merged["totals"] == reference["totals"]
    assert len(merged["shards"]) > 4 and "skipped" in merge_log


def test_a_hung_rank_ends_the_job_which_requeues_itself_and_resumes(env, demo_index, tmp_path):
    """1 node × 2 tasks; rank 1 stops making progress before update 8 (and is 3 x slower). Within
    health.hang_s the watchdog ends the job (stacks of both ranks on disk, one line naming rank 1), the
    rank that declared the hang requeues it, and the restart resumes from step-5, names rank 1 as the
    straggler and completes."""
    run_dir = tmp_path / "hung"
    args = [*train_overrides(demo_index, run_dir, "logging.wandb_mode=disabled", "health.hang_s=5"),
            *ONE_NODE_TWO_TASKS]  # fmt: skip
    job_id = submit({**env, FAULT_ENV: "hang@8:1,slow@1:3"}, *args)
    wait_for(lambda: hung_before(run_dir), 180, "the hang to be declared", lambda: logs(run_dir, job_id))
    release_requeued(env, job_id, run_dir)
    state = wait_finished(env, job_id, run_dir)
    text = logs(run_dir, job_id) + logs(run_dir, job_id, rank=1)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text
    assert re.search(r"hang: rank 1 on \S+ made no progress for 5 s \(data, after update 7\)", text), text
    assert f"job {job_id} hung: requeueing (restart 1 of at most" in text
    assert resumed_from(logs(run_dir, job_id))[0] == (5, 5)
    [hung_job] = (run_dir / HANG_DIR).iterdir()
    assert sorted(p.name for p in hung_job.iterdir()) == ["HANG", "rank-0.txt", "rank-1.txt"]
    # the restart (a hang fault fires once per run directory) names the 3 x slower rank 1
    straggler = [line for line in metrics(run_dir) if line.get("signal") == "straggler"]
    assert straggler and straggler[0]["message"].startswith("rank 1 works "), metrics(run_dir)[-1]
    assert (
        list((run_dir / "heartbeats").iterdir()) == []
    )  # the hung job's: at the restart; its own: at the end


def probe_job_logs(run_dir: Path, job_id: str) -> str:
    folder = run_dir / "probes" / "slurm"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"{job_id}_0_log.*")))


def test_probe_jobs_probe_every_checkpoint_once_and_survive_a_requeue(env, speech_shards, tmp_path):
    """Under SLURM, probes run beside training (validation.probes_async's default): the training job
    submits one probe job for the initial model and one per checkpoint. The baseline's probe job is
    requeued while it runs and completes on its restart; every (checkpoint, probe) line is written
    once."""
    train, valid = speech_shards
    run_dir = tmp_path / "probed"
    probe_job = ("validation.probe_job.gpus=0", "validation.probe_job.cpus=1",
                 "validation.probe_job.mem_gb=2", "validation.probe_job.time_min=20")  # fmt: skip
    overrides = train_overrides(
        train, run_dir, "logging.wandb_mode=disabled", f"data.valid=[{valid}]", "optim.max_update=5",
        "validation.interval_updates=5", "validation.max_seconds_per_language=20", *probe_job,
    )  # fmt: skip
    job_id = submit(env, *overrides, "--nodes", "1", "--tasks-per-node", "1")
    claim = run_dir / "probes" / "claims" / "step-00000000"
    wait_for(lambda: claim.is_file() and claim.read_text().strip(), 120, "the baseline's probe job",
             lambda: logs(run_dir, job_id))  # fmt: skip
    baseline_job = claim.read_text().strip()
    wait_for(
        lambda: scontrol_job(env, baseline_job).get("JobState") == "RUNNING", 120, "the probe job to run"
    )
    subprocess.run(["scontrol", "requeue", baseline_job], env=env, check=True)
    release_requeued(env, baseline_job, run_dir)
    assert wait_finished(env, job_id, run_dir)["JobState"] == "COMPLETED", logs(run_dir, job_id)
    claims = sorted((run_dir / "probes" / "claims").iterdir())
    assert [c.name for c in claims] == ["step-00000000", "step-00000005"]
    for path in claims:
        probe_id = path.read_text().strip()
        state = wait_finished(env, probe_id, run_dir)
        assert state["JobState"] == "COMPLETED", probe_job_logs(run_dir, probe_id)
        assert state["Restarts"] == ("1" if probe_id == baseline_job else "0"), state
    lines = (run_dir / "probes.jsonl").read_text().splitlines()
    steps = sorted((json.loads(line)["step"], json.loads(line)["probe"]) for line in lines)
    assert steps == [(step, probe) for step in (0, 5) for probe in ("lid", "phones")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["probe_phone_error_rate_step"] == 5 and "probe_lid_accuracy_baseline" in summary
