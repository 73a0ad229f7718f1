"""The argparse side of the SLURM launcher: flags, and handlers that call the typed functions.

`xlsr/cli.py` mounts these: `xlsr launch slurm` (`add_slurm_arguments`, `run_launch_slurm`),
`xlsr launch status` (`add_status_arguments`, `run_launch_status`) and the `--slurm --array N` flags
of `xlsr shard` (`add_shard_slurm_arguments`, `run_shard_array`).
Handlers print, and turn user errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launchers.slurm.arrays import ArrayOptions, report_text, submit_shard_array
from launchers.slurm.cluster import LaunchError
from launchers.slurm.resources import slurm_minutes
from launchers.slurm.status import run_status, status_text
from launchers.slurm.submit import (
    DEFAULT_SIGNAL_DELAY_S,
    LaunchRequest,
    dry_run_text,
    plan_launch,
    submit_launch,
    submitted_text,
)
from xlsr.config import ConfigError
from xlsr.hardware import GPU_KEYS
from xlsr.process import USER_ERROR_EXIT_CODE

if TYPE_CHECKING:
    from sharding import ShardJob


# --------------------------------------------------------------------------------------------------
# Argument types


def parse_time(text: str) -> int:
    """SLURM time formats to minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up)."""
    try:
        total = slurm_minutes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
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


# --------------------------------------------------------------------------------------------------
# Flags


def _add_resource_arguments(parser: argparse._ActionsContainer, time_help: str) -> None:
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
        default=DEFAULT_SIGNAL_DELAY_S,
        help=f"USR2 this many seconds before the time limit, to save a checkpoint (default "
        f"{DEFAULT_SIGNAL_DELAY_S})",
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
        "--gpu", type=str.lower, choices=GPU_KEYS, help="GPU model for the plan's memory check (launcher.gpu)"
    )
    parser.add_argument(
        "--force", action="store_true", help="submit even when the plan says the run does not fit in memory"
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
# From flags to typed requests


def launch_request_from_args(args: argparse.Namespace) -> LaunchRequest:
    return LaunchRequest(
        config=args.config,
        overrides=tuple(args.overrides),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time_min=args.time,
        account=args.account,
        qos=args.qos,
        constraint=args.constraint,
        exclude=args.exclude,
        mem_gb=args.mem,
        max_requeues=args.max_requeues,
        gpu=args.gpu,
        signal_delay_s=args.signal_delay_s,
        job_name=args.job_name,
        setup=tuple(args.setup),
        sbatch=tuple(args.sbatch),
        allow_config_change=args.allow_config_change,
        force=args.force,
        dry_run=args.dry_run,
    )


def shard_array_options_from_args(args: argparse.Namespace) -> ArrayOptions:
    """The flags added by `add_shard_slurm_arguments`, typed."""
    return ArrayOptions(
        array=args.array,
        array_parallelism=args.array_parallelism,
        job_name=args.job_name,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        mem_gb=args.mem,
        time_min=args.time,
        sbatch=tuple(args.sbatch),
        dry_run=args.dry_run,
    )


# --------------------------------------------------------------------------------------------------
# Handlers


def _error(command: str, exc: Exception) -> int:
    print(f"{command}: error: {exc}", file=sys.stderr)
    return USER_ERROR_EXIT_CODE


def _print_notes(notes: tuple[str, ...]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def run_launch_slurm(args: argparse.Namespace) -> int:
    """`xlsr launch slurm`: validate, then print (--dry-run) or submit; returns an exit code."""
    from xlsr.faults import FaultSpecError, read_faults

    command, request = "xlsr launch slurm", launch_request_from_args(args)
    try:
        read_faults()  # the job inherits XLSR_FAULT: a malformed one is refused here, in one line
        plan = plan_launch(request)
    except (LaunchError, ConfigError, FaultSpecError) as exc:
        return _error(command, exc)
    _print_notes(plan.notes)
    if request.dry_run:
        print(dry_run_text(plan))
        return 0
    if plan.plan is not None:
        from xlsr.plan import summary_paragraph

        print(summary_paragraph(plan.plan))
    try:
        job_id = submit_launch(plan)
    except LaunchError as exc:
        return _error(command, exc)
    print(submitted_text(plan, job_id))
    return 0


def run_launch_status(args: argparse.Namespace) -> int:
    """`xlsr launch status RUN_DIR`: job id and state, last metrics, where the logs are."""
    try:
        status = run_status(args.run_dir)
    except LaunchError as exc:
        return _error("xlsr launch status", exc)
    print(status_text(status))
    return 0


def run_shard_array(job: ShardJob, args: argparse.Namespace) -> int:
    """`xlsr shard INPUT OUT --slurm --array N`: print the dry run, or submit and print the job ids.

    ``job`` is the shard job the other flags describe; ``args`` holds the flags of
    `add_shard_slurm_arguments`."""
    try:
        submission = submit_shard_array(job, shard_array_options_from_args(args))
    except LaunchError as exc:
        return _error("xlsr shard", exc)
    _print_notes(submission.plan.notes)
    print(report_text(submission))
    return 0
