"""`xlsr launch slurm` and `xlsr shard --slurm`: SLURM jobs through submitit, with requeue.

Training job layout (one run directory per run, reused by every requeue and resubmission)::

    <run_dir>/config.yaml            resolved config (recipe + overrides + launcher flags); the job reads it
    <run_dir>/slurm_job_id           the last submitted job id (`xlsr launch status` reads it)
    <run_dir>/submitit/<job>_<rank>_log.{out,err}   per-rank logs (appended to across requeues)
    <run_dir>/checkpoints/step-N/    <run_dir>/metrics.jsonl   <run_dir>/wandb_run_id   <run_dir>/wandb/

One SLURM task per GPU (``--ntasks-per-node = --gpus-per-node``; on CPU-only partitions
``--gpus-per-node 0 --tasks-per-node N``). Each task exports the torch.distributed variables from
SLURM's (``submitit.helpers.TorchDistributedEnvironment``) and runs ``xlsr train`` in-process on
``<run_dir>/config.yaml``.

Stopping, requeueing and the interplay with submitit's own signal handler
-----------------------------------------------------------------------
submitit's job runner installs a USR2 handler before it calls us; on global rank 0 it would call
``checkpoint()``, run ``scontrol requeue`` and ``sys.exit`` at once, killing training before the
trainer's collective save (other ranks only log). We therefore take the signals over:

1. ``SignalRouting`` (the task's first action) replaces submitit's USR2/TERM handlers. A signal that
   arrives while the process group and model are still being built is remembered and sent again
   as soon as the trainer has installed its own handlers. It also blocks the stop signals in the
   helper processes (DataLoader workers): SLURM signals every process of a step, and a worker
   killed by SIGTERM would make the trainer fail instead of saving.
2. The trainer's handlers (SIGTERM/USR1/USR2, installed in ``Trainer.fit``) catch the signal on every
   rank: the current update finishes, all ranks agree (CPU all-reduce), save a complete checkpoint,
   and ``cmd_train`` returns 75. The save ends with a barrier, so when rank 0 returns the
   checkpoint is complete on every rank.
3. Rank 0 then decides about the requeue from SLURM's view of the job (``_requeue_or_stop``):

   * ``JobState=RUNNING``: the signal was USR2 ahead of the time limit (``#SBATCH --signal=USR2@S``),
     a preemption notice, or a user's ``scancel --signal=USR2``. SLURM will not restart the job by
     itself, so rank 0 runs ``scontrol requeue $SLURM_JOB_ID``, unless ``SLURM_RESTART_COUNT``
     already reached ``launcher.max_requeues``; then the job just ends with the checkpoint saved.
   * anything else (``COMPLETING`` ...): SLURM itself is ending the job with SIGTERM: a ``scancel``
     (stays cancelled), a ``scontrol requeue`` or a requeueing preemption (SLURM requeues it). Rank
     0 does not interfere.

   Every rank then exits with 75 (no submitit result file: the job is not finished). A finished
   training returns normally: the job completes and is not requeued.
4. A requeued job keeps its job id, so submitit reloads the same pickled task, which reads the same
   ``config.yaml`` and resumes from the newest complete checkpoint with the same W&B run id.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("xlsr.launch")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
PREEMPTED_EXIT_CODE = 75  # xlsr.engine.trainer.PREEMPTED_EXIT_CODE (not imported: that pulls in torch)
# Fields that may change between submissions of the same run (resources, and how far to train).
MUTABLE_FIELDS = ("launcher", "stop_at_update")
ACTIVE_STATES = {
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
JOB_ID_FILE = "slurm_job_id"
DISTRIBUTED_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(RuntimeError):
    """A problem found before anything was submitted."""


# --------------------------------------------------------------------------------------------------
# Argument parsing


def parse_time(text: str) -> int:
    """SLURM time formats to minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"bad time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        total = int(days) * 1440 + hours * 60 + minutes
    elif c is not None:  # H:M:S
        total, seconds = int(a) * 60 + int(b), int(c)
    else:  # M or M:S
        total, seconds = int(a), int(b or 0)
    total += 1 if seconds else 0
    if total <= 0:
        raise argparse.ArgumentTypeError(f"time must be positive, got {text!r}")
    return total


