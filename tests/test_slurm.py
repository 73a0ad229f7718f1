"""`xlsr launch slurm` and `xlsr shard --slurm` before anything trains, against a real SLURM cluster.

The first tests need no cluster: `--dry-run` output and the checks that run before anything is
submitted. The others use the session's two-node cluster (tests/slurm_fixtures.py starts
tests/slurm_cluster.py in a temporary directory): requests checked against its partitions, and
`xlsr launch status` of a job that cannot start. Needs root and the Debian packages `slurmctld
slurmd slurm-client munge` (`make system-deps`); without them the cluster tests fail with that
instruction instead of being skipped. Training jobs: tests/test_slurm_training.py.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml
from slurm_jobs import CPU_TASKS, run_xlsr, scontrol_job, wait_for

from launchers.slurm.cli import parse_mem_gb, parse_time
from launchers.slurm.job import MASTER_PORTS, master_port, requeue_decision, train_run_dir
from launchers.slurm.resources import Request, impossible_request, parse_partitions
from xlsr.cli import main as xlsr_main
from xlsr.config import load_config, to_dict

pytestmark = pytest.mark.slow
pytest_plugins = ["slurm_fixtures"]  # the session's cluster: fixtures `slurm`, `env`

# --------------------------------------------------------------------------------------------------
# Without a cluster: parsing, dry runs, validation


@pytest.fixture
def data_train(demo_index) -> str:
    """A training set for launches that must get past the data checks (`xlsr launch slurm` refuses an
    empty data.train, and data its plan finds unusable, before submitting)."""
    return f"data.train=[{demo_index}]"


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


def test_partition_shapes_from_sinfo_and_requests_that_never_fit():
    """GPU partitions, which the local cluster does not have: sinfo's GRES and limits, parsed."""
    sinfo = "\n".join(
        [
            "gpu*|g01|96|1000000|gpu:a100:8(S:0-1)|3-00:00:00|1-16",
            "gpu*|g02|96|1000000|gpu:a100:8(S:0,1)|3-00:00:00|1-16",
            "gpu*|g03|48|500000|gpu:4|3-00:00:00|1-16",
            "cpu|c01|128|256000|(null)|infinite|1-infinite",
        ]
    )
    gpu, cpu = parse_partitions(sinfo)["gpu"], parse_partitions(sinfo)["cpu"]
    assert gpu.default and gpu.max_time_min == 3 * 1440 and gpu.max_nodes == 16
    assert [node.gpus for node in gpu.nodes] == [8, 8, 4] and cpu.max_time_min is None
    fits = Request(nodes=2, tasks_per_node=8, cpus_per_task=10, gpus_per_node=8, mem_gb=900, time_min=4320)
    assert impossible_request(fits, gpu) is None
    three = dataclasses.replace(fits, nodes=3)  # only two nodes have 8 GPUs and 80 CPUs
    assert impossible_request(three, gpu).startswith("--nodes 3: only 2 node(s) of partition 'gpu' have 80")
    assert "at most 8 GPU(s)" in impossible_request(dataclasses.replace(fits, gpus_per_node=16), gpu)
    assert "has no GPUs" in impossible_request(dataclasses.replace(fits, nodes=1), cpu)
    assert "at most 4320 minutes" in impossible_request(dataclasses.replace(fits, time_min=4321), gpu)


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


