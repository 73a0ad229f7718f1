"""A real SLURM cluster of N nodes on one machine, for the tests and for trying `xlsr launch slurm`.

Every daemon runs in its own Linux network and UTS namespace, on a private bridge: slurmctld on
``<net>.2`` (hostname ``ctl``), the slurmd of node ``i`` on ``<net>.(10+i)`` (hostname ``node<i>``),
the machine itself on ``<net>.1``. A job on two nodes therefore has tasks with different hostnames
and addresses that talk TCP to each other, as on two machines; the filesystem, the process table and
the CPUs stay shared (each node offers all of the machine's CPUs and 1/N of its memory).

    sudo .venv/bin/python tests/slurm_cluster.py start /tmp/xlsr-slurm --nodes 2   # prints the export line
    sudo .venv/bin/python tests/slurm_cluster.py stop /tmp/xlsr-slurm

Uses Debian's packages (munge, slurmctld, slurmd, slurm-client; SLURM 22.05 on Debian 12) and the
stock ``slurmd -N <name>``; needs root (namespaces, and slurmd runs jobs as the submitting user).

What it touches: everything (config, state, spool, logs, its own munge key and socket, the
namespace handles, the nodes' hosts file) lives in the state directory, except the bridge and one
veth pair per daemon, named after the directory and removed by ``stop``. Nothing in /etc changes:
each slurmd gets a private mount namespace in which the directory's ``hosts`` file (the machine's
plus the nodes) covers /etc/hosts, so job tasks resolve ``node1`` (submitit's MASTER_ADDR). Clients
find the cluster through ``SLURM_CONF``. ``stop`` ends processes only by the pids its daemons
recorded and, after them, whatever is left inside its own namespaces (job tasks of its slurmd).

Facts this design rests on:

- The namespaces have no default route: a name lookup that is not in the hosts file then fails at
  once, instead of waiting ~10 s for a DNS server that cannot be reached (torch's rendezvous does
  such lookups).
- The own munged and ``AuthInfo=socket=...`` leave the machine's munge alone.
- A requeued job must not be made eligible (``scontrol update StartTime=now``) in the second of
  its requeue: slurmd still revokes the old credential and the job fails ("Job credential revoked").
  Wait until it is PENDING and a second more (``release_requeued``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = "slurmctld slurmd slurm-client munge iproute2"  # + util-linux: unshare, nsenter, mount
INSTALL_HINT = f"apt-get install -y --no-install-recommends {PACKAGES}   (or: make system-deps)"
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "srun")
NAMESPACE_TOOLS = ("ip", "unshare", "nsenter", "mount", "umount")
PARTITION = "debug"  # every node, the default, no time limit
SHORT_PARTITION = "short"  # node1 only, 30 minutes: a partition with limits, for the launcher's checks
SHORT_MAX_TIME_MIN = 30
CONTROLLER = "ctl"
CTLD_PORT, SLURMD_PORT = 6817, 6818  # inside the namespaces: never clash with the machine's ports


class ClusterError(RuntimeError):
    pass


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (None when it can)."""
    missing = [name for name in (*PROGRAMS, *NAMESPACE_TOOLS) if _which(name) is None]
    if missing:
        return (
            f"programs not found: {', '.join(missing)}. The SLURM tests run a real local cluster; "
            f"install the Debian packages as root: {INSTALL_HINT}"
        )
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (namespaces; slurmd runs jobs as the submitting user)"
    return None


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():
        found = str(Path("/usr/sbin", name))
    return found


