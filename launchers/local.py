"""`xlsr launch local`: N training processes on this machine, torchrun-style.

Each process gets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and runs
``python -m xlsr train``. Stop signals are forwarded to every process (they save and exit). Ctrl-C
is not forwarded: the terminal sends it to the whole process group, so each process already has it
(the first stops and saves; at the second the processes die at once, and this launcher kills what is
left, says so in one line and returns ``ABORTED_EXIT_CODE``). If one process fails, the others are
terminated after a grace period, and its exit code is returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from xlsr.process import (
    ABORTED_EXIT_CODE,
    CTRL_C_ABORTED,
    HANG_EXIT_CODE,
    INTERRUPT,
    LAUNCHED_ENV,
    STOP_SIGNALS,
    free_port,
)


def launch_local(
    nproc: int,
    train_args: list[str],
    grace_s: float = 30.0,
    env: dict | None = None,
    entry: tuple[str, ...] = ("-m", "xlsr", "train"),
) -> int:
    """Run ``python <entry> <train_args>`` in ``nproc`` processes; returns the job's exit code."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    base_env = {**os.environ, **(env or {})}
    base_env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
    )
    base_env[LAUNCHED_ENV] = "local"  # its processes leave the abort line to this launcher
    # Each rank gets an equal share of the cores unless the user said otherwise.
    base_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    procs = [
        subprocess.Popen(
            [sys.executable, *entry, *train_args],
            env={**base_env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in range(nproc)
    ]
    interrupts: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _f: _forward(procs, signum)) for sig in STOP_SIGNALS}
    previous[INTERRUPT] = signal.signal(INTERRUPT, lambda signum, _f: interrupts.append(signum))
    try:
        return _wait(procs, grace_s, interrupts)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# How long the other ranks get to leave by themselves after one exits 76 (the watchdog's own wait).
HANG_GRACE_S = 60.0


def _forward(procs: list[subprocess.Popen], signum: int) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)


def _wait(procs: list[subprocess.Popen], grace_s: float, interrupts: list[int]) -> int:
    while True:
        codes = [proc.poll() for proc in procs]
        if len(interrupts) >= 2:  # after polling: processes killed by that Ctrl-C are not failures
            _terminate(procs, grace_s=0.0)
            print(CTRL_C_ABORTED, file=sys.stderr, flush=True)
            return ABORTED_EXIT_CODE
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            if HANG_EXIT_CODE in failed:  # the hang watchdog ends every rank itself, in order
                _wait_for_exit(procs, HANG_GRACE_S)
            _terminate(procs, grace_s)
            return failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)


def _wait_for_exit(procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
        time.sleep(0.2)


def _terminate(procs: list[subprocess.Popen], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
