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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xlsr.config import SAMPLE_RATE, DataConfig
from xlsr.data.carry import old_carry, old_totals, split_carry
from xlsr.data.planning import Piece, UnitPlan
from xlsr.data.shard_format import ShardInfo, check_shards_exist, longer_than, read_index, visible_seconds
from xlsr.data.shards import is_ranged_pipe
from xlsr.data.stages import STREAM_COUNTS, Batch
from xlsr.data.stream import SlotPipeline
from xlsr.data.units import BROKEN_CAUSES, DEFAULT_MAX_OPEN_SHARDS, StreamSpec
from xlsr.data.upsampling import format_probability_table, upsampling_probabilities
from xlsr.process import INTERRUPT, STOP_SIGNALS
from xlsr.seeding import derive_seed

log = logging.getLogger(__name__)


Hours = dict[tuple[str, str], float]


def build_stream_specs(cfg: DataConfig) -> tuple[list[StreamSpec], Hours, Hours]:
    """The streams of ``data.train`` (see ``stream_specs``); missing local tars are refused here."""
    if not cfg.train:
        raise ValueError("data.train is empty: list one or more index.json files written by `xlsr shard`")
    shards: list[ShardInfo] = []
    for index_path in cfg.train:
        index = read_index(index_path)
        check_shards_exist(index)  # missing tars are named here, in one line, not in a worker's traceback
        shards.extend(index.shards)
    try:
        return stream_specs(shards, cfg.language_alpha, cfg.corpus_alpha, cfg.max_sample_size / SAMPLE_RATE)
    except ValueError as exc:
        raise ValueError(f"{exc} (data.train={cfg.train})") from None


def stream_specs(
    shards: Iterable[ShardInfo], language_alpha: float, corpus_alpha: float, crop_seconds: float | None = None
) -> tuple[list[StreamSpec], Hours, Hours]:
    """Streams (sorted by corpus, language) with their share of the sampled audio, plus the hours and
    hour-probabilities behind them. XLS-R's probabilities are over hours of audio; each slot turns them
    into per-utterance draw weights for the data it owns (``xlsr.data.planning``).

    The hours are those the model can see: every utterance counts at most ``crop_seconds`` (training
    crops each draw to ``data.max_sample_size``), so an uncut hour-long recording weighs as one crop,
    not as an hour. ``None`` counts stored hours."""
    groups: dict[tuple[str, str], list[ShardInfo]] = {}
    for shard in shards:
        groups.setdefault((shard.corpus, shard.language), []).append(shard)
    usable = {key: group for key, group in groups.items() if sum(s.samples for s in group) > 0}
    if not usable:
        raise ValueError("no samples in the shards listed")
    shard_seconds = {
        key: tuple(stream_seconds([s], crop_seconds) for s in group) for key, group in usable.items()
    }
    hours = {key: sum(seconds) / 3600 for key, seconds in shard_seconds.items()}
    hour_probs = upsampling_probabilities(hours, language_alpha, corpus_alpha)
    specs = [
        StreamSpec(f"{key[0]}/{key[1]}", tuple(group), hour_probs[key], shard_seconds[key])
        for key, group in sorted(usable.items())
    ]
    return specs, hours, hour_probs


def stream_seconds(shards: Iterable[ShardInfo], crop_seconds: float | None) -> float:
    """Seconds of audio in ``shards`` the model can see (stored seconds for ``crop_seconds=None``)."""
    if crop_seconds is None:
        return sum(s.seconds for s in shards)
    return sum(visible_seconds(s, crop_seconds) for s in shards)


# A stream whose utterances run past this many crops is worth a warning: most of its audio is unseen.
LONG_UTTERANCE_CROPS = 3.0


