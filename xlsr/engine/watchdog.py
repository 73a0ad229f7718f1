"""The hang watchdog: a job whose rank makes no progress for ``health.hang_s`` ends, with every
rank's Python stacks on disk and one line naming the rank that stopped first.

The loop calls ``beat(phase, step)`` whenever it enters a phase (data, update, validation, save):
two attribute writes, no synchronisation. A daemon thread per rank, every ``period`` seconds:

1. if this rank has made no progress for ``hang_s``, *fires*: dumps its stacks to
   ``<run_dir>/hangs/<job>/rank-R.txt`` and declares the hang (``HANG`` beside them); the first rank
   to declare prints the one line, naming the rank that stopped first by the heartbeats;
2. if another rank has declared a hang, dumps its own stacks;
3. refreshes ``<run_dir>/heartbeats/<job>/rank-R.json`` (its step, phase, host), so any rank can
   name the one that stopped first, even one frozen with the GIL held.

A rank that has dumped its stacks waits (a few periods at most) until every rank's are on disk, and
exits ``HANG_EXIT_CODE``; the declaring rank runs the hang hooks (a SLURM requeue) last. A rank's
main thread that meets a closed connection meanwhile exits the same way (`exit_if_hung`), so the job
ends without tracebacks. A rank that failed with an error keeps its heartbeat, marked failed: peers
waiting for it name it and exit 1 (an internal error is not requeued). If the watchdog thread itself
cannot run (a file system that stopped answering), faulthandler's C-level timer dumps the stacks to
stderr and ends the process ``BACKSTOP_S`` later. ``<job>`` is the job's checkpoint token, so a
requeued job never mistakes an earlier job's files for its own.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from xlsr.fileio import atomic_write_text
from xlsr.process import HANG_EXIT_CODE

FAILED_EXIT_CODE = 1  # a peer failed with an error: not a hang, not requeued
HEARTBEAT_DIR, HANG_DIR, HANG_MARKER = "heartbeats", "hangs", "HANG"
FAILED_PHASE = "failed"
# The order of a rank's phases within one update: at the same step, the rank in an earlier phase is
# the one the others wait for.
PHASES = ("start-up", "data", "update", "metrics", "validation", "checkpoint save", "rollback", "closing")
BACKSTOP_S = 120.0  # after hang_s, if the watchdog thread is stuck itself
# Called (with the one line) by the rank that declares a hang, before it exits: a launcher's way to
# requeue the job (`launchers.slurm.job`).
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
        self._exiting = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="xlsr-watchdog", daemon=True)

    def start(self) -> Watchdog:
        """Start watching (the clock starts now); rank 0 clears earlier jobs' heartbeats (those jobs
        are gone: this one holds the run's lock)."""
        if self.hang_s <= 0:
            return self
        if self.rank == 0:
            for earlier in self.heartbeats.parent.glob("*"):
                if earlier != self.heartbeats:
                    shutil.rmtree(earlier, ignore_errors=True)
        self.heartbeats.mkdir(parents=True, exist_ok=True)
        self.beat("start-up", 0)
        self._write_heartbeat()
        self._thread.start()
        return self

    def beat(self, phase: str, step: int) -> None:
        self.phase, self.step, self._last = phase, step, time.monotonic()

    def stop(self, failure: str | None = None) -> None:
        """End watching. A clean end removes this rank's heartbeat; a ``failure`` (the error's type)
        is left in it, for peers that wait for this rank in a collective."""
        if not self._thread.is_alive():
            return
        self._stopped.set()
        self._thread.join(timeout=2 * self.period)
        faulthandler.cancel_dump_traceback_later()
        if failure is not None:
            self.beat(FAILED_PHASE, self.step)
            self._write_heartbeat(failure)
            return
        with contextlib.suppress(OSError):
            (self.heartbeats / f"rank-{self.rank}.json").unlink()
            self.heartbeats.rmdir()  # the last rank out removes the job's folder

    def exit_if_hung(self) -> None:
        """From the main thread, on an error: a declared hang explains it (a collective whose peer is
        gone); leave as the watchdog would, without the error's traceback."""
        if self._thread.is_alive() and (self.hangs / HANG_MARKER).exists():
            self._leave(declared=False, line="")

    def _watch(self) -> None:
        while not self._stopped.wait(self.period):
            faulthandler.dump_traceback_later(self.hang_s + BACKSTOP_S, exit=True)
            if time.monotonic() - self._last >= self.hang_s:
                self._fire()
            if (self.hangs / HANG_MARKER).exists():
                self._leave(declared=False, line="")
            self._write_heartbeat()

    def _write_heartbeat(self, failure: str | None = None) -> None:
        record = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "phase": self.phase}
        record |= {"step": self.step, "progress_at": time.time() - (time.monotonic() - self._last)}
        if failure is not None:
            record["failure"] = failure
        # A full or read-only disk must not end training; the stack dump will say more.
        with contextlib.suppress(OSError):
            atomic_write_text(self.heartbeats / f"rank-{self.rank}.json", json.dumps(record))

    def _fire(self) -> None:
        culprit = self._first_to_stop()
        failed = culprit.get("failure")
        where = f"rank {culprit['rank']} on {culprit['host']}"
        if failed:
            line = (f"hang: {where} failed ({failed}, see its log) and every other rank waited for it; "
                    f"stacks in {self.hangs}; exiting {FAILED_EXIT_CODE}")  # fmt: skip
        else:
            line = (f"hang: {where} made no progress for {self.hang_s:.0f} s ({culprit['phase']}, after "
                    f"update {culprit['step']}); every rank's stacks are in {self.hangs}; exiting "
                    f"{HANG_EXIT_CODE} (the same command resumes from the last checkpoint)")  # fmt: skip
        self._leave(declared=self._declare(line), line=line, code=FAILED_EXIT_CODE if failed else None)

    def _leave(self, declared: bool, line: str, code: int | None = None) -> None:
        """Dump this rank's stacks, wait for every rank's, exit; the declaring rank speaks and runs
        the hooks last (a requeue signals every rank of the job)."""
        self._exiting.acquire()  # the other thread (watchdog or main) may be leaving: it ends the process
        self._dump_stacks()
        self._wait_for_stacks()
        if declared:
            print(line, file=sys.stderr, flush=True)
            for hook in HANG_HOOKS if code is None else []:
                with contextlib.suppress(Exception):  # a failed requeue must not keep the job alive
                    hook(line)
        else:
            time.sleep(self.period)  # the declaring rank leaves last
        os._exit(code or HANG_EXIT_CODE)

    def _declare(self, line: str) -> bool:
        """Create the hang marker; False if another rank already did."""
        try:
            self.hangs.mkdir(parents=True, exist_ok=True)
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
        """Until every rank's stacks are written (a frozen rank never writes: 3 periods at most)."""
        deadline = time.monotonic() + 3 * self.period + 1
        while time.monotonic() < deadline and len(list(self.hangs.glob("rank-*.txt"))) < self.world_size:
            time.sleep(self.period / 4)

    def _first_to_stop(self) -> dict:
        """A rank that failed, else the one furthest behind: the lowest step, then the earliest phase
        (clocks of different hosts are compared only to break a tie)."""
        own = {"rank": self.rank, "host": socket.gethostname(), "phase": self.phase, "step": self.step}
        records = self._heartbeats() or [own | {"progress_at": 0.0}]

        def behind(record: dict) -> tuple:
            phase = PHASES.index(record["phase"]) if record["phase"] in PHASES else len(PHASES)
            return ("failure" not in record, record["step"], phase, record["progress_at"])

        return min(records, key=behind)

    def _heartbeats(self) -> list[dict]:
        records = []
        for path in self.heartbeats.glob("rank-*.json"):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records


def hung_before(run_dir: Path) -> bool:
    """Whether a job of this run directory has declared a hang."""
    return any((Path(run_dir) / HANG_DIR).glob(f"*/{HANG_MARKER}"))
