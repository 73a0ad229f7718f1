"""What a partition offers, and whether a job's request can ever run on it.

SLURM accepts a request that no node of the partition can satisfy (more CPUs per task than a node
has, GPUs on a CPU partition, a time above the partition's limit) and leaves it PENDING forever
with ``Reason=PartitionConfig``. The launcher asks ``sinfo`` what the partition's nodes have and
refuses such a request before submitting, naming the flag and the limit.

Only the partition's configuration counts, not the nodes' current state: a drained node may come
back, an oversized request never fits. ``--constraint`` and ``--exclude`` are not evaluated.
"""

from __future__ import annotations

import dataclasses
import re

# One line per (node, partition): partition (default marked *), node, CPUs, memory (MB), GRES,
# the partition's time limit and its job size in nodes ("1-infinite", "2-16").
SINFO_FORMAT = "%P|%N|%c|%m|%G|%l|%s"
UNLIMITED = frozenset({"infinite", "unlimited", "n/a", "none"})
_GPU_GRES = re.compile(r"\bgpu(?::[\w.-]+)?:(\d+)")


def slurm_minutes(text: str) -> int:
    """SLURM's time formats in whole minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (seconds round up).

    Raises ValueError for anything else."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ValueError(f"bad time {text!r}: use minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        total, seconds = int(days) * 1440 + int(a) * 60 + int(b or 0), int(c or 0)
    elif c is not None:  # H:M:S
        total, seconds = int(a) * 60 + int(b), int(c)
    else:  # M or M:S
        total, seconds = int(a), int(b or 0)
    return total + (1 if seconds else 0)


@dataclasses.dataclass(frozen=True)
class NodeShape:
    name: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclasses.dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_time_min: int | None  # None: no limit
    max_nodes: int | None  # largest job, in nodes (None: no limit)
    nodes: tuple[NodeShape, ...]


@dataclasses.dataclass(frozen=True)
class Request:
    """What one job asks for: nodes, and per node its tasks, CPUs, GPUs and memory; its time limit."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    mem_gb: int | None
    time_min: int
    cpus_flag: str = "--cpus-per-task"  # the flag that sets cpus_per_task (`xlsr shard`: --workers)

    @property
    def cpus_per_node(self) -> int:
        return self.tasks_per_node * self.cpus_per_task


def parse_partitions(sinfo_output: str) -> dict[str, Partition]:
    """`sinfo -h -N -o SINFO_FORMAT` output → partitions by name."""
    nodes: dict[str, list[NodeShape]] = {}
    limits: dict[str, tuple[bool, int | None, int | None]] = {}
    for line in sinfo_output.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 7:
            continue
        partition, node, cpus, memory, gres, time_limit, size = fields
        name = partition.rstrip("*")
        limits[name] = (partition.endswith("*"), _limit_minutes(time_limit), _max_nodes(size))
        gpus = sum(int(count) for count in _GPU_GRES.findall(gres))
        nodes.setdefault(name, []).append(NodeShape(node, _int(cpus), _int(memory), gpus))
    partitions = {}
    for name, shapes in nodes.items():
        default, max_time_min, max_nodes = limits[name]
        partitions[name] = Partition(name, default, max_time_min, max_nodes, tuple(shapes))
    return partitions


def _int(text: str) -> int:
    digits = re.match(r"\d+", text.strip())  # '2', '12052', '12052+' (heterogeneous nodes)
    return int(digits[0]) if digits else 0


def _limit_minutes(text: str) -> int | None:
    text = text.strip().lower()
    if text in UNLIMITED:
        return None
    try:
        return slurm_minutes(text)
    except ValueError:
        return None  # a format we do not know: do not refuse on it


def _max_nodes(size: str) -> int | None:
    upper = size.strip().rpartition("-")[2]
    return int(upper) if upper.isdigit() else None


def impossible_request(request: Request, partition: Partition) -> str | None:
    """Why ``request`` can never run on ``partition`` (one line naming the flag), or None if it may."""
    p, r = partition, request
    where = f"partition '{p.name}'"
    if not p.nodes:
        return None
    most_cpus = max(node.cpus for node in p.nodes)
    most_gpus = max(node.gpus for node in p.nodes)
    most_memory = max(node.memory_mb for node in p.nodes)
    if r.nodes > len(p.nodes) or (p.max_nodes is not None and r.nodes > p.max_nodes):
        limit = min(len(p.nodes), p.max_nodes or len(p.nodes))
        return f"--nodes {r.nodes}: {where} has {limit} node(s) for one job"
    if r.gpus_per_node > most_gpus:
        if most_gpus == 0:
            return (
                f"--gpus-per-node {r.gpus_per_node}: {where} has no GPUs; use --gpus-per-node 0 "
                "(CPU tasks) or a GPU partition"
            )
        return f"--gpus-per-node {r.gpus_per_node}: the nodes of {where} have at most {most_gpus} GPU(s)"
    if r.cpus_per_task > most_cpus:
        return f"{r.cpus_flag} {r.cpus_per_task}: the nodes of {where} have at most {most_cpus} CPU(s)"
    if r.cpus_per_node > most_cpus:
        return (
            f"--tasks-per-node {r.tasks_per_node} × {r.cpus_flag} {r.cpus_per_task} = {r.cpus_per_node} "
            f"CPUs per node: the nodes of {where} have at most {most_cpus}"
        )
    if r.mem_gb is not None and r.mem_gb * 1024 > most_memory:
        most = f"{most_memory // 1024}G ({most_memory} MB)"
        return f"--mem {r.mem_gb}G: the nodes of {where} have at most {most}"
    if p.max_time_min is not None and r.time_min > p.max_time_min:
        return f"--time {r.time_min} (minutes): {where} allows at most {p.max_time_min} minutes"
    fitting = [node for node in p.nodes if _fits(node, r)]
    if len(fitting) < r.nodes:
        return (
            f"--nodes {r.nodes}: only {len(fitting)} node(s) of {where} have {r.cpus_per_node} CPU(s)"
            f"{f', {r.gpus_per_node} GPU(s)' if r.gpus_per_node else ''}"
            f"{f' and {r.mem_gb}G' if r.mem_gb else ''} for one node's share of the job"
        )
    return None


def _fits(node: NodeShape, request: Request) -> bool:
    memory_ok = request.mem_gb is None or request.mem_gb * 1024 <= node.memory_mb
    return node.cpus >= request.cpus_per_node and node.gpus >= request.gpus_per_node and memory_ok