def warn_about_long_utterances(specs: list[StreamSpec], crop_seconds: float) -> None:
    """One warning per stream holding utterances longer than LONG_UTTERANCE_CROPS crops."""
    for spec in specs:
        long = [longer_than(shard, LONG_UTTERANCE_CROPS * crop_seconds) for shard in spec.shards]
        long_count, long_seconds = sum(n for n, _ in long), sum(s for _, s in long)
        if long_count:
            stored = stream_seconds(spec.shards, None)
            log.warning(
                "data: stream %s holds %d utterances longer than %.0f s (%.2f of its %.2f stored hours); "
                "training crops every draw to data.max_sample_size (%.1f s), so it can see %.2f h of it. "
                "Re-shard with `xlsr shard --max-seconds 30` to cut long recordings at pauses",
                spec.name,
                long_count,
                LONG_UTTERANCE_CROPS * crop_seconds,
                long_seconds / 3600,
                stored / 3600,
                crop_seconds,
                stream_seconds(spec.shards, crop_seconds) / 3600,
            )


class _SlotDataset(IterableDataset):
    def __init__(self, specs, cfg: DataConfig, seed: int, rank: int, world_size: int, workers: int):
        self.specs, self.cfg, self.seed = specs, cfg, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.plan = UnitPlan([spec.planned() for spec in specs], world_size * workers)
        self.slot_states: dict[int, dict] = {}
        self.first_worker = 0  # logical worker that serves the first batch (resume rotation)
        # After a change of topology: per logical worker, the carry it reads first (xlsr.data.carry),
        # and the old slots' totals (draws per stream, skip counts) that logical worker 0 of rank 0
        # carries on.
        self.carry: dict[int, list[list[Piece]]] = {}
        self.carried_totals: tuple[np.ndarray, Counter[str]] | None = None

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.first_worker) % self.workers
        slot = self.rank * self.workers + logical
        num_slots = self.world_size * self.workers
        pipeline = SlotPipeline(self.specs, self.cfg, slot, num_slots, self.seed, plan=self.plan)
        if logical in self.slot_states:
            pipeline.load_state_dict(self.slot_states[logical])
        elif logical in self.carry:
            first = self.rank == 0 and logical == 0 and self.carried_totals is not None
            pipeline.mixer.start_with(self.carry[logical], self.carried_totals[0] if first else None)
            if first:
                pipeline.counters.update(self.carried_totals[1])
        try:
            while True:
                batch = pipeline.next_batch()
                batch.state = (logical, pipeline.state_dict())
                yield batch
        finally:
            pipeline.close()


SKIP_COUNTERS = ("too_short", "undecodable", "broken_units", *(f"broken_{c}" for c in BROKEN_CAUSES))


def stream_report(specs: list[StreamSpec], totals: list[list[float]]) -> list[dict[str, Any]]:
    """Rows of ``summary["data"]["streams"]``: see ``DataStream.stream_report``. Shares and
    ``hours_drawn`` count the audio the model saw (each draw at most ``data.max_sample_size``),
    ``stored_hours_drawn`` the whole utterances drawn. ``passes`` is how many times, on average, each
    utterance of the stream has been read (too-short ones included)."""
    audio = sum(row[1] for row in totals) or 1.0
    rows = []
    for spec, (utterances, samples, too_short, stored) in zip(specs, totals, strict=True):
        corpus, language = spec.name.split("/", 1)
        rows.append(
            {
                "corpus": corpus,
                "language": language,
                "target_share": spec.hour_prob,
                "realised_share": samples / audio,
                "hours_drawn": samples / SAMPLE_RATE / 3600,
                "stored_hours_drawn": stored / SAMPLE_RATE / 3600,
                "utterances": int(utterances),
                "too_short": int(too_short),
                "passes": (utterances + too_short) / spec.utterances,
            }
        )
    return rows


def _warn_about_pipe_rereads(specs: list[StreamSpec], cap: int) -> None:
    """A closed `pipe:` reader without ``{offset}`` re-reads its shard up to where it was when its
    stream is drawn again: with fewer open readers than streams, that can cost far more than the data."""
    piped = [spec for spec in specs if any(_rereads(shard.url) for shard in spec.shards)]
    if len(specs) > cap and piped:
        log.warning(
            "data: %d of %d streams are read through `pipe:` commands without {offset}, and "
            "data.max_open_shards=%d: a stream whose reader was closed re-reads its shard from the start "
            "when drawn again. Put {offset} in the command (docs/data.md) or set data.max_open_shards=%d",
            len(piped),
            len(specs),
            cap,
            len(specs),
        )


