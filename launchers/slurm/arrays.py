"""`xlsr shard --slurm --array N`: N array tasks write the shards, then a dependent job merges the index.

Submitted from the login node (`plan_shard_array`, `submit_shard_array`); `ShardTask` is what runs
inside each array task and the merge job. Every task plans the same shards (the plan is
deterministic) and writes its share; the merge job runs once more with one task, finds every shard
complete and writes the index and the skipped-files list.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from launchers.slurm.cluster import LaunchError, check_request
from launchers.slurm.rundir import LOG_DIR
from launchers.slurm.sbatch import JobResources, SbatchExtras, make_executor, render_sbatch, submission
from xlsr.data.shard_format import INDEX_NAME

if TYPE_CHECKING:
    from sharding import ShardJob

DEFAULT_TIME_MIN = 240


@dataclasses.dataclass(frozen=True)
class ArrayOptions:
    """The SLURM side of `xlsr shard --slurm`: how many tasks, and what each asks for."""

    array: int = 1
    array_parallelism: int = 256
    job_name: str = "xlsr-shard"  # the merge job is <job_name>-merge
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem_gb: int | None = None
    time_min: int | None = None  # per array task; default DEFAULT_TIME_MIN
    sbatch: SbatchExtras = ()
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class ArrayPlan:
    job: ShardJob  # paths absolute: the tasks run elsewhere
    num_tasks: int
    folder: Path  # submitit's folder: pickled tasks and logs
    array: JobResources
    merge: JobResources
    notes: tuple[str, ...] = ()

    @property
    def index_path(self) -> Path:
        return self.job.out_dir / INDEX_NAME


@dataclasses.dataclass(frozen=True)
class ArraySubmission:
    plan: ArrayPlan
    array_id: str | None = None  # None: a dry run, nothing submitted
    merge_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One array task, or the merge job (num_tasks=1): `sharding.shard` on its share of the shards."""

    job: ShardJob

    def __call__(self) -> None:
        from sharding import shard

        result = shard(self.job)
        print(result.summary(), flush=True)


def plan_shard_array(job: ShardJob, options: ArrayOptions) -> ArrayPlan:
    """Check the request and work out both jobs. Raises LaunchError."""
    from sharding import ShardError
    from sharding.api import check_input, check_output_dir

    n = options.array
    if n < 1:
        raise LaunchError(f"--array must be at least 1, got {n}")
    if job.num_tasks != 1 or job.task_index != 0:
        raise LaunchError("--slurm sets the task split itself: drop --task-index/--num-tasks")
    try:
        check_input(job)
        check_output_dir(job)
    except ShardError as exc:
        raise LaunchError(str(exc)) from None
    out_dir = job.out_dir.resolve()
    job = dataclasses.replace(job, input=job.input.resolve(), out_dir=out_dir, progress=False)
    array = JobResources(
        job_name=options.job_name,
        time_min=options.time_min or DEFAULT_TIME_MIN,
        cpus_per_task=max(1, job.workers),
        partition=options.partition,
        account=options.account,
        qos=options.qos,
        mem_gb=options.mem_gb,
        array_parallelism=options.array_parallelism,
        extras=options.sbatch,
    )
    # The dependency's id is known once the array is submitted; the dry run shows a placeholder.
    merge_name = f"{options.job_name}-merge"
    merge = dataclasses.replace(array, job_name=merge_name, dependency="afterok:ARRAY_JOB_ID")
    request = dataclasses.replace(array.request, cpus_flag="--workers")
    note = check_request(options.partition, request, options.dry_run)
    return ArrayPlan(job, n, out_dir / LOG_DIR, array, merge, (note,) if note else ())


def submit_shard_array(job: ShardJob, options: ArrayOptions) -> ArraySubmission:
    """Plan, then submit the array and the merge job (with ``options.dry_run``: plan only)."""
    plan = plan_shard_array(job, options)
    if options.dry_run:
        return ArraySubmission(plan)
    n, folder = plan.num_tasks, plan.folder
    with submission():
        executor = make_executor(folder, plan.array)
        if n > 1:
            tasks = [ShardTask(dataclasses.replace(plan.job, task_index=i, num_tasks=n)) for i in range(n)]
            array_id = executor.submit_array(tasks)[0].job_id.split("_")[0]
        else:
            array_id = executor.submit(ShardTask(plan.job)).job_id
        merge = dataclasses.replace(plan.merge, dependency=f"afterok:{array_id}")
        merge_id = make_executor(folder, merge).submit(ShardTask(plan.job)).job_id
    return ArraySubmission(plan, array_id, merge_id)


def dry_run_text(plan: ArrayPlan) -> str:
    n = plan.num_tasks
    return "\n".join(
        [
            f"# xlsr shard --slurm --dry-run: nothing was submitted. {n} array task(s), then a merge job.",
            f"# each array task i runs: xlsr shard ... --task-index i --num-tasks {n}",
            "# ---- array job ----",
            render_sbatch(plan.folder, plan.array, map_count=n if n > 1 else None),
            f"# ---- merge job (writes {plan.index_path}) ----",
            render_sbatch(plan.folder, plan.merge),
        ]
    )


def submitted_text(submitted: ArraySubmission) -> str:
    plan, array_id, merge_id = submitted.plan, submitted.array_id, submitted.merge_id
    n, folder = plan.num_tasks, plan.folder
    return "\n".join(
        [
            f"submitted array job {array_id} ({n} task(s)) and merge job {merge_id} (after it succeeds)",
            f"index:   {plan.index_path} (written by job {merge_id})",
            f"logs:    {folder}/{array_id}_<task>_0_log.{{out,err}}, {folder}/{merge_id}_0_log.out",
            f"follow:  squeue -j {array_id},{merge_id}    tail -f {folder}/{merge_id}_0_log.out",
            f"if a task fails, the merge waits (DependencyNeverSatisfied): scancel {merge_id} and submit "
            "the same command again; finished shards are kept",
        ]
    )


def report_text(result: ArraySubmission) -> str:
    """What the CLI prints: the dry run's jobs and scripts, or the submitted job ids and log paths."""
    return dry_run_text(result.plan) if result.array_id is None else submitted_text(result)
