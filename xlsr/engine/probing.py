"""Where a run's checkpoints get probed: in the loop, beside it locally, or as SLURM jobs.

``validation.probes_async`` (None: true under SLURM):

* **false, "inline"**: rank 0 probes each checkpoint right after saving it (and the initial model
  first) while the other ranks wait; the update loop waits too. Small runs, CI. The ranks wait in
  a lock-step of one small all-reduce per second, never in one long collective, so a probe may take
  longer than ``distributed.timeout_s``; the hang watchdog hears a beat every second.
* **true, locally**: rank 0 starts one low-priority process on the CPU,
  ``xlsr evaluate RUN_DIR --follow PID --device cpu``, that probes every checkpoint without results,
  one at a time, until the trainer has exited and nothing is left. It shares the trainer's process
  group: a stop signal to the group ends it too, and the next start (or `xlsr evaluate`) fills in
  what it missed.
* **true, under SLURM**: rank 0 submits one probe job per checkpoint (and one for the initial
  model) with ``validation.probe_job``'s resources, through the submitter the SLURM launcher
  registers in `PROBE_SUBMITTERS` (the library imports no launcher). A claim file created with
  ``O_EXCL`` makes sure a step is submitted once; a (re)start submits every checkpoint still
  without results; submissions run in a background thread, off the checkpoint's critical path.

While probes run beside training, pruning keeps the newest `MAX_PINNED` checkpoints that have no
probe results yet (`pinned_steps`); their lines in ``probes.jsonl`` stay after pruning deletes them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist

from xlsr.checkpoint_files import complete_checkpoints
from xlsr.config import TrainConfig
from xlsr.engine.distributed import DistEnv
from xlsr.run_dir import PROBES_DIR, ProbeLog

log = logging.getLogger("xlsr.probes")

ProbeMode = Literal["off", "inline", "local", "slurm"]
FOLLOW_NICENESS = 10
MAX_PINNED = 4  # unprobed checkpoints pruning keeps at most (a prober that never comes fills no disk)
WAIT_POLL_S = 1.0
# (cfg, run_dir, step) -> job id; registered by launchers.slurm.job for the training job's ranks.
PROBE_SUBMITTERS: list[Callable[[TrainConfig, Path, int], str]] = []


def probe_mode(cfg: TrainConfig) -> ProbeMode:
    if not cfg.validation.probe or not cfg.data.valid:
        return "off"
    under_slurm = "SLURM_JOB_ID" in os.environ
    asynchronous = cfg.validation.probes_async
    if asynchronous is None:
        asynchronous = under_slurm
    if not asynchronous:
        return "inline"
    return "slurm" if under_slurm and PROBE_SUBMITTERS else "local"


class ProbeScheduler:
    """The trainer's side of the probes: runs, starts or submits them; says which checkpoints to keep.

    Every rank holds one (the inline mode needs all of them); only rank 0 acts."""

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env, self.run_dir = cfg, env, Path(cfg.run_dir)
        self.mode: ProbeMode = probe_mode(cfg)
        self.follower: subprocess.Popen | None = None
        self._prober = None  # inline: loaded once (the probe set), on rank 0

    def start(self, beat: Callable[[], None]) -> None:
        """Training starts (or resumes): the baseline and anything an earlier job left unprobed."""
        if self.mode == "inline":
            self.probe_inline(beat)
        elif self.env.is_main and self.mode == "local":
            self._start_follower()
        elif self.mode == "slurm":
            for step in sorted({0, *self._unprobed()}):
                self.published(step)

    def probe_inline(self, beat: Callable[[], None]) -> None:
        """Inline mode: rank 0 probes every checkpoint without results while all ranks wait, beating
        every second; the random generators are left as they were."""
        if self.mode != "inline":
            return
        worker = threading.Thread(target=self._probe_missing, daemon=True) if self.env.is_main else None
        if worker is not None:
            worker.start()
        while True:
            beat()
            if worker is not None:
                worker.join(WAIT_POLL_S)
            busy = torch.tensor([int(worker is not None and worker.is_alive())])
            if self.env.world_size > 1:
                dist.all_reduce(busy, group=self.env.cpu_group)  # gloo: CPU tensors
                if worker is None:
                    time.sleep(WAIT_POLL_S)
            if not busy.item():
                return

    def _probe_missing(self) -> None:
        from xlsr.evaluation.probes import RunProber, describe

        try:
            devices = [self.env.device] if self.env.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                self._prober = self._prober or RunProber(self.run_dir, device=str(self.env.device))
                for step, path in self._prober.missing():
                    for record in self._prober.probe_step(step, path):
                        log.info("probe %s", describe(record))
            if devices:
                torch.cuda.empty_cache()
        except Exception as exc:  # probes are observers: a failure is reported, not fatal
            log.warning("probes failed (%s: %s); training goes on, `xlsr evaluate %s` fills them in",
                        type(exc).__name__, exc, self.run_dir)  # fmt: skip

    def published(self, step: int) -> None:
        """Checkpoint ``step`` is complete (0: the initial model): under SLURM, its probe job (in a
        background thread: sbatch must not hold up the ranks waiting at the save's barrier)."""
        if self.mode == "slurm" and self.env.is_main:
            threading.Thread(target=self._submit, args=(step,), daemon=True).start()

    def _submit(self, step: int) -> None:
        claim = self.run_dir / PROBES_DIR / "claims" / f"step-{step:08d}"
        try:
            claim.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return  # submitted before (an earlier job of this run)
        except OSError as exc:
            log.warning("probe job of update %d not submitted: %s", step, exc)
            return
        try:
            job_id = PROBE_SUBMITTERS[0](self.cfg, self.run_dir, step)
            os.write(fd, f"{job_id}\n".encode())
            log.info("probe job %s submitted for update %d", job_id, step)
        except Exception as exc:  # probes are observers: training goes on without them
            claim.unlink(missing_ok=True)
            log.warning("could not submit the probe job of update %d (%s); `xlsr evaluate %s` fills it in",
                        step, exc, self.run_dir)  # fmt: skip
        finally:
            os.close(fd)

    def pinned_steps(self) -> set[int]:
        """Checkpoints that probes beside training have not recorded yet (the newest `MAX_PINNED`):
        pruning keeps them."""
        if self.mode not in ("local", "slurm"):
            return set()
        return set(sorted(self._unprobed())[-MAX_PINNED:])

    def _unprobed(self) -> set[int]:
        done = {record["step"] for record in ProbeLog(self.run_dir).records()}
        return {step for step, _ in complete_checkpoints(self.cfg.checkpoint_dir) if step not in done}

    def _start_follower(self) -> None:
        logs = self.run_dir / PROBES_DIR
        logs.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "xlsr", "evaluate", str(self.run_dir), "--follow", str(os.getpid()),
                   "--device", "cpu"]  # fmt: skip
        try:
            with open(logs / "follower.log", "ab") as out:
                self.follower = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL)  # fmt: skip
            os.setpriority(os.PRIO_PROCESS, self.follower.pid, FOLLOW_NICENESS)
        except OSError as exc:
            log.warning("could not start the probe process (%s); `xlsr evaluate %s` fills the probes in",
                        exc, self.run_dir)  # fmt: skip
            return
        log.info(
            "probing checkpoints beside training (pid %d, log %s)", self.follower.pid, logs / "follower.log"
        )
