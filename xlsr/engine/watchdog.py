"""The hang watchdog: a rank that makes no progress for ``health.hang_s`` ends the job.

The training loop calls ``beat(phase, step)`` at every phase change (data, update, validation, save);
that is two attribute writes, no sync. A daemon thread per rank writes the rank's last progress to
``<run_dir>/heartbeats/rank-R.json`` every few seconds and, once ``hang_s`` pass without a beat:

1. dumps every thread's Python stack of this rank (``faulthandler``) to
   ``<run_dir>/hangs/rank-R-<pid>.txt``;
2. if this rank is the one whose progress stopped first (by the heartbeat files of all ranks on the
   shared run directory), or that rank's process is gone, prints one line naming it, its host, its
   phase and update;
3. exits with ``HANG_EXIT_CODE`` at once (a rank blocked in a collective never returns from it).

Every rank of a hung job fires within ``hang_s`` of its own last beat: the stuck one, and those
waiting for it in a collective, so every rank's stacks end up on disk.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from xlsr.fileio import atomic_write_text

HANG_EXIT_CODE = 76  # sysexits EX_PROTOCOL: the job stopped answering; run it again to resume
HEARTBEAT_DIR, HANG_DIR = "heartbeats", "hangs"
log = logging.getLogger("xlsr.train")


class Watchdog:
    def __init__(self, run_dir: Path, rank: int, hang_s: float):
        self.run_dir, self.rank, self.hang_s = Path(run_dir), rank, hang_s
        self.phase, self.step = "start-up", 0
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="xlsr-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.hang_s > 0:
            (self.run_dir / HEARTBEAT_DIR).mkdir(parents=True, exist_ok=True)
            self._thread.start()
        return self

    def beat(self, phase: str, step: int) -> None:
        self.phase, self.step, self._last = phase, step, time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        period = min(30.0, self.hang_s / 4)
        while not self._stopped.wait(period):
            idle = time.monotonic() - self._last
            self._write_heartbeat(idle)
            if idle >= self.hang_s:
                self._fire(idle)

    def _write_heartbeat(self, idle: float) -> None:
        now = time.time()
        record = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid()}
        record |= {"phase": self.phase, "step": self.step, "progress_at": now - idle, "written_at": now}
        # A full or read-only disk must not end training; the stack dump will say more.
        with contextlib.suppress(OSError):
            atomic_write_text(self.run_dir / HEARTBEAT_DIR / f"rank-{self.rank}.json", json.dumps(record))

    def _fire(self, idle: float) -> None:
        stacks = self.run_dir / HANG_DIR / f"rank-{self.rank}-{os.getpid()}.txt"
        try:
            stacks.parent.mkdir(parents=True, exist_ok=True)
            with open(stacks, "w") as out:
                faulthandler.dump_traceback(out, all_threads=True)
        except OSError:
            faulthandler.dump_traceback(sys.stderr, all_threads=True)
        culprit = self._first_to_stop()
        if culprit is None or culprit["rank"] == self.rank:  # one rank speaks: the first to stop
            print(
                f"hang: rank {self.rank} on {socket.gethostname()} made no progress for {idle:.0f} s "
                f"({self.phase}, update {self.step}); every rank's stacks are in "
                f"{self.run_dir / HANG_DIR}; exiting {HANG_EXIT_CODE} (run the same command to resume)",
                file=sys.stderr,
                flush=True,
            )
        os._exit(HANG_EXIT_CODE)

    def _first_to_stop(self) -> dict | None:
        """Among the ranks whose watchdog is alive (heartbeat refreshed lately: not a dead process or
        an earlier job), the one whose last progress is the oldest."""
        records, now = [], time.time()
        for path in (self.run_dir / HEARTBEAT_DIR).glob("rank-*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if now - record.get("written_at", 0) < 2 * min(30.0, self.hang_s / 4) + 5:
                records.append(record)
        return min(records, key=lambda r: (r["progress_at"], r["rank"]), default=None)