def test_dry_run_prints_the_sbatch_script_and_submits_nothing(no_slurm, data_train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = xlsr_main(
        [
            "launch",
            "slurm",
            "--config",
            "configs/tiny.yaml",
            f"run_dir={run_dir}",
            data_train,
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
    assert "partition and resources not checked" in err
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


def test_validation_errors_before_submitting(no_slurm, data_train, tmp_path, capsys):
    # a missing config file
    assert xlsr_main(["launch", "slurm", "--config", "configs/nope.yaml", "--dry-run"]) == 2
    assert "config file not found: configs/nope.yaml" in capsys.readouterr().err
    # a mistyped override
    assert xlsr_main(["launch", "slurm", "--config", "configs/tiny.yaml", "optim.lrr=1", "--dry-run"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    # not a dry run and no reachable SLURM: a clear error, nothing written
    run_dir = tmp_path / "run"
    launch = ["launch", "slurm", "--config", "configs/tiny.yaml", f"run_dir={run_dir}"]
    assert xlsr_main(launch) == 2  # without data.train: refused before anything else
    assert "data.train is empty" in capsys.readouterr().err and not run_dir.exists()
    assert xlsr_main([*launch, data_train]) == 2
    assert "cannot reach SLURM" in capsys.readouterr().err and not run_dir.exists()


def test_refuses_a_run_directory_of_another_config(no_slurm, data_train, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    existing = load_config("configs/tiny.yaml", [f"run_dir={run_dir}", "optim.lr=1e-3", data_train])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(existing)))
    base = ["launch", "slurm", "--config", "configs/tiny.yaml", "--dry-run", data_train]
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
# On the real cluster, before anything runs: checks against the partitions, and `status` of a
# pending job. Training jobs: tests/test_slurm_training.py.


def launch(env, run_dir: Path, *args: str):
    return run_xlsr(env, "launch", "slurm", "--config", "configs/tiny.yaml", f"run_dir={run_dir}", *args)


def test_unknown_partition_is_refused_before_submitting(env, data_train, tmp_path):
    result = launch(env, tmp_path / "r", data_train, "--partition", "shrot")
    assert result.returncode == 2
    assert "unknown partition 'shrot' (did you mean 'short'?)" in result.stderr
    assert "partitions on this cluster: debug, short" in result.stderr
    assert not (tmp_path / "r").exists()


CPU = ["--gpus-per-node", "0"]
ONE_CPU = [*CPU, "--cpus-per-task", "1"]


@pytest.mark.parametrize(
    ("flags", "refusal"),
    [
        # the default --cpus-per-task 10 on nodes of 2 CPUs: what used to sit PENDING forever
        (CPU, "--cpus-per-task 10: the nodes of partition 'debug' have at most 2 CPU(s)"),
        (["--gpus-per-node", "1", "--cpus-per-task", "1"], "--gpus-per-node 1: partition 'debug' has no GPU"),
        ([*ONE_CPU, "--nodes", "3"], "--nodes 3: partition 'debug' has 2 node(s) for one job"),
        ([*ONE_CPU, "--partition", "short", "--nodes", "2"], "--nodes 2: partition 'short' has 1 node(s)"),
        ([*ONE_CPU, "--partition", "short", "--time", "1:00:00"], "--time 60 (minutes): partition 'short'"),
        ([*ONE_CPU, "--mem", "1T"], "--mem 1024G: the nodes of partition 'debug' have at most"),
        (
            [*CPU, "--tasks-per-node", "2", "--cpus-per-task", "2"],
            "--tasks-per-node 2 × --cpus-per-task 2 = 4 CPUs per node: the nodes of partition 'debug'",
        ),
    ],
)
def test_requests_that_can_never_run_are_refused_in_one_line(env, data_train, tmp_path, flags, refusal):
    """Checked against what sinfo says of the partition's nodes and limits; nothing is submitted."""
    result = launch(env, tmp_path / "r", data_train, *flags)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert refusal in line and "SLURM would leave the job pending forever" in line, line
    assert not (tmp_path / "r").exists()


def test_shard_array_with_more_workers_than_a_node_has_cpus_is_refused(env, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "en").mkdir(parents=True)
    result = run_xlsr(
        env, "shard", str(corpus), str(tmp_path / "out"), "--slurm", "--array", "2", "--workers", "4"
    )
    assert result.returncode == 2
    assert "--workers 4: the nodes of partition 'debug' have at most 2 CPU(s)" in result.stderr


def test_status_names_the_reason_of_a_job_that_cannot_start(env, demo_index, tmp_path):
    """A job held by its user, then one whose request the partition cannot satisfy (as left by an
    administrator's or a user's `scontrol update`): `xlsr launch status` gives SLURM's reason and
    what to do. No training runs."""
    run_dir = tmp_path / "held"
    args = [f"data.train=[{demo_index}]", *CPU_TASKS, "--sbatch", "hold"]
    result = launch(env, run_dir, *args)
    assert result.returncode == 0, result.stderr
    job_id = (run_dir / "slurm_job_id").read_text().strip()
    try:
        status = run_xlsr(env, "launch", "status", str(run_dir)).stdout
        assert f"job {job_id}: PENDING" in status
        assert f"pending: Reason=JobHeldUser: held by a user: `scontrol release {job_id}`" in status
        # scontrol applies both, and exits 1 saying the job cannot run ("Requested partition
        # configuration not available now"): the state `status` must explain
        for change in (["update", f"jobid={job_id}", "MinCPUsNode=64"], ["release", job_id]):
            subprocess.run(["scontrol", *change], env=env, capture_output=True, check=False)
        wait_for(lambda: scontrol_job(env, job_id).get("Reason") == "PartitionConfig", 30, "PartitionConfig")
        status = run_xlsr(env, "launch", "status", str(run_dir)).stdout
        assert "pending: Reason=PartitionConfig: the request does not fit the partition's nodes" in status
        assert f"scancel {job_id} and submit with resources" in status
    finally:
        subprocess.run(["scancel", job_id], env=env, check=False)


def test_master_port_is_shared_by_the_nodes_new_per_restart_and_never_ephemeral():
    ports = {master_port(str(job), restart) for job in range(200) for restart in range(3)}
    assert all(20_000 <= port < 32_768 for port in ports) and len(ports) > 500  # below 32768-60999
    assert master_port("6", 0) == master_port("6", 0) != master_port("6", 1)
    assert len(MASTER_PORTS) == 12_768
