"""Checkpoints that never lose work.

Layout of one checkpoint, ``<checkpoint_dir>/step-00001000/``:
- the backend's model and optimizer state, sharded as trained: DCP files (``.metadata``,
  ``__*_*.distcp``, reshardable to any world size on load) or DeepSpeed's own files;
- ``trainer.pt``: step, scheduler, loss-scale and skip counters, W&B run id (rank 0);
- ``rank-00003.pt``: that rank's RNG states and data-stream state;
- ``config.yaml``: the resolved config; ``meta.json``: a human-readable summary.

Everything is written into ``step-N.tmp/`` and renamed when every rank has finished, so a directory
without the ``.tmp`` suffix is always complete; a job killed mid-save leaves only a ``.tmp`` that the
next save removes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from xlsr.config import TrainConfig, atomic_write_text, dump_config
from xlsr.engine.distributed import DistEnv

if TYPE_CHECKING:
    from xlsr.engine.backends import Backend

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / "trainer.pt").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


class Checkpointer:
    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.root = cfg.checkpoint_dir
        self._pending: tuple[Any, Path, Path] | None = None

    def resume_path(self) -> Path | None:
        """The checkpoint to resume from, per ``checkpoint.resume``."""
        mode = self.cfg.checkpoint.resume
        if mode == "never":
            return None
        if mode == "auto":
            found = complete_checkpoints(self.root)
            return found[-1][1] if found else None
        path = Path(mode)
        if not (path / "trainer.pt").is_file():
            raise FileNotFoundError(f"checkpoint.resume={mode}: not a complete checkpoint directory")
        return path

    def save(
        self,
        step: int,
        backend: Backend,
        trainer_state: dict[str, Any],
        rank_state: dict[str, Any],
        asynchronous: bool = False,
    ) -> Path:
        """Write ``step-N`` (into ``step-N.tmp``, renamed when complete on every rank).

        With ``asynchronous``, the backend's state is written in the background and the rename
        happens at the next save (or `wait`); until then the previous checkpoint is the newest.
        """
        self.wait()
        final = self.root / step_dir_name(step)
        tmp = final.with_name(final.name + ".tmp")
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        pending = backend.save(tmp, asynchronous)
        torch.save(rank_state, tmp / f"rank-{self.env.rank:05d}.pt")
        if self.env.is_main:
            state = {**trainer_state, "backend": backend.state_dict(), "world_size": self.env.world_size}
            torch.save(state, tmp / "trainer.pt")
            atomic_write_text(tmp / "config.yaml", dump_config(self.cfg))
            meta = {
                "step": step,
                "world_size": self.env.world_size,
                "backend": self.cfg.distributed.backend,
                "time": time.time(),
            }
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
        self._pending = (pending, tmp, final)
        if pending is None:
            self.wait()
        return final

    def wait(self) -> None:
        """Complete the save in flight, if any: all ranks finished writing, then the rename."""
        if self._pending is None:
            return
        future, tmp, final = self._pending
        self._pending = None
        if future is not None:
            future.result()
        dist.barrier()
        if self.env.is_main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            self._prune()
        dist.barrier()

    def _prune(self) -> None:
        keep_every = self.cfg.checkpoint.keep_every
        found = complete_checkpoints(self.root)
        recent = {step for step, _ in found[-self.cfg.checkpoint.keep_last :]}
        for step, path in found:
            if step not in recent and not (keep_every and step % keep_every == 0):
                shutil.rmtree(path, ignore_errors=True)

    def load(self, path: Path, backend: Backend) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Restore the backend (resharded if needed); returns trainer state and this rank's state.

        The rank state is None when the checkpoint was written by a different world size.
        """
        backend.load(path)
        trainer_state = read_trainer_state(path)
        backend.load_state_dict(trainer_state["backend"])
        rank_file = path / f"rank-{self.env.rank:05d}.pt"
        same_world = trainer_state["world_size"] == self.env.world_size
        rank_state = torch.load(rank_file, weights_only=True) if same_world and rank_file.exists() else None
        return trainer_state, rank_state


def read_trainer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "trainer.pt", weights_only=True)


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Full (unsharded) model weights of a training checkpoint, readable without a process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    if (path / "meta.json").is_file() and json.loads((path / "meta.json").read_text())[
        "backend"
    ] == "deepspeed":
        from xlsr.engine.deepspeed_backend import load_fp32_model_state

        return load_fp32_model_state(path)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory (no .metadata)")
    with tempfile.TemporaryDirectory() as tmp:
        consolidated = Path(tmp) / "model.pt"
        dcp_to_torch_save(path, consolidated)
        state = torch.load(consolidated, weights_only=True)
    return state["model"]
