"""The hang watchdog: a job whose rank makes no progress for ``health.hang_s`` ends, with every
rank's Python stacks on disk and one line naming the rank that stopped first.

The loop calls ``beat(phase, step)`` whenever it enters a phase (data, update, validation, save):
two attribute writes, no synchronisation. A daemon thread per rank, every ``period`` seconds:

1. refreshes ``<run_dir>/heartbeats/<job>/rank-R.json`` (this rank's last progress, its phase,
   host and pid), so any rank can tell which one stopped first, even one frozen with the GIL held;
2. if another rank has declared a hang (``<run_dir>/hangs/<job>/HANG``), dumps its own stacks there
   and exits ``HANG_EXIT_CODE`` at once;
3. if this rank has made no progress for ``hang_s``: dumps its stacks, declares the hang (the first
   rank to do so prints the one line and runs the hang hooks, e.g. a SLURM requeue), waits until
   every rank's stacks are written, and exits ``HANG_EXIT_CODE``.

Every rank leaves through its watchdog, in that order: none is left raising "connection closed"
from a collective whose peer has gone. ``<job>`` is the job's checkpoint token, so a requeued job
never mistakes an earlier job's files for its own. ``hang_s`` must be shorter than
``distributed.timeout_s`` (config validation), or a collective would time out first.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from xlsr.fileio import atomic_write_text

HANG_EXIT_CODE = 76  # sysexits EX_PROTOCOL: the job stopped answering; run it again to resume
HEARTBEAT_DIR, HANG_DIR, HANG_MARKER = "heartbeats", "hangs", "HANG"
# Called (with the one line) by the rank that declares a hang, before the job exits: a launcher's
# way to requeue the job (`launchers.slurm.job`).
HANG_HOOKS: list[Callable[[str], None]] = []


class Watchdog:
    def __init__(self, run_dir: Path, job: str, rank: int, world_size: int, hang_s: float):
        self.rank, self.world_size, self.hang_s = rank, world_size, hang_s
        self.heartbeats = Path(run_dir) / HEARTBEAT_DIR / job
        self.hangs = Path(run_dir) / HANG_DIR / job
        self.period = min(max(hang_s / 10, 0.2), 10.0)
        self.phase, self.step = "start-up", 0
        self._last = time.monotonic()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="xlsr-watchdog", daemon=True)

    def start(self) -> Watchdog:
        if self.hang_s > 0:
            self.heartbeats.mkdir(parents=True, exist_ok=True)
            self._write_heartbeat(0.0)
            self._thread.start()
        return self

    def beat(self, phase: str, step: int) -> None:
        self.phase, self.step, self._last = phase, step, time.monotonic()

    def stop(self) -> None:
        """A clean end: the thread stops and this rank's heartbeat file goes."""
        if self._thread.is_alive():
            self._stopped.set()
            self._thread.join(timeout=2 * self.period)
            with contextlib.suppress(OSError):
                (self.heartbeats / f"rank-{self.rank}.json").unlink()
                self.heartbeats.rmdir()  # the last rank out removes the job's folder

    def _watch(self) -> None:
        while not self._stopped.wait(self.period):
            idle = time.monotonic() - self._last
            self._write_heartbeat(idle)
            if (self.hangs / HANG_MARKER).exists():
                self._dump_stacks()
                os._exit(HANG_EXIT_CODE)
            if idle >= self.hang_s:
                self._fire(idle)

    def _write_heartbeat(self, idle: float) -> None:
        now = time.time()
        record = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "phase": self.phase}
        record |= {"step": self.step, "progress_at": now - idle, "written_at": now}
        # A full or read-only disk must not end training; the stack dump will say more.
        with contextlib.suppress(OSError):
            atomic_write_text(self.heartbeats / f"rank-{self.rank}.json", json.dumps(record))

    def _fire(self, idle: float) -> None:
        self._dump_stacks()
        culprit = self._first_to_stop() or {"rank": self.rank, "host": socket.gethostname()}
        culprit.setdefault("phase", self.phase)
        culprit.setdefault("step", self.step)
        line = (
            f"hang: rank {culprit['rank']} on {culprit['host']} made no progress for {self.hang_s:.0f} s "
            f"({culprit['phase']}, after update {culprit['step']}); every rank's stacks are in "
            f"{self.hangs}; exiting {HANG_EXIT_CODE} (the same command resumes from the last checkpoint)"
        )
        if self._declare(line):
            print(line, file=sys.stderr, flush=True)
            for hook in HANG_HOOKS:
                with contextlib.suppress(Exception):  # a failed requeue must not keep the job alive
                    hook(line)
            self._wait_for_stacks()
        os._exit(HANG_EXIT_CODE)

    def _declare(self, line: str) -> bool:
        """Create the hang marker; False if another rank already did."""
        try:
            descriptor = os.open(self.hangs / HANG_MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        except OSError:
            return True  # no marker possible (disk full): speak anyway
        with os.fdopen(descriptor, "w") as marker:
            marker.write(line + "\n")
        return True

    def _dump_stacks(self) -> None:
        final = self.hangs / f"rank-{self.rank}.txt"
        try:
            self.hangs.mkdir(parents=True, exist_ok=True)
            temporary = final.with_suffix(".tmp")
            with open(temporary, "w") as out:
                out.write(f"rank {self.rank} on {socket.gethostname()} (pid {os.getpid()}): {self.phase}, "
                          f"after update {self.step}\n")  # fmt: skip
                faulthandler.dump_traceback(out, all_threads=True)
            temporary.rename(final)
        except OSError:
            faulthandler.dump_traceback(sys.stderr, all_threads=True)

    def _wait_for_stacks(self) -> None:
        """Until every rank whose heartbeat is alive has written its stacks (at most 3 periods)."""
        deadline = time.monotonic() + 3 * self.period + 1
        while time.monotonic() < deadline:
            alive = {record["rank"] for record in self._heartbeats() if not self._stale(record)}
            written = {int(p.stem.split("-")[1]) for p in self.hangs.glob("rank-*.txt")}
            if alive <= written:
                return
            time.sleep(self.period / 4)

    def _first_to_stop(self) -> dict | None:
        """The rank whose last progress is the oldest (a rank whose heartbeat stopped too counts)."""
        return min(self._heartbeats(), key=lambda record: record["progress_at"], default=None)

    def _heartbeats(self) -> list[dict]:
        records = []
        for path in self.heartbeats.glob("rank-*.json"):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def _stale(self, record: dict) -> bool:
        return time.time() - record["written_at"] > 3 * self.period
