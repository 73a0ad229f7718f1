"""Checkpoints that never lose work.

Layout of one checkpoint, ``<checkpoint_dir>/step-00001000/``:
- the backend's model and optimizer state, sharded as trained: DCP files (``.metadata``,
  ``__*_*.distcp``, reshardable to any world size on load) or DeepSpeed's own files;
- ``trainer.pt``: the state every rank shares, one entry per stateful part (``train``: step, skip
  counters, run ids; ``backend``: scheduler, loss scale), and the world size (rank 0);
- ``rank-00003.pt``: that rank's own parts (``rng``, ``data``);
- ``config.yaml``: the resolved config; ``meta.json``: a human-readable summary;
- ``manifest.json``: size and CRC-32 of every file above (`xlsr.checkpoint_files`).

Everything is written into ``step-N.<job token>.tmp/``, fsynced, and renamed when every rank has
finished, so a ``step-N`` directory is always complete. On resume the newest checkpoint whose files
match their manifest wins; damaged ones are named in a warning and left on disk. Pruning deletes
only this run's own older, intact checkpoints.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist

from xlsr.checkpoint_files import (
    checkpoint_files,
    complete_checkpoints,
    describe_files,
    quick_check,
    step_dir_name,
    verify_slice,
)
from xlsr.config import TrainConfig, dump_config
from xlsr.engine.best import recorded_best_step
from xlsr.engine.distributed import DistEnv
from xlsr.fileio import atomic_write_text, fsync_dir, publish_directory
from xlsr.process import UserError
from xlsr.run_dir import (
    CONFIG_NAME,
    MANIFEST_NAME,
    META_NAME,
    TRAINER_STATE_NAME,
    read_json_object,
)

if TYPE_CHECKING:
    from xlsr.engine.backends import Backend

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "complete_checkpoints",
    "read_trainer_state",
]

# The format of a checkpoint directory as a whole (trainer.pt, rank-R.pt, manifest), recorded in
# trainer.pt. Before xlsr 1.0 checkpoints do not carry over between formats (docs/training.md).
TRAINER_STATE_FORMAT = 3
# Shared parts that checkpoints of this format may lack (written before the part existed): such a
# part keeps its fresh state on load.
PARTS_ADDED_LATER = frozenset({"health"})


class CheckpointError(UserError):
    pass


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.root = cfg.checkpoint_dir
        self.run_uid: str | None = None  # set by the trainer: checkpoints of this run carry it
        self._pending: tuple[Any, Path, Path, int] | None = None
        self._damaged: set[Path] = set()
        # Rank 0's hooks (the trainer's probes): a checkpoint was published; steps pruning must keep.
        self.on_published: Callable[[int], None] = lambda _step: None
        self.pinned_steps: Callable[[], set[int]] = set
        token = [secrets.token_hex(4) if env.is_main else None]
        if env.world_size > 1:
            dist.broadcast_object_list(token, src=0, group=env.cpu_group)
        self.token = token[0]  # temporary directories of this job, unique per job

    # -- choosing where to resume -----------------------------------------------------------------

    def resume_path(self) -> Path | None:
        """The checkpoint to resume from, per ``checkpoint.resume`` (collective: every rank calls it)."""
        mode = self.cfg.checkpoint.resume
        if mode == "never":
            existing = complete_checkpoints(self.root)
            if existing:
                raise CheckpointError(
                    f"checkpoint.resume=never, but {self.root} already holds checkpoints "
                    f"({existing[-1][1].name} and {len(existing) - 1} more): choose a new run_dir or "
                    "checkpoint.dir, or resume them with checkpoint.resume=auto"
                )
            return None
        if mode != "auto":
            path = Path(mode)
            if not (path / TRAINER_STATE_NAME).is_file():
                raise CheckpointError(f"checkpoint.resume={mode}: not a complete checkpoint directory")
            reason = self.damage(path)
            if reason:
                raise CheckpointError(f"checkpoint.resume={mode} is damaged: {reason}")
            return path
        return self._newest_intact()

    def _newest_intact(self) -> Path | None:
        found = complete_checkpoints(self.root)
        reasons = []
        for _, path in reversed(found):
            reason = self.damage(path)
            if reason is None:
                return path
            self._damaged.add(path)
            reasons.append(f"{path.name}: {reason}")
            if self.env.is_main:
                log.warning("checkpoint %s is damaged (%s): skipped, left on disk", path, reason)
        if found:
            raise CheckpointError(f"no intact checkpoint in {self.root}: " + "; ".join(reasons))
        return None

    def newest_intact_before(self, step: int) -> Path | None:
        """The newest intact checkpoint of a step below ``step`` (a health rollback's target). Rank 0
        lists the candidates, so every rank checks the same ones (a file system's directory cache may
        differ between nodes)."""
        found = [complete_checkpoints(self.root) if self.env.is_main else None]
        if self.env.world_size > 1:
            dist.broadcast_object_list(found, src=0, group=self.env.cpu_group)
        for found_step, path in reversed(found[0]):
            if found_step < step and path not in self._damaged and self.damage(path) is None:
                return path
        return None

    def set_aside_newer_than(self, step: int) -> None:
        """After a rollback to ``step``: this run's newer checkpoints hold the undone updates, and
        their step names will be written again. Renamed ``step-N.rolled-back-<job>`` (kept for a
        post-mortem, never resumed from); another run's are left alone."""
        if self.env.is_main:
            for found_step, path in complete_checkpoints(self.root):
                if found_step > step and self._is_ours(path):
                    path.rename(free_sibling_name(path, f"rolled-back-{self.token}"))
            fsync_dir(self.root)
        if self.env.world_size > 1:
            dist.barrier(group=self.env.cpu_group)

    def damage(self, path: Path) -> str | None:
        """Why checkpoint ``path`` is damaged, or None; every rank checks a slice of its files."""
        reason = verify_slice(path, self.env.rank, self.env.world_size)
        if self.env.world_size == 1:
            return reason
        reasons: list[str | None] = [None] * self.env.world_size
        dist.all_gather_object(reasons, reason, group=self.env.cpu_group)
        return next((r for r in reasons if r), None)

    # -- saving -------------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        backend: Backend,
        shared: dict[str, Stateful],
        per_rank: dict[str, Stateful],
        asynchronous: bool = False,
    ) -> Path:
        """Write ``step-N`` (into a temporary directory, published when complete on every rank).

        ``backend.save`` writes the (sharded) model and optimizer; ``shared`` parts are the same on
        every rank and saved once in ``trainer.pt``; ``per_rank`` parts go to ``rank-R.pt``. With
        ``asynchronous``, the backend's state is written in the background and publishing happens
        at the next save (or `wait`); until then the previous checkpoint is the newest.
        """
        self.wait()
        final = self.root / step_dir_name(step)
        tmp = self.root / f"{final.name}.{self.token}.tmp"
        if self.env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temporaries()
            tmp.mkdir()
        dist.barrier()
        pending = backend.save(tmp, asynchronous)
        torch.save(
            {name: part.state_dict() for name, part in per_rank.items()}, tmp / rank_file_name(self.env.rank)
        )
        if self.env.is_main:
            state = {
                "format": TRAINER_STATE_FORMAT,
                "world_size": self.env.world_size,
                **{name: part.state_dict() for name, part in shared.items()},
            }
            torch.save(state, tmp / TRAINER_STATE_NAME)
            (tmp / CONFIG_NAME).write_text(dump_config(self.cfg))
            meta = {
                "step": step,
                "world_size": self.env.world_size,
                "backend": self.cfg.distributed.backend,
                "run_uid": self.run_uid,
                "time": time.time(),
            }
            (tmp / META_NAME).write_text(json.dumps(meta, indent=2))
        self._pending = (pending, tmp, final, step)
        if pending is None:
            self.wait()
        return final

    def wait(self) -> None:
        """Complete the save in flight, if any: every rank's files written, checksummed, synced; then
        the manifest, the rename and pruning on rank 0."""
        if self._pending is None:
            return
        future, tmp, final, step = self._pending
        self._pending = None
        if future is not None:
            future.result()
        dist.barrier()
        names = checkpoint_files(tmp)[self.env.rank :: self.env.world_size]
        entries = describe_files(tmp, names, sync=True)
        gathered: list[dict | None] = [entries]
        if self.env.world_size > 1:
            gathered = [None] * self.env.world_size
            dist.all_gather_object(gathered, entries, group=self.env.cpu_group)
        if self.env.is_main:
            files = {name: entry for part in gathered for name, entry in (part or {}).items()}
            atomic_write_text(tmp / MANIFEST_NAME, json.dumps({"files": files}, indent=1, sort_keys=True))
            self._move_aside_if_present(final)
            publish_directory(tmp, final, files_synced=True)
            self.on_published(step)
            self._prune(step)
        dist.barrier()

    def _remove_stale_temporaries(self) -> None:
        """Half-written checkpoints of this run's earlier jobs (this job holds the run's lock)."""
        for path in self.root.glob("step-*.tmp"):
            if path.is_dir() and self.token not in path.name:
                shutil.rmtree(path, ignore_errors=True)

    def _move_aside_if_present(self, final: Path) -> None:
        """A damaged checkpoint at the step being written is kept, under another name."""
        if final.exists():
            aside = final.with_name(f"{final.name}.damaged-{self.token}")
            log.warning("%s exists (damaged, skipped on resume): moved to %s", final, aside.name)
            final.rename(aside)

    def _prune(self, current: int) -> None:
        """Delete this run's older checkpoints beyond ``keep_last`` (and not kept by ``keep_every``).

        Never a checkpoint newer than the one just written, of another run, written by an older
        xlsr (no run id), damaged, or pinned (not probed yet by probes running beside training);
        only intact ones count toward ``keep_last``.
        """
        keep_every = self.cfg.checkpoint.keep_every
        ours = [
            (step, path)
            for step, path in complete_checkpoints(self.root)
            if step <= current and path not in self._damaged and self._is_ours(path) and quick_check(path)
        ]
        recent = {step for step, _ in ours[-self.cfg.checkpoint.keep_last :]} | {
            current,
            recorded_best_step(self.root),
            *self.pinned_steps(),
        }
        for step, path in ours:
            if step not in recent and not (keep_every and step % keep_every == 0):
                shutil.rmtree(path, ignore_errors=True)
        fsync_dir(self.root)

    def _is_ours(self, path: Path) -> bool:
        meta = read_json_object(path / META_NAME) or {}
        return self.run_uid is not None and meta.get("run_uid") == self.run_uid

    # -- loading ------------------------------------------------------------------------------------

    def load(self, path: Path, backend: Backend, shared: dict[str, Stateful]) -> dict[str, Any] | None:
        """Restore the backend (resharded if needed) and the ``shared`` parts; returns this rank's
        saved parts, or None when the checkpoint was written by a different world size."""
        backend.load(path)
        trainer_state = read_trainer_state(path)
        for name, part in shared.items():
            if name in trainer_state or name not in PARTS_ADDED_LATER:
                part.load_state_dict(trainer_state[name])
        rank_file = path / rank_file_name(self.env.rank)
        same_world = trainer_state["world_size"] == self.env.world_size
        return torch.load(rank_file, weights_only=True) if same_world and rank_file.exists() else None

    def rank_parts(self, path: Path, name: str) -> list[dict[str, Any]]:
        """Part ``name`` of every rank that wrote checkpoint ``path``, in rank order (a resume on
        another topology carries the data position over from all of them)."""
        world = read_trainer_state(path)["world_size"]
        return [torch.load(path / rank_file_name(rank), weights_only=True)[name] for rank in range(world)]


def free_sibling_name(path: Path, label: str) -> Path:
    """``<path>.<label>``, or ``<path>.<label>-2``, ... : the first name not taken."""
    candidate, number = path.with_name(f"{path.name}.{label}"), 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{label}-{number}")
    return candidate


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer.pt`` of checkpoint ``path``; one of another checkpoint format is refused."""
    try:
        state = torch.load(path / TRAINER_STATE_NAME, weights_only=True)
    except Exception as exc:  # a damaged pickle raises many types
        raise CheckpointError(f"{path / TRAINER_STATE_NAME} is unreadable ({type(exc).__name__})") from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != TRAINER_STATE_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {found or 1}, this xlsr reads format {TRAINER_STATE_FORMAT}; "
            "before xlsr 1.0 checkpoints do not carry over between versions: finish the run with the "
            "xlsr that wrote it, or continue from its weights with checkpoint.init_from in a new run_dir"
        )
    return state