def parse_mem_gb(text: str) -> int:
    """'64G', '64GB', '64' (GB), '1T' -> whole GB per node."""
    match = re.fullmatch(r"\s*(\d+)\s*([GT]?)B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"bad memory {text!r}: use e.g. 64G, 500G or 1T (per node)")
    return int(match[1]) * (1024 if match[2].upper() == "T" else 1)


def parse_sbatch_option(text: str) -> tuple[str, str | bool]:
    key, sep, value = text.partition("=")
    if not key.strip() or key.startswith("-"):
        raise argparse.ArgumentTypeError(f"--sbatch takes KEY=VALUE or KEY (no dashes), got {text!r}")
    return key.strip(), value if sep else True


def _add_resource_arguments(parser: argparse.ArgumentParser, time_help: str) -> None:
    parser.add_argument("--partition", help="SLURM partition (checked with sinfo before submitting)")
    parser.add_argument("--time", type=parse_time, help=time_help)
    parser.add_argument("--account", help="SLURM account to charge")
    parser.add_argument("--qos", help="SLURM quality of service")
    parser.add_argument("--mem", type=parse_mem_gb, help="memory per node, e.g. 500G")
    parser.add_argument(
        "--sbatch",
        type=parse_sbatch_option,
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="any other #SBATCH option, e.g. --sbatch gres=gpu:8 --sbatch mail-type=END (repeatable)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the sbatch script; submit nothing"
    )


def add_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `xlsr launch slurm`. Resource flags override the config's `launcher` section."""
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/xlsr_300m.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run_dir=runs/x optim.lr=5e-4")
    parser.add_argument("--nodes", type=int, help="nodes (launcher.nodes)")
    parser.add_argument(
        "--gpus-per-node", type=int, help="GPUs per node = tasks per node (launcher.gpus_per_node)"
    )
    parser.add_argument(
        "--tasks-per-node",
        type=int,
        help="training processes per node (default: --gpus-per-node, or 1 when it is 0: CPU partitions)",
    )
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per process (launcher.cpus_per_task)")
    parser.add_argument("--constraint", help="node features, e.g. a100|h100 (launcher.constraint)")
    parser.add_argument("--exclude", help="nodes to avoid, e.g. node[01-03] (launcher.exclude)")
    parser.add_argument(
        "--max-requeues", type=int, help="restarts of this job before it stops (launcher.max_requeues)"
    )
    parser.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="USR2 this many seconds before the time limit, to save a checkpoint (default 120)",
    )
    parser.add_argument("--job-name", help="default: xlsr-<run dir name>")
    parser.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="SHELL_LINE",
        help="shell line run before srun, e.g. 'module load cuda/12.4' or 'export NCCL_DEBUG=WARN'",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="continue a run directory whose config.yaml differs from this config (it is replaced)",
    )
    _add_resource_arguments(parser, "time limit per job: minutes or D-HH:MM:SS (launcher.time_min)")


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="run directory of a job submitted with xlsr launch slurm")


def add_shard_slurm_arguments(parser: argparse.ArgumentParser) -> None:
    """`xlsr shard ... --slurm --array N`: N array tasks write the shards, a dependent job merges."""
    group = parser.add_argument_group("SLURM job array (--slurm)")
    group.add_argument(
        "--slurm", action="store_true", help="run as a SLURM job array, then a job that writes index.json"
    )
    group.add_argument("--array", type=int, default=1, metavar="N", help="array tasks (default 1)")
    group.add_argument("--job-name", default="xlsr-shard", help="job name (default xlsr-shard)")
    group.add_argument(
        "--array-parallelism", type=int, default=256, help="array tasks running at once (default 256)"
    )
    _add_resource_arguments(group, "time limit per array task: minutes or D-HH:MM:SS (default 240)")