def _run(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise ClusterError(f"`{shlex.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _machine_shape() -> dict[str, int]:
    """CPUs, sockets, cores, threads and memory (MB) of this machine, from `slurmd -C`."""
    out = _run(_which("slurmd") or "slurmd", "-C").stdout
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", out.splitlines()[0])}


class LocalSlurmCluster:
    """slurmctld, N slurmd and a munged, each node in its own namespaces, everything under ``root``."""

    def __init__(self, root: str | os.PathLike, nodes: int = 2):
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        # Interface names (at most 15 characters) and the subnet derive from the directory, so two
        # clusters in two directories do not collide, and `stop` finds what `start` made.
        self.tag = "xs" + hashlib.sha1(str(self.root).encode()).hexdigest()[:6]
        self.bridge = f"{self.tag}br"
        self.subnet: ipaddress.IPv4Network | None = None

    # ----------------------------------------------------------------------------------------------
    # Names and addresses

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (sinfo, sbatch, submitit) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def address(self, name: str) -> str:
        """The IP of the bridge ('host'), the controller or a node."""
        assert self.subnet is not None
        offset = {"host": 1, CONTROLLER: 2}.get(name) or 10 + int(name.removeprefix("node"))
        return str(self.subnet.network_address + offset)

    def _ns_file(self, name: str, kind: str) -> Path:
        return self.root / "ns" / f"{name}.{kind}"

    def _veth(self, name: str) -> str:
        return f"{self.tag}{'c' if name == CONTROLLER else name.removeprefix('node')}"

    def _members(self) -> list[str]:
        return [CONTROLLER, *self.nodes]

    # ----------------------------------------------------------------------------------------------
    # Start

    def start(self, timeout_s: float = 60.0) -> None:
        problem = missing_requirements()
        if problem:
            raise ClusterError(problem)
        self.stop()  # whatever an earlier, crashed start left in this directory
        for sub in ("state", "spool", "log", "ns", "run", "munge"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        try:
            self.subnet = self._free_subnet()
            self._save_layout()
            self.write_config()
            self._setup_network()
            self._start_munged()
            self._start_daemon(CONTROLLER, "slurmctld", "-i")  # -i: ignore any saved state
            for node in self.nodes:
                (self.root / "spool" / node).mkdir()
                self._start_daemon(node, "slurmd", "-N", node)
            self.wait_idle(timeout_s)
        except ClusterError as exc:
            logs = self.logs()
            self.stop()
            raise ClusterError(f"{exc}\n{logs}") from None
        except BaseException:
            self.stop()
            raise

    def _free_subnet(self) -> ipaddress.IPv4Network:
        """A /24 in 10.200-249.x.0 that no interface or route of this machine uses."""
        used = [
            ipaddress.ip_network(net, strict=False)
            for net in re.findall(r"\b(\d+\.\d+\.\d+\.\d+/\d+)", _run("ip", "-4", "-o", "addr").stdout)
        ]
        used += [
            ipaddress.ip_network(route.split()[0], strict=False)
            for route in _run("ip", "-4", "route").stdout.splitlines()
            if re.match(r"\d+\.\d+\.\d+\.\d+(/\d+)?\s", route)
        ]
        seed = int(self.tag[2:], 16)
        for step in range(50 * 256):
            value = (seed + step) % (50 * 256)
            candidate = ipaddress.ip_network(f"10.{200 + value // 256}.{value % 256}.0/24")
            if not any(candidate.overlaps(net) for net in used):
                return candidate
        raise ClusterError("no free /24 in 10.200.0.0-10.249.255.0 for the cluster's bridge")

    def _save_layout(self) -> None:
        layout = {"subnet": str(self.subnet), "nodes": self.nodes}
        (self.root / "cluster.json").write_text(json.dumps(layout) + "\n")

    def _load_layout(self) -> bool:
        try:
            layout = json.loads((self.root / "cluster.json").read_text())
        except (OSError, ValueError):
            return False
        self.subnet, self.nodes = ipaddress.ip_network(layout["subnet"]), layout["nodes"]
        return True

    def write_config(self) -> None:
        r, shape = self.root, _machine_shape()
        node_shape = (
            f"CPUs={shape['CPUs']} Boards={shape['Boards']} SocketsPerBoard={shape['SocketsPerBoard']} "
            f"CoresPerSocket={shape['CoresPerSocket']} ThreadsPerCore={shape['ThreadsPerCore']} "
            f"RealMemory={shape['RealMemory'] // len(self.nodes)}"
        )
        (r / "plugstack.conf").write_text("")  # no SPANK plugins from /etc/slurm
        lines = [
            "ClusterName=xlsrlocal",
            f"SlurmctldHost={CONTROLLER}({self.address(CONTROLLER)})",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.%n.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.%n.log",
            f"PlugStackConfig={r}/plugstack.conf",
            # No cgroups and no accounting database on a machine like this one.
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
            *(f"NodeName={n} NodeAddr={self.address(n)} {node_shape} State=UNKNOWN" for n in self.nodes),
            f"PartitionName={PARTITION} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName={SHORT_PARTITION} Nodes={self.nodes[0]} MaxTime={SHORT_MAX_TIME_MIN} State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # The nodes' /etc/hosts: the machine's, plus every daemon's name.
        ours = "".join(f"{self.address(name)} {name}\n" for name in self._members())
        (r / "hosts").write_text(Path("/etc/hosts").read_text().rstrip("\n") + "\n" + ours)

    def _setup_network(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.address('host')}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for name in self._members():
            net, uts = self._ns_file(name, "net"), self._ns_file(name, "uts")
            net.touch()
            uts.touch()
            # --net=FILE keeps the namespace alive by bind-mounting it on FILE.
            _run("unshare", f"--net={net}", f"--uts={uts}", "hostname", name)
            inside = ["nsenter", f"--net={net}", f"--uts={uts}"]
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", self._veth(name),
                 "netns", str(os.getpid()))  # fmt: skip
            _run("ip", "link", "set", self._veth(name), "master", self.bridge, "up")
            _run(*inside, "ip", "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")
            # Deliberately no default route (see the module doc).

    def _start_munged(self) -> None:
        key, d = self.root / "munge" / "munge.key", self.root / "munge"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        _run(
            _which("munged") or "munged",
            "--force",
            f"--key-file={key}",
            f"--socket={self.munge_socket}",
            f"--pid-file={self.root}/run/munged.pid",
            f"--log-file={self.root}/log/munged.log",
            f"--seed-file={d}/munged.seed",
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._munge_works():
            if time.monotonic() > deadline:
                raise ClusterError(f"munged did not start: `munge -n -S {self.munge_socket}` fails")
            time.sleep(0.2)

    def _munge_works(self) -> bool:
        sock = str(self.munge_socket)
        try:
            cred = _run("munge", "-n", "-S", sock, timeout=5).stdout
            _run("unmunge", "-S", sock, input=cred, timeout=5)
            return True
        except (OSError, subprocess.SubprocessError, ClusterError):
            return False

    def _start_daemon(self, name: str, daemon: str, *args: str) -> None:
        """Start a daemon (it forks into the background) inside ``name``'s namespaces and, for a
        node, a private mount namespace in which the directory's hosts file covers /etc/hosts."""
        command = shlex.join([_which(daemon) or daemon, "-f", str(self.conf), *args])
        hosts = shlex.quote(str(self.root / "hosts"))
        script = f"mount --bind {hosts} /etc/hosts && exec {command}"
        result = _run(
            "nsenter",
            f"--net={self._ns_file(name, 'net')}",
            f"--uts={self._ns_file(name, 'uts')}",
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if result.returncode != 0:
            raise ClusterError(f"{daemon} on {name} failed to start: {result.stderr.strip()}")

    def wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            result = _run("sinfo", "-h", "-N", "-p", PARTITION, "-o", "%N %T", check=False, env=self.env)
            states = result.stdout.strip() or result.stderr.strip()
            idle = [line.split()[0] for line in states.splitlines() if line.rstrip("*").endswith(" idle")]
            if result.returncode == 0 and sorted(idle) == sorted(self.nodes):
                return
            time.sleep(0.5)
        raise ClusterError(f"nodes not idle after {timeout_s:.0f}s (sinfo: {states!r})")

    def logs(self, lines: int = 30) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ----------------------------------------------------------------------------------------------
    # Processes on a node (tests kill a node's task to simulate a node failure)

    def _netns_ids(self) -> dict[str, str]:
        """'net:[inode]' of each of our network namespaces that still exists, by member name."""
        ids = {}
        for name in self._members():
            path = self._ns_file(name, "net")
            if path.exists() and os.path.ismount(path):
                ids[name] = f"net:[{path.stat().st_ino}]"
        return ids

    def pids_in(self, *members: str) -> list[int]:
        """Processes living in the network namespace of these members (all of ours if none given)."""
        ids = self._netns_ids()
        wanted = {ids[name] for name in (members or ids) if name in ids}
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if os.readlink(proc / "ns" / "net") in wanted:
                        pids.append(int(proc.name))
                except OSError:
                    continue
        return pids

    # ----------------------------------------------------------------------------------------------
    # Stop

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, end what is left in our namespaces, remove the network."""
        if self.subnet is None and not self._load_layout():
            return  # nothing was ever started in this directory
        if self._our_pid(self.root / "run" / "slurmctld.pid"):
            self._cancel_all_jobs()
        for node in self.nodes:
            _stop_pidfile(self.root / "run" / f"slurmd.{node}.pid", self.root)
        _stop_pidfile(self.root / "run" / "slurmctld.pid", self.root)
        for _ in range(20):  # job steps whose slurmd is gone
            left = self.pids_in()
            if not left:
                break
            for pid in left:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.25)
        _stop_pidfile(self.root / "run" / "munged.pid", self.root)
        self._teardown_network()

    def _our_pid(self, pidfile: Path) -> int | None:
        return _pid_if_ours(pidfile, self.root)

    def _cancel_all_jobs(self) -> None:
        jobs = _run("squeue", "-h", "-o", "%i", check=False, env=self.env, timeout=10).stdout.split()
        if not jobs:
            return
        _run("scancel", "--quiet", *jobs, check=False, env=self.env, timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            active = _run("squeue", "-h", "-t", "R,CG", "-o", "%i", check=False, env=self.env, timeout=10)
            if not active.stdout.strip():
                return
            time.sleep(0.5)

    def _teardown_network(self) -> None:
        for name in self._members():
            for kind in ("net", "uts"):
                path = self._ns_file(name, kind)
                if os.path.ismount(path):
                    _run("umount", str(path), check=False)
                path.unlink(missing_ok=True)
        # veth pairs die with their namespace; remove leftovers and the bridge anyway.
        for device in [self._veth(name) for name in self._members()] + [self.bridge]:
            if Path("/sys/class/net", device).exists():
                _run("ip", "link", "del", device, check=False)


def _pid_if_ours(pidfile: Path, root: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive and was started with a path under ``root``."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if str(root) in cmdline else None


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _stop_pidfile(pidfile: Path, root: Path, timeout_s: float = 15.0) -> None:
    pid = _pid_if_ours(pidfile, root)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _pid_if_ours(pidfile, root) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_if_ours(pidfile, root) == pid:
            _signal(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", help="directory for slurm.conf, state, logs and namespace handles")
    parser.add_argument("--nodes", type=int, default=2, help="compute nodes (start; default 2)")
    args = parser.parse_args(argv)
    cluster = LocalSlurmCluster(args.dir, nodes=args.nodes)
    try:
        if args.action == "start":
            cluster.start()
            print(
                f"SLURM is up: partitions {PARTITION!r} (nodes {', '.join(cluster.nodes)}) and "
                f"{SHORT_PARTITION!r} ({cluster.nodes[0]}, {SHORT_MAX_TIME_MIN} min). In your shell:"
            )
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
