"""`xlsr launch slurm` on the login node: resolve the config, validate, then print or submit.

One SLURM task per GPU (``--ntasks-per-node = --gpus-per-node``; on CPU-only partitions
``--gpus-per-node 0 --tasks-per-node N``). Each task runs `launchers.slurm.job.TrainTask`, which
trains in-process on ``<run_dir>/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launchers.slurm.cluster import ACTIVE_STATES, LaunchError, check_request, job_state
from launchers.slurm.job import TrainTask
from launchers.slurm.rundir import (
    config_path,
    log_dir,
    read_job_id,
    read_saved_config,
    save_run_config,
    write_job_id,
)
from launchers.slurm.sbatch import (
    JobResources,
    SbatchExtras,
    make_executor,
    render_sbatch,
    sbatch_parameters,
    submission,
)
from launchers.slurm.status import paths_text
from xlsr.run_dir import CONFIG_NAME

if TYPE_CHECKING:
    from xlsr.config import LauncherConfig, TrainConfig
    from xlsr.plan import Plan

# Fields that may change between submissions of the same run (resources, and how far to train).
MUTABLE_FIELDS = ("launcher", "stop_at_update")
MAX_DIFF_LINES = 60
DEFAULT_SIGNAL_DELAY_S = 120  # USR2 this long before the time limit: one update and a save must fit


@dataclasses.dataclass(frozen=True)
class LaunchRequest:
    """What `xlsr launch slurm` was asked for.

    The resource fields are named as in `LauncherConfig` and override it; None keeps the config's value."""

    config: str
    overrides: tuple[str, ...] = ()
    nodes: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None  # not saved; default gpus_per_node, or 1 without GPUs
    cpus_per_task: int | None = None
    partition: str | None = None
    time_min: int | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    mem_gb: int | None = None
    max_requeues: int | None = None
    gpu: str | None = None  # the GPU model, for the plan's memory check (launcher.gpu)
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    job_name: str | None = None  # default xlsr-<run dir name>
    setup: tuple[str, ...] = ()
    sbatch: SbatchExtras = ()
    allow_config_change: bool = False
    force: bool = False  # submit even when the plan says it does not fit in GPU memory
    dry_run: bool = False


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    """A validated launch: the config the job will run and the job it will be."""

    cfg: TrainConfig
    run_dir: Path
    resources: JobResources
    notes: tuple[str, ...] = ()  # things the user should know (printed before submitting)
    plan: Plan | None = None  # memory, speed and data of the run (None for CPU-only jobs)

    @property
    def folder(self) -> Path:
        return log_dir(self.run_dir)

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.resources.tasks_per_node

    @property
    def max_requeues(self) -> int:
        return self.cfg.launcher.max_requeues


def plan_launch(request: LaunchRequest) -> LaunchPlan:
    """Everything that can be checked before submitting. Raises LaunchError or ConfigError."""
    cfg = resolve_config(request)
    run_dir = Path(cfg.run_dir)
    resources = job_resources(request, cfg.launcher, run_dir)
    notes = run_dir_notes(cfg, run_dir, request.allow_config_change)
    note = check_request(cfg.launcher.partition, resources.request, request.dry_run)
    check_active_job(run_dir)
    plan, plan_note = run_plan(cfg, resources, request.force, request.dry_run)
    notes += [text for text in (note, plan_note) if text]
    return LaunchPlan(cfg, run_dir, resources, tuple(notes), plan)


# CPU seconds of decoding the shards on the login node, for the plan's loader figures.
LAUNCH_DECODE_SECONDS = 1.0