# --------------------------------------------------------------------------------------------------
# Resolving and validating `xlsr launch slurm`


@dataclasses.dataclass
class LaunchPlan:
    cfg: Any  # TrainConfig
    tasks_per_node: int
    parameters: dict[str, Any]  # SlurmExecutor parameters (sbatch options)
    run_dir: Path

    @property
    def folder(self) -> Path:
        return self.run_dir / "submitit"

    @property
    def world_size(self) -> int:
        return self.cfg.launcher.nodes * self.tasks_per_node


def resolve_launch(args: argparse.Namespace) -> LaunchPlan:
    """Config + overrides + flags → the resolved config and the sbatch parameters."""
    from xlsr.config import load_config

    cfg = load_config(args.config, args.overrides)
    flags = {
        "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node,
        "cpus_per_task": args.cpus_per_task,
        "partition": args.partition,
        "time_min": args.time,
        "account": args.account,
        "qos": args.qos,
        "constraint": args.constraint,
        "exclude": args.exclude,
        "mem_gb": args.mem,
        "max_requeues": args.max_requeues,
    }
    cfg.launcher = dataclasses.replace(cfg.launcher, **{k: v for k, v in flags.items() if v is not None})
    run_dir = Path(cfg.run_dir).resolve()
    cfg.run_dir = str(run_dir)
    launcher = cfg.launcher
    tasks_per_node = args.tasks_per_node or launcher.gpus_per_node or 1
    for name, value, minimum in (
        ("nodes", launcher.nodes, 1),
        ("tasks per node", tasks_per_node, 1),
        ("gpus per node", launcher.gpus_per_node, 0),
        ("cpus per task", launcher.cpus_per_task, 1),
        ("max requeues", launcher.max_requeues, 0),
        ("time (minutes)", launcher.time_min, 1),
        ("signal delay (s)", args.signal_delay_s, 1),
    ):
        if value < minimum:
            raise LaunchError(f"{name} must be at least {minimum}, got {value}")
    if args.signal_delay_s >= launcher.time_min * 60:
        raise LaunchError(
            f"--signal-delay-s {args.signal_delay_s} leaves no time to train within "
            f"--time {launcher.time_min} min"
        )
    parameters: dict[str, Any] = {
        "job_name": args.job_name or f"xlsr-{run_dir.name}",
        "nodes": launcher.nodes,
        "ntasks_per_node": tasks_per_node,
        "cpus_per_task": launcher.cpus_per_task,
        "time": launcher.time_min,
        "signal_delay_s": args.signal_delay_s,
        "stderr_to_stdout": False,
        "additional_parameters": {"requeue": True, **dict(args.sbatch)},
    }
    if launcher.gpus_per_node:
        parameters["gpus_per_node"] = launcher.gpus_per_node
    optional = {
        "partition": launcher.partition,
        "account": launcher.account,
        "qos": launcher.qos,
        "constraint": launcher.constraint,
        "exclude": launcher.exclude,
        "mem": f"{launcher.mem_gb}GB" if launcher.mem_gb else None,
        "setup": list(args.setup) or None,
    }
    parameters.update({k: v for k, v in optional.items() if v is not None})
    return LaunchPlan(cfg, tasks_per_node, parameters, run_dir)


def _comparable(cfg: Any) -> dict[str, Any]:
    from xlsr.config import to_dict

    data = to_dict(cfg)
    for key in MUTABLE_FIELDS:
        data.pop(key, None)
    data["run_dir"] = str(Path(data["run_dir"]).resolve())
    return data


