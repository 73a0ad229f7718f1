"""A real single-node SLURM cluster on loopback, for the tests and for trying `xlsr launch slurm`.

It uses Debian's packages (munge, slurmctld, slurmd, slurm-client; SLURM 22.05 on Debian 12) and
keeps its config and state in one directory. Nothing in /etc is changed; clients find the cluster
through ``SLURM_CONF``. No cgroups, no accounting (so ``sacct`` fails, which submitit tolerates).

    sudo .venv/bin/python tests/slurm_cluster.py start /tmp/xlsr-slurm     # prints: export SLURM_CONF=...
    sudo .venv/bin/python tests/slurm_cluster.py stop /tmp/xlsr-slurm

Must run as root (slurmd starts job processes as the submitting user, and the config uses
``SlurmUser=root``), like the Debian services it replaces. Run it with the project's interpreter:
it takes ``free_port`` from ``xlsr.process`` (which needs nothing outside the standard library).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from xlsr.process import free_port

PACKAGES = "slurmctld slurmd slurm-client munge"
INSTALL_HINT = f"apt-get install -y --no-install-recommends {PACKAGES}   (or: make system-deps)"
DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "srun")
PARTITION = "debug"


class ClusterError(RuntimeError):
    pass


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (None when it can)."""
    missing = [
        name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()
    ]
    if missing:
        return (
            f"SLURM/munge programs not found: {', '.join(missing)}. The SLURM tests run a real local "
            f"cluster; install the Debian packages as root: {INSTALL_HINT}"
        )
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd runs jobs as the submitting user); run as root"
    return None


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _node_line() -> str:
    """'CPUs=2 ... RealMemory=24105' of this machine, from `slurmd -C` (minus NodeName/UpTime)."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0].split()
    return " ".join(field for field in first if not field.startswith(("NodeName=", "UpTime=")))


class LocalSlurmCluster:
    """slurmctld + slurmd (+ munged when none is running) with everything under ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.hostname = socket.gethostname()
        self.started_munged = False

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (sinfo, sbatch, submitit) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ctl_port, d_port = free_port(), free_port()
        r = self.root
        lines = [
            "ClusterName=xlsrlocal",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctl_port}",
            f"SlurmdPort={d_port}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            # Time between SIGTERM and SIGKILL when a job ends early (scancel, requeue, time limit):
            # the trainer saves its checkpoint in this window.
            "KillWait=60",
            "MinJobAge=600",
            "InactiveLimit=0",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"NodeName={self.hostname} NodeAddr=127.0.0.1 {_node_line()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 60.0) -> None:
        problem = missing_requirements()
        if problem:
            raise ClusterError(problem)
        self.write_config()
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            # -i: ignore saved state from an earlier cluster in this directory.
            args = [_which(daemon), "-f", str(self.conf)] + (["-i"] if daemon == "slurmctld" else [])
            result = subprocess.run(args, capture_output=True, text=True, env=self.env)
            if result.returncode != 0:
                raise ClusterError(f"{daemon} failed to start: {result.stderr}\n{self.logs()}")
        self.wait_idle(timeout_s)

    def _start_munge(self) -> None:
        if self._munge_works():
            return
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run([_which("munged"), "--force"], capture_output=True, text=True, check=False)
        self.started_munged = True
        (self.root / "munged.started").touch()  # so `stop` (maybe another process) stops only ours
        deadline = time.monotonic() + 10
        while not self._munge_works():
            if time.monotonic() > deadline:
                raise ClusterError("munged did not start: `munge -n | unmunge` fails")
            time.sleep(0.2)

    @staticmethod
    def _munge_works() -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, check=True, timeout=5).stdout
            subprocess.run(["unmunge"], input=cred, capture_output=True, check=True, timeout=5)
            return True
        except (OSError, subprocess.SubprocessError):
            return False

    def wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env
            )
            state = result.stdout.strip() or result.stderr.strip()
            if result.returncode == 0 and state.rstrip("*") == "idle":
                return
            time.sleep(0.5)
        raise ClusterError(f"node not idle after {timeout_s:.0f}s (sinfo: {state!r})\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons this cluster started (by their pid files)."""
        if self.conf.exists():
            subprocess.run(["scancel", "--full", "--quiet", "-p", PARTITION], env=self.env, check=False)
        for name in ("slurmd.pid", "slurmctld.pid"):
            _kill_pidfile(self.root / name)
        marker = self.root / "munged.started"
        if self.started_munged or marker.exists():
            _kill_pidfile(Path("/run/munge/munged.pid"))
            marker.unlink(missing_ok=True)


def _kill_pidfile(path: Path, timeout_s: float = 15.0) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", help="directory for slurm.conf, state and logs")
    args = parser.parse_args(argv)
    cluster = LocalSlurmCluster(args.dir)
    try:
        if args.action == "start":
            cluster.start()
            print(f"SLURM is up (partition {PARTITION!r}, node {cluster.hostname}). In your shell:")
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            cluster.stop()
            print("stopped")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