def run_plan(
    cfg: TrainConfig, resources: JobResources, force: bool, dry_run: bool
) -> tuple[Plan | None, str | None]:
    """The plan of a GPU job and a note for the user. A job that cannot fit in GPU memory is refused
    unless ``force`` (a dry run shows its plan and says it would be refused)."""
    from xlsr.hardware import GIB
    from xlsr.plan import PlanError, PlanRequest, make_plan

    if resources.gpus_per_node == 0:
        return None, None
    gpus = resources.nodes * resources.tasks_per_node
    request = PlanRequest(gpus, resources.nodes, cfg.launcher.gpu, decode_seconds=LAUNCH_DECODE_SECONDS)
    try:
        plan = make_plan(cfg, request)
    except PlanError as exc:
        raise LaunchError(str(exc)) from None
    except Exception as exc:  # the plan is advice: a bug in it must not block a launch
        return None, f"no plan ({type(exc).__name__}: {exc})"
    if plan.fits or force:
        return plan, None
    would = f"; it would fit with: {'; or '.join(plan.suggestions)}" if plan.suggestions else ""
    refusal = (
        f"the run does not fit in GPU memory: {plan.memory.device_total / GIB:.1f} GiB per GPU needed, "
        f"{plan.gpu.memory_bytes / GIB:.1f} GiB on {plan.gpu.key}{would}; --force submits anyway"
    )
    if dry_run:
        return plan, f"{refusal} (a submission would be refused)"
    raise LaunchError(refusal)


def resolve_config(request: LaunchRequest) -> TrainConfig:
    """Recipe + overrides + resource flags; ``run_dir`` made absolute (compute nodes read it)."""
    from xlsr.config import load_config
    from xlsr.data.sources import check_data_sources

    cfg = load_config(request.config, list(request.overrides))
    check_data_sources(cfg.data)
    flags = {field.name: getattr(request, field.name, None) for field in dataclasses.fields(cfg.launcher)}
    cfg.launcher = dataclasses.replace(cfg.launcher, **{k: v for k, v in flags.items() if v is not None})
    cfg.run_dir = str(Path(cfg.run_dir).resolve())
    return cfg


def job_resources(request: LaunchRequest, launcher: LauncherConfig, run_dir: Path) -> JobResources:
    tasks_per_node = request.tasks_per_node or launcher.gpus_per_node or 1
    for name, value, minimum in (
        ("nodes", launcher.nodes, 1),
        ("tasks per node", tasks_per_node, 1),
        ("gpus per node", launcher.gpus_per_node, 0),
        ("cpus per task", launcher.cpus_per_task, 1),
        ("max requeues", launcher.max_requeues, 0),
        ("time (minutes)", launcher.time_min, 1),
        ("signal delay (s)", request.signal_delay_s, 1),
    ):
        if value < minimum:
            raise LaunchError(f"{name} must be at least {minimum}, got {value}")
    if request.signal_delay_s >= launcher.time_min * 60:
        raise LaunchError(
            f"--signal-delay-s {request.signal_delay_s} leaves no time to train within "
            f"--time {launcher.time_min} min"
        )
    return JobResources(
        job_name=request.job_name or f"xlsr-{run_dir.name}",
        time_min=launcher.time_min,
        nodes=launcher.nodes,
        tasks_per_node=tasks_per_node,
        cpus_per_task=launcher.cpus_per_task,
        gpus_per_node=launcher.gpus_per_node,
        partition=launcher.partition,
        account=launcher.account,
        qos=launcher.qos,
        constraint=launcher.constraint,
        exclude=launcher.exclude,
        mem_gb=launcher.mem_gb,
        signal_delay_s=request.signal_delay_s,
        requeue=True,
        setup=request.setup,
        extras=request.sbatch,
    )


def run_dir_notes(cfg: TrainConfig, run_dir: Path, allow_config_change: bool) -> list[str]:
    """Compare with the run directory's saved config: refuse another run, note changed resources."""
    from xlsr.config import ConfigError

    try:
        saved = read_saved_config(run_dir)
    except ConfigError as exc:
        conflict, changed = f"its {CONFIG_NAME} no longer loads ({exc})", None
    else:
        if saved is None:
            return []
        conflict, changed = config_conflict(saved, cfg, run_dir), resource_changes(saved, cfg)
    notes = []
    if conflict is not None:
        if not allow_config_change:
            raise LaunchError(
                f"run directory {run_dir} belongs to a different config; refusing to mix two "
                "runs in one directory. Pick another run_dir=..., or pass --allow-config-change to "
                f"continue this run with the new config (launcher.* and stop_at_update may always "
                f"change).\n{conflict}"
            )
        notes.append(f"config of {run_dir} changes (--allow-config-change):\n{conflict}")
    if changed:
        notes.append(f"resources differ from the last launch of {run_dir}: {changed}")
    return notes


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    from xlsr.config import to_dict

    data = to_dict(cfg)
    for key in MUTABLE_FIELDS:
        data.pop(key, None)
    data["run_dir"] = str(Path(data["run_dir"]).resolve())
    return data


