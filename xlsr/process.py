"""How an xlsr process talks to whoever started it: exit codes, stop signals, rendezvous port.

Torch-free, so launchers and login-node tools can import it cheaply. The stop protocol:

- any of ``STOP_SIGNALS`` asks training to stop: every rank finishes the current update, all ranks
  agree, a checkpoint is saved, and the process exits with ``PREEMPTED_EXIT_CODE``;
- ``PREEMPTED_EXIT_CODE`` (sysexits ``EX_TEMPFAIL``) means "stopped cleanly, run the same command
  again to continue": SLURM wrappers requeue on it;
- ``USER_ERROR_EXIT_CODE`` means the command line, config or data was wrong (one line on stderr,
  no traceback); anything else non-zero is an internal error;
- Ctrl-C (``SIGINT``, sent by the terminal to the whole foreground process group) is a stop request
  like the others, announced once by rank 0; a second Ctrl-C aborts at once without saving
  (``ABORTED_EXIT_CODE``, 128 + SIGINT as shells report it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

PREEMPTED_EXIT_CODE = 75
# The health sentinel stopped the run (health.<signal>=stop, or too many rollbacks): run it again
# only after a change (docs/training.md, "Health"). sysexits EX_CONFIG.
HEALTH_EXIT_CODE = 78
# A rank made no progress for health.hang_s: stacks in <run_dir>/hangs/; the same command resumes.
# sysexits EX_PROTOCOL.
HANG_EXIT_CODE = 76
USER_ERROR_EXIT_CODE = 2
ABORTED_EXIT_CODE = 130
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
INTERRUPT = signal.SIGINT
CTRL_C_STOPPING = "stopping: saving a checkpoint after this update (Ctrl-C again to abort without saving)"
CTRL_C_ABORTED = "aborted by a second Ctrl-C: no checkpoint saved (the last one is kept)"
# Set by `xlsr launch local` in its processes: it reports an abort itself, in one line.
LAUNCHED_ENV = "XLSR_LAUNCHED"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for a single-machine rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class UserError(Exception):
    """Wrong input (command line, config, data, paths): shown as one line, exit code 2, no traceback.

    The library's error types for user input (config, shard index, checkpoint, launch) derive from
    it; any other exception is an internal error and keeps its traceback.
    """


class StopRequest:
    """Remembers that a stop signal arrived; training checks it between updates.

    ``install()`` makes every ``STOP_SIGNALS`` signal set the flag instead of killing the process.
    Install it first thing, before anything slow (joining the process group, building the model),
    so a stop during start-up is not lost: training then stops after its first update, or exits
    with ``PREEMPTED_EXIT_CODE`` before it if it never starts.
    """

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self, ctrl_c: bool = False) -> None:
        """Take the stop signals over; with ``ctrl_c`` (the command line's processes), SIGINT too.
        `xlsr.train` called from Python leaves SIGINT to its caller (a notebook's KeyboardInterrupt,
        submitit under SLURM)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        if ctrl_c:
            signal.signal(INTERRUPT, self._interrupt)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signal = signum
        logging.getLogger("xlsr.train").warning(
            "got %s: saving a checkpoint after this update", signal.Signals(signum).name
        )

    def _interrupt(self, signum: int, _frame: object) -> None:
        """The first Ctrl-C stops like any stop signal, announced by one process only. The second
        aborts: a rank of a multi-process job dies by the signal at once (the kernel's default
        action: no traceback, even inside a collective), its launcher says so in one line; a single
        process says it itself."""
        self.signal = signum
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or LAUNCHED_ENV in os.environ
        if os.environ.get("RANK", "0") == "0":
            _say(CTRL_C_STOPPING)
        signal.signal(INTERRUPT, signal.SIG_DFL if launched else _abort)


def _say(line: str) -> None:
    """One line on stderr from a signal handler: a raw write, which cannot re-enter a buffered
    write the interrupted code was in the middle of."""
    os.write(sys.stderr.fileno(), (line + "\n").encode())


def _abort(_signum: int, _frame: object) -> None:
    _say(CTRL_C_ABORTED)
    os._exit(ABORTED_EXIT_CODE)
