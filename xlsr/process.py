"""How an xlsr process talks to whoever started it: exit codes, stop signals, rendezvous port.

Torch-free, so launchers and login-node tools can import it cheaply. The stop protocol:

- any of ``STOP_SIGNALS`` asks training to stop: every rank finishes the current update, all ranks
  agree, a checkpoint is saved, and the process exits with ``PREEMPTED_EXIT_CODE``;
- ``PREEMPTED_EXIT_CODE`` (sysexits ``EX_TEMPFAIL``) means "stopped cleanly, run the same command
  again to continue": SLURM wrappers requeue on it;
- ``USER_ERROR_EXIT_CODE`` means the command line, config or data was wrong (one line on stderr,
  no traceback); anything else non-zero is an internal error.
"""

from __future__ import annotations

import signal
import socket

PREEMPTED_EXIT_CODE = 75
USER_ERROR_EXIT_CODE = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for a single-machine rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
