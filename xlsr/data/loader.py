"""The training data stream of one rank: shards → upsampled, bucketed, resumable batches.

Each rank runs ``data.num_workers`` slots (one per DataLoader worker, or one in-process slot when
``num_workers == 0``). A DataLoader hands out batches round-robin over its workers, and each batch
carries its slot's state after it was made, so the rank knows every slot's state as of the last
batch *consumed* (prefetched batches do not count).

Resume semantics:
- Same world size and worker count: every slot restarts from its saved state, and the physical
  workers are rotated so the round-robin continues where it stopped. The batches are bit-identical
  to an uninterrupted run's.
- Different world size or worker count: slot ownership changes, so positions cannot carry over.
  The stream restarts with a fresh seed derived from (seed, updates done): deterministic, never a
  silent replay of the old order, and said in the log. Later resumes on the same topology continue
  that reseeded stream exactly.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xlsr.config import DataConfig
from xlsr.data.shard_format import ShardInfo, check_shards_exist, read_index
from xlsr.data.stream import Batch, SlotPipeline, StreamSpec
from xlsr.data.upsampling import format_probability_table, upsampling_probabilities
from xlsr.process import STOP_SIGNALS
from xlsr.seeding import derive_seed

log = logging.getLogger(__name__)


def build_stream_specs(cfg: DataConfig) -> tuple[list[StreamSpec], dict[tuple[str, str], float], dict]:
    """Streams with per-utterance draw probabilities, plus the hours and hour-probabilities behind them.

    XLS-R's probabilities are over hours of audio. Drawing utterances with p_s / mean_duration_s
    makes the expected share of *audio* from each stream equal p_s.
    """
    if not cfg.train:
        raise ValueError("data.train is empty: list one or more index.json files written by `xlsr shard`")
    shards: dict[tuple[str, str], list[ShardInfo]] = {}
    for index_path in cfg.train:
        index = read_index(index_path)
        check_shards_exist(index)  # missing tars are named here, in one line, not in a worker's traceback
        for shard in index.shards:
            shards.setdefault((shard.corpus, shard.language), []).append(shard)
    usable = {key: group for key, group in shards.items() if sum(s.samples for s in group) > 0}
    if not usable:
        raise ValueError(f"no samples in the shards listed by data.train={cfg.train}")
    hours = {key: sum(s.seconds for s in group) / 3600 for key, group in usable.items()}
    hour_probs = upsampling_probabilities(hours, cfg.language_alpha, cfg.corpus_alpha)
    weights = {
        key: hour_probs[key] / (hours[key] * 3600 / sum(s.samples for s in group))
        for key, group in usable.items()
    }
    total = sum(weights.values())
    specs = [
        StreamSpec(f"{key[0]}/{key[1]}", tuple(group), weights[key] / total)
        for key, group in sorted(usable.items())
    ]
    return specs, hours, hour_probs


class _SlotDataset(IterableDataset):
    def __init__(self, specs, cfg: DataConfig, seed: int, rank: int, world_size: int, workers: int):
        self.specs, self.cfg, self.seed = specs, cfg, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.slot_states: dict[int, dict] = {}
        self.first_worker = 0  # logical worker that serves the first batch (resume rotation)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.first_worker) % self.workers
        slot = self.rank * self.workers + logical
        pipeline = SlotPipeline(self.specs, self.cfg, slot, self.world_size * self.workers, self.seed)
        if logical in self.slot_states:
            pipeline.load_state_dict(self.slot_states[logical])
        while True:
            batch = pipeline.next_batch()
            batch.state = (logical, pipeline.state_dict())
            yield batch


def _ignore_stop_signals(_worker_id: int) -> None:
    """A stop signal sent to the whole process group (``kill -- -PGID``, systemd, ``scancel`` under a
    plain ``srun``) must reach the trainer, which saves and exits, not kill its data workers first:
    workers ignore them and end when the trainer shuts the loader down (or exits)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class DataStream:
    """Infinite iterator of `Batch` for one rank, with `state_dict` / `load_state_dict`."""

    def __init__(self, cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1):
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.base_seed = seed  # the run's seed; `seed` is the stream's, which a reseed replaces
        self.workers = max(1, cfg.num_workers)
        self.specs, self.hours, self.hour_probs = build_stream_specs(cfg)
        self.dataset = _SlotDataset(self.specs, cfg, seed, rank, world_size, self.workers)
        self.batches_consumed = 0
        self._iterator: Iterator[Batch] | None = None

    def probability_table(self) -> str:
        return format_probability_table(self.hours, self.hour_probs)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self._make_loader())
        batch = next(self._iterator)
        logical, state = batch.state
        self.dataset.slot_states[logical] = state
        self.batches_consumed += 1
        return batch

    def _make_loader(self) -> DataLoader:
        self.dataset.first_worker = self.batches_consumed % self.workers
        if self.cfg.num_workers == 0:
            return self.dataset  # type: ignore[return-value]
        return DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4,
            persistent_workers=True,
            worker_init_fn=_ignore_stop_signals,
        )

    def close(self) -> None:
        """Stop the DataLoader workers now (they ignore stop signals, so exit must not wait on them)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def skipped(self) -> dict[str, int]:
        """Samples dropped so far on this rank, by reason (from the slots' last consumed states)."""
        totals: dict[str, int] = {}
        for state in self.dataset.slot_states.values():
            for key, count in state["counters"].items():
                if key != "samples":
                    totals[key] = totals.get(key, 0) + count
        return totals

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "workers": self.workers,
            "seed": self.seed,
            "base_seed": self.base_seed,
            "batches_consumed": self.batches_consumed,
            "slots": dict(self.dataset.slot_states),
        }

    def load_state_dict(self, state: dict[str, Any], updates_done: int) -> None:
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        # Checkpoints written before "base_seed" existed hold only the stream's seed.
        base_seed = state.get("base_seed", state["seed"])
        same_topology = state["world_size"] == self.world_size and state["workers"] == self.workers
        if same_topology and base_seed == self.base_seed:
            self._use_seed(state["seed"])
            self.dataset.slot_states = {int(k): v for k, v in state["slots"].items()}
            self.batches_consumed = state["batches_consumed"]
            return
        if same_topology:
            reason = f"the seed changed ({base_seed} -> {self.base_seed})"
        else:
            reason = (
                f"data topology changed (world size {state['world_size']} -> {self.world_size}, "
                f"workers {state['workers']} -> {self.workers})"
            )
        self.reseed(updates_done, reason)

    def reseed(self, updates_done: int, reason: str) -> None:
        """Restart with a fresh deterministic seed: used when slot positions cannot carry over."""
        if self._iterator is not None:
            raise RuntimeError("reseed must be called before iterating")
        new_seed = derive_seed(self.base_seed, "data_reseed", updates_done)
        log.warning(
            "%s: the data stream restarts with a new deterministic seed %d; positions of the old "
            "stream are not carried over",
            reason,
            new_seed,
        )
        self._use_seed(new_seed)

    def _use_seed(self, seed: int) -> None:
        self.seed = seed
        self.dataset.seed = seed
