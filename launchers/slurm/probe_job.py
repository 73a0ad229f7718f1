"""A SLURM probe job: the probes of one checkpoint, submitted from inside the training job.

Rank 0 of the training job submits it (`xlsr.engine.probing`) with ``validation.probe_job``'s
resources, on ``launcher.partition`` unless the probe job names its own, under the same account and
QoS. The task reloads the run's recipe, probes the step (`xlsr.evaluation.probes.RunProber`) and
exits. It is requeueable: a preemption notice (USR2) makes submitit call `ProbeTask.checkpoint`, which
resubmits the same task, and a ``scontrol requeue`` or a requeueing preemption restarts it; either way
the prober records the step at most once, so a rerun after the lines were written does nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from launchers.slurm.sbatch import JobResources, make_executor, submission
from xlsr.config import TrainConfig
from xlsr.run_dir import PROBES_DIR

log = logging.getLogger("xlsr.probes")


@dataclasses.dataclass(frozen=True)
class ProbeTask:
    run_dir: str
    step: int

    def __call__(self) -> dict[str, Any]:
        from xlsr.evaluation.probes import RunProber

        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
        prober = RunProber(self.run_dir)
        path = dict(prober.checkpoints()).get(self.step) if self.step else None
        if self.step and path is None:
            log.warning("checkpoint %d of %s is gone: nothing to probe", self.step, self.run_dir)
            return {"step": self.step, "probed": []}
        records = prober.probe_step(self.step, path)
        return {"step": self.step, "probed": [r["probe"] for r in records]}

    def checkpoint(self) -> Any:
        """Preempted or out of time: submitit requeues the same task (it starts over; cheap)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def probe_resources(cfg: TrainConfig, step: int) -> JobResources:
    job, launcher = cfg.validation.probe_job, cfg.launcher
    return JobResources(
        job_name=f"xlsr-probe-{Path(cfg.run_dir).name}-{step}",
        time_min=job.time_min,
        cpus_per_task=job.cpus,
        gpus_per_node=job.gpus,
        partition=job.partition or launcher.partition,
        account=launcher.account,
        qos=launcher.qos,
        mem_gb=job.mem_gb,
        requeue=True,
    )


def submit_probe_job(cfg: TrainConfig, run_dir: Path, step: int) -> str:
    """Submit the probes of checkpoint ``step``; returns the SLURM job id."""
    folder = run_dir / PROBES_DIR / "slurm"
    executor = make_executor(folder, probe_resources(cfg, step), cfg.validation.probe_job.max_requeues)
    with submission():
        job = executor.submit(ProbeTask(str(run_dir), step))
    return str(job.job_id)
