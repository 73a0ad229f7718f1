"""One job per run directory: rank 0 holds an exclusive lock on ``<run_dir>/.xlsr.lock`` for the
job's lifetime.

The lock is a POSIX record lock (``fcntl.lockf``): the kernel releases it when the process dies,
however it dies, so a crashed job never blocks the next one; NFS (v3 with lockd, v4) and Lustre
(mounted with ``flock``/``localflock``) honour it across hosts. The file itself records who holds
it (host, pid, SLURM job id, start time), so a second job can say whom it collided with.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from xlsr.process import UserError

LOCK_NAME = ".xlsr.lock"


class RunDirLockedError(UserError):
    pass


class RunDirLock:
    """Holds the lock until ``release()`` or the end of the process."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirLockedError(
                f"{self.path.parent} is in use by another job ({self._holder()}); wait for it to end, "
                "stop it, or choose another run_dir"
            ) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return "holder unknown"
        job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
        return f"host {holder.get('host')}, pid {holder.get('pid')}{job}, since {holder.get('since')}"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
