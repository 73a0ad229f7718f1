"""From a job's resources to submitit: the sbatch parameters, the script, the submission.

Login node only. `sbatch_parameters` is the one place where resources become sbatch options, for
training jobs and for shard arrays alike; `render_sbatch` shows the script submitit would submit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launchers.slurm.cluster import LaunchError
from launchers.slurm.resources import Request

# This process's torch.distributed variables must not leak into a job submitted from it.
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SbatchExtras = tuple[tuple[str, "str | bool"], ...]  # --sbatch KEY=VALUE (True: a bare flag)


@dataclasses.dataclass(frozen=True)
class JobResources:
    """What one SLURM job asks for. None (or empty) leaves the option out: the cluster default."""

    job_name: str
    time_min: int
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0  # 0: no --gpus-per-node line (CPU partitions)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    mem_gb: int | None = None  # per node
    signal_delay_s: int | None = None  # USR2 this long before the time limit (None: submitit's 90 s)
    requeue: bool = False
    array_parallelism: int | None = None
    dependency: str | None = None
    setup: tuple[str, ...] = ()  # shell lines before srun
    extras: SbatchExtras = ()

    @property
    def request(self) -> Request:
        """What each job asks of the partition (checked against its nodes before submitting)."""
        return Request(
            nodes=self.nodes,
            tasks_per_node=self.tasks_per_node,
            cpus_per_task=self.cpus_per_task,
            gpus_per_node=self.gpus_per_node,
            mem_gb=self.mem_gb,
            time_min=self.time_min,
        )


def sbatch_parameters(resources: JobResources) -> dict[str, Any]:
    """`SlurmExecutor.update_parameters` arguments for these resources."""
    r = resources
    optional = {
        "gpus_per_node": r.gpus_per_node or None,
        "signal_delay_s": r.signal_delay_s,
        "array_parallelism": r.array_parallelism,
        "partition": r.partition,
        "account": r.account,
        "qos": r.qos,
        "constraint": r.constraint,
        "exclude": r.exclude,
        "mem": f"{r.mem_gb}GB" if r.mem_gb else None,
        "dependency": r.dependency,
        "setup": list(r.setup) or None,
        "additional_parameters": {**({"requeue": True} if r.requeue else {}), **dict(r.extras)} or None,
    }
    return {
        "job_name": r.job_name,
        "nodes": r.nodes,
        "ntasks_per_node": r.tasks_per_node,
        "cpus_per_task": r.cpus_per_task,
        "time": r.time_min,
        **{key: value for key, value in optional.items() if value is not None},
    }


def submitit_command(folder: Path) -> str:
    """The command submitit runs in every task (SlurmExecutor._submitit_command_str)."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(folder: Path, resources: JobResources, map_count: int | None = None) -> str:
    """The sbatch script submitit writes for these resources (the same function it submits with)."""
    from submitit.slurm.slurm import _make_sbatch_string

    extra = {"map_count": map_count} if map_count else {}
    return _make_sbatch_string(
        command=submitit_command(folder), folder=folder, **sbatch_parameters(resources), **extra
    )


def make_executor(folder: Path, resources: JobResources, max_num_timeout: int = 0) -> Any:
    """A submitit SlurmExecutor for these resources (raises LaunchError without SLURM)."""
    from submitit import SlurmExecutor

    try:
        executor = SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout)
    except RuntimeError as exc:  # "Could not detect srun"
        raise LaunchError(f"{exc}; use --dry-run to only print the job") from None
    executor.update_parameters(**sbatch_parameters(resources))
    return executor


@contextlib.contextmanager
def submission() -> Iterator[None]:
    """Submit without this process's rank variables, nor a surrounding job's SLURM ids.

    Like ``submitit.helpers.clean_env`` (a job submitted from inside a job would inherit its task
    layout), but keeps ``SLURM_CONF`` and the user's ``SBATCH_*`` defaults. An sbatch refusal
    becomes a LaunchError.
    """
    from submitit.core.utils import FailedJobError

    names = [name for name in DISTRIBUTED_VARIABLES if name in os.environ]
    if "SLURM_JOB_ID" in os.environ:
        names += [
            name
            for name in os.environ
            if name.startswith(("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_")) and name != "SLURM_CONF"
        ]
    saved = {name: os.environ.pop(name) for name in names}
    try:
        yield
    except FailedJobError as exc:
        raise LaunchError(str(exc)) from None
    finally:
        os.environ.update(saved)