def config_conflict(cfg: Any, run_dir: Path) -> str | None:
    """A diff if ``run_dir/config.yaml`` describes a different run than ``cfg`` (None if same/new)."""
    import yaml

    from xlsr.config import ConfigError, load_config

    existing_path = run_dir / "config.yaml"
    if not existing_path.is_file():
        return None
    try:
        existing = load_config(existing_path)
    except ConfigError as exc:
        return f"its config.yaml no longer loads ({exc})"
    old, new = _comparable(existing), _comparable(cfg)
    if old == new:
        return None
    diff = difflib.unified_diff(
        yaml.safe_dump(old, sort_keys=False).splitlines(),
        yaml.safe_dump(new, sort_keys=False).splitlines(),
        f"{existing_path} (existing run)",
        "this launch",
        lineterm="",
    )
    lines = list(diff)
    return "\n".join(lines[:60] + (["..."] if len(lines) > 60 else []))


def resource_changes(cfg: Any, run_dir: Path) -> str | None:
    """The ``launcher`` fields (nodes, GPUs, time, ...) that differ from the run directory's last launch.

    They may change between submissions, but a forgotten ``--nodes 4`` silently shrinks the job (and
    re-seeds the data stream on a new world size), so the launch says what changed."""
    import dataclasses as dc

    from xlsr.config import ConfigError, load_config

    existing_path = run_dir / "config.yaml"
    if not existing_path.is_file():
        return None
    try:
        old = load_config(existing_path).launcher
    except ConfigError:
        return None  # config_conflict reports it
    changes = [
        f"{field.name}: {getattr(old, field.name)} -> {getattr(cfg.launcher, field.name)}"
        for field in dc.fields(old)
        if getattr(old, field.name) != getattr(cfg.launcher, field.name)
    ]
    return ", ".join(changes) or None


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    """Run a SLURM client command; None when it is not installed or does not answer."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def available_partitions() -> list[str] | None:
    """Partition names from `sinfo` (None when sinfo is missing or the controller does not answer)."""
    result = _run(["sinfo", "-h", "-o", "%P"])
    if result is None or result.returncode != 0:
        return None
    return sorted({line.strip().rstrip("*") for line in result.stdout.splitlines() if line.strip()})


def check_partition(partition: str | None, dry_run: bool) -> str | None:
    """Raise for an unknown partition; returns a note when it could not be checked."""
    partitions = available_partitions()
    if partitions is None:
        if not dry_run:
            raise LaunchError(
                "cannot reach SLURM (`sinfo` is missing or fails): is this a login node, and is "
                "SLURM_CONF right? Use --dry-run to only print the job, or `xlsr launch local` here."
            )
        return "partition not checked: sinfo is not available here"
    if partition is not None and partition not in partitions:
        close = difflib.get_close_matches(partition, partitions, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise LaunchError(
            f"unknown partition '{partition}'{hint}; partitions on this cluster: {', '.join(partitions)}"
        )
    return None


def job_state(job_id: str) -> str | None:
    """SLURM's state of a job (RUNNING, PENDING, COMPLETING, ...) or None if unknown/forgotten."""
    result = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if result is None or result.returncode != 0:
        return None
    match = re.search(r"\bJobState=(\S+)", result.stdout)
    return match[1] if match else None


def check_active_job(run_dir: Path) -> None:
    """Refuse a second job on a run directory whose last job is still queued or running."""
    path = run_dir / JOB_ID_FILE
    if not path.is_file():
        return
    job_id = path.read_text().strip()
    state = job_state(job_id)
    if state in ACTIVE_STATES:
        raise LaunchError(
            f"job {job_id} ({state}) is still using {run_dir}: two jobs would write the same "
            f"checkpoints. Wait for it, or `scancel {job_id}` (it saves a checkpoint) and submit again."
        )


