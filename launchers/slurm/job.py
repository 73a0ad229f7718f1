"""Inside a SLURM training job: signal routing, the task every rank runs, and the requeue.

Each task exports the torch.distributed variables from SLURM's
(``submitit.helpers.TorchDistributedEnvironment``), loads ``<run_dir>/config.yaml`` and calls
``xlsr.train`` in-process.

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
2. The trainer's handlers (``xlsr.process.STOP_SIGNALS``) catch the signal on every rank: the
   current update finishes, all ranks agree (CPU all-reduce), save a complete checkpoint, and
   ``xlsr.train`` returns with exit code ``PREEMPTED_EXIT_CODE`` (75). The save ends with a barrier,
   so when rank 0 returns the checkpoint is complete on every rank.
3. Rank 0 then decides about the requeue from SLURM's view of the job (``requeue_decision``):

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

A rank whose peer is gone (its task was killed, its node died) fails in its next collective: at
once when the peer's connection closes, after ``distributed.timeout_s`` when it just stops
answering. It logs one line that says so and names the checkpoint a new submission of the same
command resumes from, and exits with ``LOST_RANK_EXIT_CODE``; the job ends FAILED (not requeued).
A rank that is alive but makes no progress is the hang watchdog's (`xlsr.engine.watchdog`): it ends
every rank with exit code 76 and the rank that declares the hang requeues the job (the same rules as
above: ``launcher.max_requeues``).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

from launchers.slurm.cluster import job_state, requeue_job
from launchers.slurm.rundir import config_path, read_saved_config
from xlsr.engine.watchdog import HANG_HOOKS
from xlsr.process import PREEMPTED_EXIT_CODE, STOP_SIGNALS, USER_ERROR_EXIT_CODE

log = logging.getLogger("xlsr.launch")
LOST_RANK_EXIT_CODE = 1
# gloo's and NCCL's words for a peer that is gone (torch raises some of them as plain RuntimeError).
_LOST_PEER = re.compile(
    r"Connection (closed|reset) by peer|Broken pipe|Timed out waiting|Socket Timeout|"
    r"NCCL communicator was aborted|watchdog caught collective operation timeout",
    re.IGNORECASE,
)


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
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment

        job_id = os.environ.get("SLURM_JOB_ID") or str(JobEnvironment().job_id)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        os.environ.setdefault("MASTER_PORT", str(master_port(job_id, restarts)))  # a user's value wins
        dist_env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        _configure_logging(dist_env.rank)
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            os.environ.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
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
        # A hung job is requeued by the rank that declares the hang (xlsr.engine.watchdog).
        requeue = lambda _line: requeue_or_stop(job_id, restarts, self.max_requeues, "hung")  # noqa: E731
        HANG_HOOKS.append(requeue)
        from launchers.slurm.probe_job import submit_probe_job
        from xlsr.engine.probing import PROBE_SUBMITTERS

        PROBE_SUBMITTERS.append(submit_probe_job)  # probes beside training: a job per checkpoint
        try:
            code = train_run_dir(Path(self.run_dir))
        finally:
            HANG_HOOKS.remove(requeue)
            PROBE_SUBMITTERS.remove(submit_probe_job)
            signals.close()
        if code == 0:
            return {"status": "finished", "run_dir": self.run_dir, "rank": dist_env.rank}
        if code == PREEMPTED_EXIT_CODE and dist_env.rank == 0:
            requeue_or_stop(job_id, restarts, self.max_requeues)
        sys.stdout.flush()
        sys.stderr.flush()
        # SystemExit, not an exception: submitit then writes no result file (the job is not done).
        raise SystemExit(code)


# Below Linux's default ephemeral range (32768-60999), where outgoing connections take their ports:
# submitit's default (a port in 20000-60000 from the job id) can collide with one (EADDRINUSE).
MASTER_PORTS = range(20_000, 32_768)


def master_port(job_id: str, restarts: int) -> int:
    """The rendezvous port of one run of a job: the same on every node (it depends on the job id and
    the restart count only), another after a requeue (the old one may still be in TIME_WAIT)."""
    digest = zlib.crc32(f"{job_id}/{restarts}".encode())
    return MASTER_PORTS[digest % len(MASTER_PORTS)]


def _configure_logging(rank: int) -> None:
    """INFO (or $XLSR_LOG_LEVEL) on rank 0, warnings and errors only on the other ranks."""
    level = os.environ.get("XLSR_LOG_LEVEL", "INFO") if rank == 0 else "WARNING"
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("submitit").propagate = False  # it has its own handlers


def train_run_dir(run_dir: Path) -> int:
    """Train on the run directory's saved config; returns the exit code (0, 75, 78 from the health
    sentinel, 2 for a bad config or XLSR_FAULT, or ``LOST_RANK_EXIT_CODE`` when another rank of the
    job is gone). A hang ends the process from the watchdog thread (76)."""
    from xlsr import train
    from xlsr.config import ConfigError
    from xlsr.faults import FaultSpecError

    cfg = None
    try:
        cfg = read_saved_config(run_dir)
        if cfg is None:
            raise ConfigError(f"config file not found: {config_path(run_dir)}")
        return train(cfg).exit_code
    except (ConfigError, FaultSpecError) as exc:
        log.error("cannot train %s: %s", run_dir, exc)
        return USER_ERROR_EXIT_CODE
    except Exception as exc:
        if cfg is None or not lost_another_rank(exc):
            raise
        log.error("%s", lost_rank_text(exc, cfg.checkpoint_dir))
        return LOST_RANK_EXIT_CODE


def lost_another_rank(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, is a collective or rendezvous that failed because another
    rank is gone (its task was killed, its node died, the network between them failed)."""
    import torch.distributed as dist

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, dist.DistError) or _LOST_PEER.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def lost_rank_text(exc: BaseException, checkpoint_dir: Path) -> str:
    """One line for a rank that lost another one: what happened, and how to continue."""
    from xlsr.checkpoint_files import complete_checkpoints

    rank, job_id = os.environ.get("RANK", "?"), os.environ.get("SLURM_JOB_ID", "?")
    saved = complete_checkpoints(checkpoint_dir)
    resume = f"{saved[-1][1]} (update {saved[-1][0]})" if saved else "none yet: the run starts over"
    cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"rank {rank} lost contact with another rank of job {job_id} ({cause}): one of its tasks or "
        "nodes died, or the network between them failed; this job ends. Submit the same command again "
        f"to resume from the last complete checkpoint: {resume}"
    )


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


def requeue_or_stop(
    job_id: str, restarts: int, max_requeues: int, what: str = "stopped after saving a checkpoint"
) -> None:
    requeue, reason = requeue_decision(job_state(job_id), restarts, max_requeues)
    log.warning("job %s %s: %s", job_id, what, reason)
    if not requeue:
        return
    problem = requeue_job(job_id)
    if problem is not None:
        log.error("scontrol requeue %s failed (%s); submit the same command again", job_id, problem)
    else:
        log.warning("requeued job %s: it restarts from its newest checkpoint", job_id)