def config_conflict(saved: TrainConfig, cfg: TrainConfig, run_dir: Path) -> str | None:
    """A diff if the saved config describes a different run than ``cfg`` (None if the same run)."""
    import yaml

    old, new = _comparable(saved), _comparable(cfg)
    if old == new:
        return None
    diff = difflib.unified_diff(
        yaml.safe_dump(old, sort_keys=False).splitlines(),
        yaml.safe_dump(new, sort_keys=False).splitlines(),
        f"{config_path(run_dir)} (existing run)",
        "this launch",
        lineterm="",
    )
    lines = list(diff)
    return "\n".join(lines[:MAX_DIFF_LINES] + (["..."] if len(lines) > MAX_DIFF_LINES else []))


def resource_changes(saved: TrainConfig, cfg: TrainConfig) -> str | None:
    """The ``launcher`` fields (nodes, GPUs, time, ...) that differ from the last launch.

    They may change between submissions, but a forgotten ``--nodes 4`` silently shrinks the job (and
    re-seeds the data stream on a new world size), so the launch says what changed."""
    old, new = saved.launcher, cfg.launcher
    changes = [
        f"{field.name}: {getattr(old, field.name)} -> {getattr(new, field.name)}"
        for field in dataclasses.fields(old)
        if getattr(old, field.name) != getattr(new, field.name)
    ]
    return ", ".join(changes) or None


def check_active_job(run_dir: Path) -> None:
    """Refuse a second job on a run directory whose last job is still queued or running."""
    job_id = read_job_id(run_dir)
    if job_id is None:
        return
    state = job_state(job_id)
    if state in ACTIVE_STATES:
        raise LaunchError(
            f"job {job_id} ({state}) is still using {run_dir}: two jobs would write the same "
            f"checkpoints. Wait for it, or `scancel {job_id}` (it saves a checkpoint) and submit again."
        )


def submit_launch(plan: LaunchPlan) -> str:
    """Save the config, submit the job, record its id; returns the job id. Raises LaunchError."""
    save_run_config(plan.cfg, plan.run_dir)
    executor = make_executor(plan.folder, plan.resources, plan.max_requeues)
    with submission():
        job = executor.submit(TrainTask(str(plan.run_dir), plan.max_requeues))
    write_job_id(plan.run_dir, job.job_id)
    return job.job_id


def submitted_text(plan: LaunchPlan, job_id: str) -> str:
    r = plan.resources
    head = (
        f"submitted job {job_id}: {plan.world_size} rank(s) = {r.nodes} node(s) × "
        f"{r.tasks_per_node} task(s), partition {r.partition or '(default)'}"
    )
    return f"{head}\n{paths_text(plan.run_dir, job_id, plan.world_size)}"


def dry_run_text(plan: LaunchPlan) -> str:
    """The plan, the resolved config and the sbatch script, as `--dry-run` prints them."""
    from xlsr.config import dump_config

    r, config_file = plan.resources, config_path(plan.run_dir)
    lines = [
        "# xlsr launch slurm --dry-run: nothing was submitted or written.",
        f"# run directory: {plan.run_dir}",
        f"# world: {r.nodes} node(s) × {r.tasks_per_node} task(s) = {plan.world_size} rank(s); "
        f"requeues at most {plan.max_requeues} time(s)",
        f"# submitit: SlurmExecutor(folder={str(plan.folder)!r}, max_num_timeout={plan.max_requeues})"
        ".update_parameters(",
        *(f"#     {key}={value!r}," for key, value in sbatch_parameters(r).items()),
        "# )",
        "# each task: export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM, then `xlsr train --config "
        f"{config_file}` in-process",
        f"# ---- resolved config ({config_file}) ----",
        *(f"# {line}" for line in dump_config(plan.cfg).splitlines()),
        "# ---- sbatch script ----",
        render_sbatch(plan.folder, r),
    ]
    if plan.plan is not None:
        from xlsr.plan import plan_text

        lines[1:1] = [
            "# ---- plan (xlsr plan) ----",
            *(f"# {line}" for line in plan_text(plan.plan).splitlines()),
        ]
    return "\n".join(lines)