def _rereads(url: str) -> bool:
    return url.startswith("pipe:") and not is_ranged_pipe(url)


def _ignore_stop_signals(_worker_id: int) -> None:
    """A stop signal sent to the whole process group (``kill -- -PGID``, systemd, ``scancel`` under a
    plain ``srun``, Ctrl-C in a terminal) must reach the trainer, which saves and exits, not kill its
    data workers first: workers ignore them and end when the trainer shuts the loader down (or exits)."""
    for signum in (*STOP_SIGNALS, INTERRUPT):
        signal.signal(signum, signal.SIG_IGN)


class DataStream:
    """Infinite iterator of `Batch` for one rank, with `state_dict` / `load_state_dict`."""

    def __init__(self, cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1):
        self.cfg, self.seed, self.rank, self.world_size = cfg, seed, rank, world_size
        self.base_seed = seed  # the run's seed; `seed` is the stream's, which a reseed replaces
        self.workers = max(1, cfg.num_workers)
        self.specs, self.hours, self.hour_probs = build_stream_specs(cfg)
        if rank == 0:
            warn_about_long_utterances(self.specs, cfg.max_sample_size / SAMPLE_RATE)
        _warn_about_pipe_rereads(self.specs, getattr(cfg, "max_open_shards", DEFAULT_MAX_OPEN_SHARDS))
        self.dataset = _SlotDataset(self.specs, cfg, seed, rank, world_size, self.workers)
        self.batches_consumed = 0
        self._iterator: Iterator[Batch] | None = None

    def probability_table(self) -> str:
        stored = {
            tuple(spec.name.split("/", 1)): stream_seconds(spec.shards, None) / 3600 for spec in self.specs
        }
        return format_probability_table(self.hours, self.hour_probs, stored)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = iter(self._make_loader())
        batch = next(self._iterator)
        if self.cfg.num_workers == 0 and torch.cuda.is_available():
            batch.pin_memory()  # the DataLoader pins worker batches; in-process ones are pinned here
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
        shutdown = getattr(iterator, "_shutdown_workers", None) or getattr(iterator, "close", None)
        if shutdown is not None:
            shutdown()  # DataLoader workers, or the in-process slot's generator (closes its shards)

    def skipped(self) -> dict[str, int]:
        """Samples and units dropped so far on this rank, by reason (from the slots' last consumed
        states): too_short, undecodable, broken_units and broken_<cause> for each of BROKEN_CAUSES."""
        totals = dict.fromkeys(SKIP_COUNTERS, 0)
        for state in self.dataset.slot_states.values():
            for key, count in state["counters"].items():
                if key != "samples":
                    totals[key] = totals.get(key, 0) + count
        return totals

    def telemetry(self) -> torch.Tensor:
        """This rank's draws per stream so far, summed over its slots' last consumed states: a float64
        tensor of shape (streams, len(STREAM_COUNTS)), rows in ``self.specs`` order (the same on every
        rank), columns utterances accepted, their audio samples as seen (cropped), utterances too
        short, their audio samples as stored. Sum it over
        ranks (all-reduce), then ``stream_report`` turns it into shares."""
        totals = torch.zeros(len(self.specs), len(STREAM_COUNTS), dtype=torch.float64)
        for state in self.dataset.slot_states.values():
            totals += torch.tensor(state["streams"], dtype=torch.float64)
        return totals

    def stream_report(self, totals: torch.Tensor) -> list[dict[str, Any]]:
        """Per (corpus, language), from ``telemetry()`` summed over ranks: target and realised share of
        the sampled audio, hours and utterances drawn, and passes over the stream's data."""
        return stream_report(self.specs, totals.tolist())

    def carry_over(self, old: list[dict[str, Any]], updates_done: int, reason: str) -> None:
        """Continue every stream's pass from another topology's states (one per old rank): this
        rank's slots first read their share of what the old slots had not drawn yet. When the data,
        the alphas or the seed changed too, positions mean nothing: restart as `reseed` does."""
        old_plan = UnitPlan(self.dataset.plan.streams, old[0]["world_size"] * old[0]["workers"])
        if old[0]["plan"] != old_plan.fingerprint() or old[0]["base_seed"] != self.base_seed:
            self.reseed(updates_done, f"{reason}, and the data plan or the seed changed too")
            return
        old_slots, pending = {}, {}
        for rank, state in enumerate(old):
            first = rank * state["workers"]
            old_slots |= {first + int(logical): slot for logical, slot in state["slots"].items()}
            pending |= {first + int(w): _pieces(c) for w, c in state.get("pending_carry", {}).items()}
        carry = old_carry(old_plan, old[0]["seed"], old_slots, pending)
        per_slot = split_carry(carry, self.dataset.plan.num_slots)
        self._use_seed(old[0]["seed"])
        first = self.rank * self.workers
        self.dataset.carry = {w: per_slot[first + w] for w in range(self.workers)}
        totals = [state["pending_totals"] for state in old if state.get("pending_totals")]
        self.dataset.carried_totals = old_totals([*old_slots.values(), *totals]) if self.rank == 0 else None
        if self.rank == 0:
            log.warning("%s: every stream goes on with the rest of its pass, shared over the new slots",
                        reason)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        dataset = self.dataset
        # A carry (and the old totals) a slot has not started on yet is saved until it has.
        pending = {w: _lists(c) for w, c in dataset.carry.items() if w not in dataset.slot_states}
        totals = dataset.carried_totals if 0 in pending else None
        return {
            "plan": dataset.plan.fingerprint(),
            "world_size": self.world_size,
            "workers": self.workers,
            "seed": self.seed,
            "base_seed": self.base_seed,
            "batches_consumed": self.batches_consumed,
            "slots": dict(dataset.slot_states),
            "pending_carry": pending,
            "pending_totals": None
            if totals is None
            else {"streams": totals[0].tolist(), "counters": dict(totals[1])},
        }

    def load_state_dict(
        self, state: dict[str, Any], all_ranks: Callable[[], list[dict[str, Any]]] | None = None
    ) -> None:
        """Continue exactly where ``state`` was taken. On another topology (world size or workers)
        with the same data and seed, carry the position over from ``all_ranks()`` (every old rank's
        state: `carry_over`); when positions cannot carry over (another plan or seed), restart with a
        seed derived from the batches it had consumed."""
        if self._iterator is not None:
            raise RuntimeError("load_state_dict must be called before iterating")
        base_seed = state["base_seed"]
        same_topology = state["world_size"] == self.world_size and state["workers"] == self.workers
        same_plan = state["plan"] == self.dataset.plan.fingerprint()
        if same_topology and same_plan and base_seed == self.base_seed:
            self._use_seed(state["seed"])
            self.dataset.slot_states = {int(k): v for k, v in state["slots"].items()}
            self.dataset.carry = {int(w): _pieces(c) for w, c in state.get("pending_carry", {}).items()}
            if state.get("pending_totals"):
                self.dataset.carried_totals = old_totals([state["pending_totals"]])
            self.batches_consumed = state["batches_consumed"]
            return
        if not same_topology:
            reason = (
                f"data topology changed (world size {state['world_size']} -> {self.world_size}, "
                f"workers {state['workers']} -> {self.workers})"
            )
            if all_ranks is not None:
                self.carry_over(all_ranks(), state["batches_consumed"], reason)
                return
        elif not same_plan:
            reason = "the data plan changed (data.train, its shards or the upsampling alphas)"
        else:
            reason = f"the seed changed ({base_seed} -> {self.base_seed})"
        self.reseed(state["batches_consumed"], reason)

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


def _lists(carry: list[list[Piece]]) -> list[list[list[int]]]:
    return [[[p.shard, p.start, p.stop] for p in pieces] for pieces in carry]


def _pieces(carry: list[list[list[int]]]) -> list[list[Piece]]:
    return [[Piece(*p) for p in pieces] for pieces in carry]