def validate_launch(plan: LaunchPlan, args: argparse.Namespace) -> list[str]:
    """Everything that can be checked before submitting; returns notes, raises LaunchError."""
    notes = []
    conflict = config_conflict(plan.cfg, plan.run_dir)
    if conflict is not None:
        if not args.allow_config_change:
            raise LaunchError(
                f"run directory {plan.run_dir} belongs to a different config; refusing to mix two "
                "runs in one directory. Pick another run_dir=..., or pass --allow-config-change to "
                f"continue this run with the new config (launcher.* and stop_at_update may always "
                f"change).\n{conflict}"
            )
        notes.append(f"config of {plan.run_dir} changes (--allow-config-change):\n{conflict}")
    changed = resource_changes(plan.cfg, plan.run_dir)
    if changed:
        notes.append(f"resources differ from the last launch of {plan.run_dir}: {changed}")
    note = check_partition(plan.cfg.launcher.partition, args.dry_run)
    if note:
        notes.append(note)
    check_active_job(plan.run_dir)
    return notes


# --------------------------------------------------------------------------------------------------
# Rendering and submitting


def submitit_command(folder: Path) -> str:
    """The command submitit runs in every task (SlurmExecutor._submitit_command_str)."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def render_sbatch(folder: Path, parameters: dict[str, Any], map_count: int | None = None) -> str:
    """The sbatch script submitit writes for these parameters (same function it uses to submit)."""
    from submitit.slurm.slurm import _make_sbatch_string

    extra = {"map_count": map_count} if map_count else {}
    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **parameters, **extra)


def _executor(folder: Path, parameters: dict[str, Any], max_num_timeout: int = 0):
    from submitit import SlurmExecutor

    try:
        executor = SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout)
    except RuntimeError as exc:  # "Could not detect srun"
        raise LaunchError(f"{exc}; use --dry-run to only print the job") from None
    executor.update_parameters(**parameters)
    return executor


@contextlib.contextmanager
def submission_env() -> Iterator[None]:
    """Submit without this process's rank variables, nor a surrounding job's SLURM ids.

    Like ``submitit.helpers.clean_env`` (a job submitted from inside a job would inherit its task
    layout), but keeps ``SLURM_CONF`` and the user's ``SBATCH_*`` defaults.
    """
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
    finally:
        os.environ.update(saved)


def launch_slurm(args: argparse.Namespace) -> int:
    """`xlsr launch slurm`: validate, then print (--dry-run) or submit; returns an exit code."""
    from submitit.core.utils import FailedJobError

    from xlsr.config import ConfigError, save_config

    try:
        plan = resolve_launch(args)
        notes = validate_launch(plan, args)
    except (LaunchError, ConfigError) as exc:
        print(f"xlsr launch slurm: error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        print_dry_run(plan)
        return 0
    save_config(plan.cfg, plan.run_dir / "config.yaml")
    task = TrainTask(str(plan.run_dir), plan.cfg.launcher.max_requeues)
    try:
        executor = _executor(plan.folder, plan.parameters, plan.cfg.launcher.max_requeues)
        with submission_env():
            job = executor.submit(task)
    except (LaunchError, FailedJobError) as exc:
        print(f"xlsr launch slurm: error: {exc}", file=sys.stderr)
        return 2
    (plan.run_dir / JOB_ID_FILE).write_text(f"{job.job_id}\n")
    print(
        f"submitted job {job.job_id}: {plan.world_size} rank(s) = {plan.cfg.launcher.nodes} node(s) × "
        f"{plan.tasks_per_node} task(s), partition {plan.cfg.launcher.partition or '(default)'}"
    )
    print(status_text(plan.run_dir, job.job_id, plan.world_size))
    return 0


def print_dry_run(plan: LaunchPlan) -> None:
    from xlsr.config import dump_config

    print("# xlsr launch slurm --dry-run: nothing was submitted or written.")
    print(f"# run directory: {plan.run_dir}")
    print(
        f"# world: {plan.cfg.launcher.nodes} node(s) × {plan.tasks_per_node} task(s) = "
        f"{plan.world_size} rank(s); requeues at most {plan.cfg.launcher.max_requeues} time(s)"
    )
    print(f"# submitit: SlurmExecutor(folder={str(plan.folder)!r}, max_num_timeout=", end="")
    print(f"{plan.cfg.launcher.max_requeues}).update_parameters(")
    for key, value in plan.parameters.items():
        print(f"#     {key}={value!r},")
    print("# )")
    print(
        f"# each task: export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM, then `xlsr train --config "
        f"{plan.run_dir / 'config.yaml'}` in-process"
    )
    print(f"# ---- resolved config ({plan.run_dir / 'config.yaml'}) ----")
    for line in dump_config(plan.cfg).splitlines():
        print(f"# {line}")
    print("# ---- sbatch script ----")
    print(render_sbatch(plan.folder, plan.parameters))


def status_text(run_dir: Path, job_id: str, world_size: int | None = None) -> str:
    logs = run_dir / "submitit"
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


def launch_status(args: argparse.Namespace) -> int:
    """`xlsr launch status RUN_DIR`: job id and state, last metrics, where the logs are."""
    run_dir = args.run_dir.resolve()
    path = run_dir / JOB_ID_FILE
    if not path.is_file():
        print(f"xlsr launch status: error: no {JOB_ID_FILE} in {run_dir}", file=sys.stderr)
        return 2
    job_id = path.read_text().strip()
    state = job_state(job_id) or "unknown to SLURM (finished long ago, or no SLURM here)"
    restarts = ""
    result = _run(["scontrol", "show", "job", "-o", job_id])
    if result is not None and result.returncode == 0 and (m := re.search(r"\bRestarts=(\d+)", result.stdout)):
        restarts = f", requeued {m[1]} time(s)"
    print(f"job {job_id}: {state}{restarts}")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and (lines := metrics.read_text().splitlines()):
        last = json.loads(lines[-1])
        print(f"last metrics: update {last['step']}, loss {last['loss']:.4f}")
    summary = run_dir / "summary.json"
    if summary.is_file():
        done = json.loads(summary.read_text())
        status, step, checkpoint = done.get("status"), done.get("step"), done.get("checkpoint")
        print(f"summary: {status} at update {step}, checkpoint {checkpoint}")
    print(status_text(run_dir, job_id))
    return 0


# --------------------------------------------------------------------------------------------------
# Inside the job


class SignalRouting:
    """How SLURM's stop signals reach the trainer of this task, and only it.

    1. SLURM signals *every* process of a job step (``scancel``, ``scontrol requeue``, the time
       limit, preemption all go through slurmstepd's process tracking), so the DataLoader workers and
       the W&B service process get SIGTERM too; a worker killed that way makes the trainer raise
       "DataLoader worker ... is killed by signal: Terminated" instead of saving. So the main thread
       blocks the stop signals: every process and thread it starts (workers, W&B, gloo/NCCL threads)
       inherits the mask and ignores them, and a receiver thread, the only one that leaves them
       unblocked, takes them for the process. CPython then runs the Python handler (submitit's, ours,
       then the trainer's) in the main thread as usual.
    2. Our handlers replace submitit's at once (its USR2 handler would requeue and exit on rank 0
       without the collective save; its SIGTERM handler ignores the signal). A signal that arrives
       before the trainer has installed its own handlers is remembered, and re-sent once all of them
       are in place, so none is lost during start-up.
    """

    def __init__(self) -> None:
        self.pending: list[int] = []
        self._closed = threading.Event()
        self._handler = self._remember  # one object, so getsignal() can be compared with it
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handler)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        self._thread = threading.Thread(target=self._receive, name="xlsr-signals", daemon=True)
        self._thread.start()

    def _remember(self, signum: int, _frame: Any) -> None:
        log.warning("got %s during start-up: stopping after the first update", signal.Signals(signum).name)
        self.pending.append(signum)

    def _receive(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        handed_over = False
        while not self._closed.wait(0.1):
            if not handed_over and all(signal.getsignal(s) is not self._handler for s in STOP_SIGNALS):
                handed_over = True  # the trainer's handlers are in place
                for signum in dict.fromkeys(self.pending):
                    os.kill(os.getpid(), signum)

    def close(self) -> None:
        """Once training has returned: stop the helper processes, back to normal delivery."""
        self._closed.set()
        self._thread.join(timeout=5)
        # DataLoader workers still alive (the trainer's signal handlers keep it, and so its loader,
        # referenced) would block this process's exit: multiprocessing stops daemonic children with
        # SIGTERM, which they ignore (blocked, see above). Training state is saved; kill them. torch's
        # SIGCHLD handler would report that as a failed worker, so it goes first.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            child.kill()
            child.join(timeout=10)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@dataclasses.dataclass(frozen=True)
class TrainTask:
    """What every SLURM task runs (pickled by submitit; reloaded unchanged after a requeue)."""

    run_dir: str
    max_requeues: int

    def __call__(self) -> dict[str, Any]:
        signals = SignalRouting()  # first: submitit's handler must not act on a signal (see module doc)
        logging.basicConfig(
            level=os.environ.get("XLSR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("submitit").propagate = False  # it has its own handlers

        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        from xlsr.cli import cmd_train

        job = JobEnvironment()
        dist_env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            os.environ.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
        job_id = os.environ.get("SLURM_JOB_ID", str(job.job_id))
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if dist_env.rank == 0:
            log.info(
                "SLURM job %s, restart %d, rank 0 of %d, master %s:%s, run dir %s",
                job_id,
                restarts,
                dist_env.world_size,
                dist_env.master_addr,
                dist_env.master_port,
                self.run_dir,
            )
        try:
            code = cmd_train(argparse.Namespace(config=str(Path(self.run_dir) / "config.yaml"), overrides=[]))
        finally:
            signals.close()
        if code == 0:
            return {"status": "finished", "run_dir": self.run_dir, "rank": dist_env.rank}
        if dist_env.rank == 0:
            _requeue_or_stop(job_id, restarts, self.max_requeues)
        sys.stdout.flush()
        sys.stderr.flush()
        # SystemExit, not an exception: submitit then writes no result file (the job is not done).
        raise SystemExit(code)


def requeue_decision(state: str | None, restarts: int, max_requeues: int) -> tuple[bool, str]:
    """Whether rank 0 requeues a job that stopped on a signal, and why (see the module doc)."""
    if state is not None and state != "RUNNING":
        return False, (
            f"SLURM is already ending this job (JobState={state}: scancel, scontrol requeue or "
            "preemption); leaving the requeue decision to SLURM"
        )
    if restarts >= max_requeues:
        return False, (
            f"not requeued: the job already restarted {restarts} time(s), launcher.max_requeues="
            f"{max_requeues}; submit the same command again to continue from the checkpoint"
        )
    return True, f"requeueing (restart {restarts + 1} of at most {max_requeues})"


def _requeue_or_stop(job_id: str, restarts: int, max_requeues: int) -> None:
    requeue, reason = requeue_decision(job_state(job_id), restarts, max_requeues)
    log.warning("job %s stopped after saving a checkpoint: %s", job_id, reason)
    if not requeue:
        return
    result = _run(["scontrol", "requeue", job_id], timeout=60)
    if result is None or result.returncode != 0:
        detail = "scontrol not found" if result is None else result.stderr.strip()
        log.error("scontrol requeue %s failed (%s); submit the same command again", job_id, detail)
    else:
        log.warning("requeued job %s: it restarts from the checkpoint just saved", job_id)


# --------------------------------------------------------------------------------------------------
# xlsr shard --slurm --array N


def _shard_namespace(args: argparse.Namespace, task_index: int, num_tasks: int) -> argparse.Namespace:
    values = {k: v for k, v in vars(args).items() if k != "func"}
    values.update(
        slurm=False,
        dry_run=False,
        task_index=task_index,
        num_tasks=num_tasks,
        no_progress=True,
        input=Path(args.input).resolve(),
        out_dir=Path(args.out_dir).resolve(),
    )
    return argparse.Namespace(**values)


def shard_task(args: argparse.Namespace) -> int:
    """One array task (or, with num_tasks=1, the merge): `xlsr shard` on its share of the shards."""
    from sharding.cli import run_shard

    code = run_shard(args)
    if code != 0:
        raise RuntimeError(f"xlsr shard task {args.task_index}/{args.num_tasks} failed with exit code {code}")
    return code


def submit_shard_array(args: argparse.Namespace) -> int:
    """`xlsr shard INPUT OUT --slurm --array N`: N writer tasks, then a dependent merge job."""
    from submitit.core.utils import FailedJobError

    n = args.array
    try:
        if n < 1:
            raise LaunchError(f"--array must be at least 1, got {n}")
        if args.num_tasks != 1 or args.task_index != 0:
            raise LaunchError("--slurm sets the task split itself: drop --task-index/--num-tasks")
        note = check_partition(args.partition, args.dry_run)
    except LaunchError as exc:
        print(f"xlsr shard: error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(f"note: {note}", file=sys.stderr)
    out_dir = Path(args.out_dir).resolve()
    folder = out_dir / "submitit"
    parameters: dict[str, Any] = {
        "job_name": args.job_name,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": max(1, args.workers),
        "time": args.time or 240,
        "array_parallelism": args.array_parallelism,
        "additional_parameters": dict(args.sbatch),
    }
    optional = {
        "partition": args.partition,
        "account": args.account,
        "qos": args.qos,
        "mem": f"{args.mem}GB" if args.mem else None,
    }
    parameters.update({k: v for k, v in optional.items() if v is not None})
    merge_parameters = {
        **parameters,
        "job_name": f"{args.job_name}-merge",
        "dependency": "afterok:ARRAY_JOB_ID",
    }
    if args.dry_run:
        print(f"# xlsr shard --slurm --dry-run: nothing was submitted. {n} array task(s), then a merge job.")
        print(f"# each array task i runs: xlsr shard ... --task-index i --num-tasks {n}")
        print("# ---- array job ----")
        print(render_sbatch(folder, parameters, map_count=n if n > 1 else None))
        print(f"# ---- merge job (writes {out_dir / 'index.json'}) ----")
        print(render_sbatch(folder, merge_parameters))
        return 0
    try:
        executor = _executor(folder, parameters)
        with submission_env():
            if n > 1:
                jobs = executor.map_array(shard_task, [_shard_namespace(args, i, n) for i in range(n)])
                array_id = jobs[0].job_id.split("_")[0]
            else:
                jobs = [executor.submit(shard_task, _shard_namespace(args, 0, 1))]
                array_id = jobs[0].job_id
            merge_parameters["dependency"] = f"afterok:{array_id}"
            merge = _executor(folder, merge_parameters).submit(shard_task, _shard_namespace(args, 0, 1))
    except (LaunchError, FailedJobError) as exc:
        print(f"xlsr shard: error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted array job {array_id} ({n} task(s)) and merge job {merge.job_id} (after it succeeds)")
    print(f"index:   {out_dir / 'index.json'} (written by job {merge.job_id})")
    print(f"logs:    {folder}/{array_id}_<task>_0_log.{{out,err}}, {folder}/{merge.job_id}_0_log.out")
    print(f"follow:  squeue -j {array_id},{merge.job_id}    tail -f {folder}/{merge.job_id}_0_log.out")
    print(
        f"if a task fails, the merge waits (DependencyNeverSatisfied): scancel {merge.job_id} and submit "
        "the same command again; finished shards are kept"
    )
    return 0
