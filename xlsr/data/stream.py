"""The stateful, deterministic sample stream of one loader slot.

A *slot* is one (rank, dataloader worker) pair. Which utterances each slot owns, and how often it draws
each stream, is planned in ``xlsr.data.planning``: slots own disjoint equal runs of every stream with
at least as many utterances as slots (and share the smaller ones), and draw streams in proportion to
what they own, so every utterance of a stream has the same expected draw rate whichever slot owns it.
A slot reads its pieces in a fresh seeded order each pass, forever: there are no epochs for ranks to
disagree on, and the trainer owns the step count.

Per slot, one seeded RNG drives, in a fixed order: the choice of stream for the next utterance
(upsampling), the shuffle buffer, and the random crop. Every buffered sample carries a reference
(stream, pass, piece position, offset), so the slot's state is small — RNG state, read positions and
buffer references — and restoring it re-reads exactly the buffered samples: a resumed run sees
the same batches as an uninterrupted one.

At most ``data.max_open_shards`` shard readers (files or ``pipe:`` processes) are open per slot; the
least recently used one is closed and reopens where it stopped (a seek on files; ``pipe:`` streams
re-read the shard up to that point). Which readers are open never changes which samples come out.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xlsr.config import SAMPLE_RATE, DataConfig
from xlsr.data.planning import Piece, PlannedStream, UnitPlan
from xlsr.data.shard_format import ShardInfo, escape_path
from xlsr.data.shards import RawSample, decode_sample_into, failure_cause, iter_samples
from xlsr.process import UserError
from xlsr.seeding import derive_seed

log = logging.getLogger(__name__)

SampleRef = tuple[int, int, int, int]  # (stream, pass, piece position in that pass, offset in piece)
# Why a unit (piece of a shard) could not be read; each is counted as "broken_<cause>".
BROKEN_CAUSES = ("missing", "unreadable", "corrupt", "truncated", "empty")
# Per-stream draw counts kept in every slot's state (DataStream.telemetry sums them).
STREAM_COUNTS = ("utterances", "samples", "too_short")
DEFAULT_MAX_OPEN_SHARDS = 16
# This many utterances in a row shorter than data.min_sample_size means none will ever be long enough.
MAX_CONSECUTIVE_TOO_SHORT = 10_000


@dataclass(frozen=True)
class StreamSpec:
    name: str  # "corpus/language"
    shards: tuple[ShardInfo, ...]
    # Share of the sampled audio this stream gets (the upsampling table).
    hour_prob: float

    @property
    def utterances(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def planned(self) -> PlannedStream:
        return PlannedStream(self.shards, self.hour_prob)


@dataclass
class Batch:
    source: torch.Tensor  # (B, L) float32 waveforms, zero-padded
    padding_mask: torch.Tensor | None  # (B, L) bool, True = padding; None when nothing is padded
    num_samples: int  # audio samples before padding
    keys: list[str] = field(default_factory=list)
    # Loader bookkeeping attached by the loader: (logical worker, slot state after this batch).
    state: tuple[int, dict[str, Any]] | None = None

    def pin_memory(self) -> Batch:
        self.source = self.source.pin_memory()
        if self.padding_mask is not None:
            self.padding_mask = self.padding_mask.pin_memory()
        return self


class EmptyStreamError(UserError, RuntimeError):
    """No unit of a stream yields a usable sample for a slot (missing, unreadable or empty shards)."""


class TooShortError(UserError, RuntimeError):
    """Every utterance drawn for a long time was shorter than ``data.min_sample_size``."""


class _RateLimitedWarnings:
    """At most ``limit`` warnings per ``period`` seconds per process; the rest are counted and the
    count is reported with the next warning that gets through."""

    def __init__(self, limit: int = 10, period: float = 60.0):
        self.limit, self.period = limit, period
        self.window_start, self.in_window, self.suppressed = -math.inf, 0, 0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self.window_start > self.period:
            self.window_start, self.in_window = now, 0
        if self.in_window >= self.limit:
            self.suppressed += 1
            return
        self.in_window += 1
        if self.suppressed:
            message += f" ({self.suppressed} similar warning(s) suppressed before this one)"
            self.suppressed = 0
        log.warning(message)


_broken_unit_warnings = _RateLimitedWarnings()


class OpenReaders:
    """Bounds the shard readers a slot holds open. When one more is needed, the open reader of the
    stream the slot draws least often is suspended (ties: the least recently used), so the most
    drawn streams stay open and the rarely drawn ones take turns: with independent draws, that keeps
    reopening to the draws that fall outside the cap - 1 most probable streams."""

    def __init__(self, cap: int, draw_weights: np.ndarray):
        if cap < 1:
            raise ValueError(f"data.max_open_shards must be >= 1, got {cap}")
        self.cap, self.draw_weights = cap, draw_weights
        self._open: OrderedDict[int, UnitReader] = OrderedDict()  # least recently used first
        self.reopened = 0  # readers opened again after a suspension (telemetry for the cap's cost)

    def opened(self, reader: UnitReader) -> None:
        self._open[reader.stream_id] = reader
        self._open.move_to_end(reader.stream_id)
        if len(self._open) > self.cap:
            victim = min(list(self._open)[:-1], key=lambda stream: self.draw_weights[stream])
            self._open.pop(victim).suspend()

    def used(self, reader: UnitReader) -> None:
        self._open.move_to_end(reader.stream_id)

    def closed(self, reader: UnitReader) -> None:
        self._open.pop(reader.stream_id, None)


class UnitReader:
    """Reads one stream's pieces owned by a slot, in a reshuffled order every pass, forever."""

    def __init__(
        self,
        stream_id: int,
        spec: StreamSpec,
        pieces: tuple[Piece, ...],
        slot: int,
        seed: int,
        counters: Counter[str],
        readers: OpenReaders,
    ):
        self.stream_id, self.spec, self.pieces, self.slot = stream_id, spec, pieces, slot
        self.seed = (seed, stream_id, slot)
        self.pass_, self.position, self.offset = 0, 0, 0
        self._samples: Iterator[tuple[int, int, int, RawSample | None]] | None = None
        self._resume_byte: int | None = None  # where the next sample starts, once known
        self._gave_samples = False  # the current piece yielded a usable sample
        self._suspended = False  # closed to make room for another reader: reopening counts
        self.counters = counters  # the slot's skip counts (shared)
        self.readers = readers
        self.failures: dict[str, str] = {}  # url -> why it could not be read, for EmptyStreamError
        self._order_of: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))
        # Where each piece's first sample starts in its tar, once read: later passes seek straight there.
        self._piece_start_byte: dict[Piece, int] = {}

    def _order(self, pass_: int) -> np.ndarray:
        # Recomputed, not checkpointed: resumed runs rely on this exact seeding of each pass's order.
        if self._order_of[0] != pass_:
            self._order_of = (pass_, np.random.default_rng([*self.seed, pass_]).permutation(len(self.pieces)))
        return self._order_of[1]

    def _piece(self, pass_: int, position: int) -> Piece:
        return self.pieces[int(self._order(pass_)[position])]

    def next(self) -> tuple[SampleRef, RawSample]:
        barren = 0  # pieces in a row that gave no usable sample
        while True:
            piece = self._piece(self.pass_, self.position)
            item = self._read(piece) if self.offset < piece.size else None
            if item is not None:
                ref = (self.stream_id, self.pass_, self.position, self.offset)
                self.offset += 1
                if item is _UNUSABLE:
                    self.counters["undecodable"] += 1
                    continue
                return ref, item
            barren = 0 if self._gave_samples else barren + 1
            if barren > len(self.pieces):
                raise EmptyStreamError(self._no_samples_message())
            self._advance_piece()

    def _read(self, piece: Piece) -> RawSample | object | None:
        """The next sample of ``piece`` (``_UNUSABLE`` for an entry without audio or metadata), or
        None when the piece is done or cannot be read (then counted and logged)."""
        url = self.spec.shards[piece.shard].url
        try:
            if self._samples is None:
                start = piece.start + self.offset
                resume = self._resume_byte if self.offset else self._piece_start_byte.get(piece)
                self._samples = iter_samples(url, start, piece.stop, resume)
                if self._suspended:
                    self.readers.reopened += 1
                self.readers.opened(self)
            else:
                self.readers.used(self)
            index, first_byte, self._resume_byte, sample = next(self._samples)
        except StopIteration:
            self.close()
            return None
        except Exception as exc:  # a missing, unreadable, corrupt or truncated shard: count, name, move on
            self.close()
            self._broken(url, exc)
            return None
        if index == piece.start:
            self._piece_start_byte[piece] = first_byte
        self._gave_samples = self._gave_samples or sample is not None
        return _UNUSABLE if sample is None else sample

    def _broken(self, url: str, exc: Exception) -> None:
        cause = failure_cause(exc)
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        self.counters["broken_units"] += 1
        self.counters[f"broken_{cause}"] += 1
        self.failures[url] = f"{cause}: {detail}"
        _broken_unit_warnings.warn(
            f"data: skipping {escape_path(url)} in stream {self.spec.name} for this pass "
            f"(slot {self.slot}, {cause}): {detail}"
        )

    def _no_samples_message(self) -> str:
        urls = sorted({self.spec.shards[piece.shard].url for piece in self.pieces})
        reasons = [f"{escape_path(url)} ({self.failures.get(url, 'no usable sample')})" for url in urls[:3]]
        more = f" and {len(urls) - 3} more" if len(urls) > 3 else ""
        return (
            f"stream {self.spec.name} has no readable samples for slot {self.slot}: "
            f"{'; '.join(reasons)}{more}"
        )

    def _advance_piece(self) -> None:
        self.close()
        self._gave_samples = False
        self.position, self.offset, self._resume_byte = self.position + 1, 0, None
        if self.position == len(self.pieces):
            self.pass_, self.position = self.pass_ + 1, 0

    def fetch(self, refs: list[SampleRef]) -> dict[SampleRef, RawSample]:
        """Re-read specific samples (to refill buffers on resume), one piece open at a time."""
        found: dict[SampleRef, RawSample] = {}
        by_piece: dict[tuple[int, int], set[int]] = {}
        for ref in refs:
            by_piece.setdefault((ref[1], ref[2]), set()).add(ref[3])
        for (pass_, position), offsets in by_piece.items():
            piece = self._piece(pass_, position)
            url = self.spec.shards[piece.shard].url
            stop = min(piece.stop, piece.start + max(offsets) + 1)
            try:
                for index, _, _, sample in iter_samples(url, piece.start, stop):
                    if sample is not None and index - piece.start in offsets:
                        found[(self.stream_id, pass_, position, index - piece.start)] = sample
            except Exception as exc:  # the caller names what could not be restored
                self.failures[url] = f"{failure_cause(exc)}: {exc}"
        return found

    def suspend(self) -> None:
        """Close the open shard (another reader needs the slot's budget); reading resumes where it stopped."""
        if self._samples is not None:
            self._samples.close()  # releases the file or the `pipe:` process
            self._suspended = True
        self._samples = None

    def close(self) -> None:
        self.suspend()
        self._suspended = False
        self.readers.closed(self)

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_, "position": self.position, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.pass_, self.position, self.offset = state["pass"], state["position"], state["offset"]
        self._resume_byte, self._gave_samples = None, False


_UNUSABLE = object()


class UtterancePreparer:
    """Decode a crop of an utterance, normalised (``data.normalize``) over the whole utterance as
    fairseq does; the one preparation of training batches and the held-out set alike."""

    def __init__(self, normalize: bool):
        self.normalize = normalize
        self.scratch = np.empty(0, dtype=np.float32)  # whole utterances, for normalisation

    def __call__(self, sample: RawSample, out: np.ndarray, start: int) -> int:
        """Samples ``start`` to ``start + len(out)`` of ``sample`` into ``out``; returns how many."""
        if not self.normalize:
            return decode_sample_into(sample, out, start)
        # The whole is decoded for the statistics, which take two passes (mean, and E[x²] by BLAS);
        # then only the crop is written.
        if len(self.scratch) < sample.num_samples:
            self.scratch = np.empty(sample.num_samples, dtype=np.float32)
        wave = self.scratch[: decode_sample_into(sample, self.scratch[: sample.num_samples])]
        mean = float(wave.mean())
        variance = max(float(np.dot(wave, wave)) / max(len(wave), 1) - mean * mean, 0.0)
        crop = wave[start : start + len(out)]
        np.subtract(crop, np.float32(mean), out=out[: len(crop)])
        np.multiply(out[: len(crop)], np.float32(1 / np.sqrt(variance + 1e-5)), out=out[: len(crop)])
        return len(crop)


class SlotPipeline:
    """Upsampled mixing → shuffle buffer → length buckets → cropped, padded batches."""

    def __init__(
        self,
        specs: list[StreamSpec],
        cfg: DataConfig,
        slot: int,
        num_slots: int,
        seed: int,
        plan: UnitPlan | None = None,
    ):
        if cfg.max_sample_size > cfg.max_tokens:
            raise ValueError(
                f"data.max_sample_size ({cfg.max_sample_size}) must not exceed "
                f"data.max_tokens ({cfg.max_tokens})"
            )
        self.cfg = cfg
        self.counters: Counter[str] = Counter()  # samples batched, and skips by reason
        self.plan = plan or UnitPlan([spec.planned() for spec in specs], num_slots)
        self.probs = self.plan.draw_weights(slot)
        self.open_readers = OpenReaders(getattr(cfg, "max_open_shards", DEFAULT_MAX_OPEN_SHARDS), self.probs)
        self.readers = [
            UnitReader(i, spec, self.plan.pieces(i, slot), slot, seed, self.counters, self.open_readers)
            for i, spec in enumerate(specs)
        ]
        # What Generator.choice(p=probs) computes on every call (the same draws), computed once.
        self.cdf = self.probs.cumsum()
        self.cdf /= self.cdf[-1]
        # Its state is checkpointed, so changing how it is seeded only changes fresh starts.
        self.rng = np.random.default_rng(derive_seed(seed, "data_slot", slot))
        # Per stream: utterances accepted, their audio samples, and utterances too short (STREAM_COUNTS).
        self.stream_counts = np.zeros((len(specs), len(STREAM_COUNTS)), dtype=np.int64)
        self._too_short_run: list[int] = []  # lengths of the current run of too-short draws
        self.shuffle: list[tuple[SampleRef, RawSample]] = []
        edges = np.linspace(cfg.min_sample_size, cfg.max_sample_size, cfg.num_buckets + 1)[1:]
        self.bucket_edges = np.ceil(edges).astype(np.int64)
        self.buckets: list[list[tuple[SampleRef, RawSample]]] = [[] for _ in range(cfg.num_buckets)]
        self.preparer = UtterancePreparer(cfg.normalize)

    # -- sample flow ------------------------------------------------------------------------------

    def _pull(self) -> tuple[SampleRef, RawSample]:
        """Next usable utterance of the upsampled mixture."""
        while True:
            stream = int(self.cdf.searchsorted(self.rng.random(), side="right"))
            ref, sample = self.readers[stream].next()
            counts = self.stream_counts[stream]
            if sample.num_samples >= self.cfg.min_sample_size:
                counts[0] += 1
                counts[1] += sample.num_samples
                self._too_short_run.clear()
                return ref, sample
            counts[2] += 1
            self.counters["too_short"] += 1
            self._too_short_run.append(sample.num_samples)
            if len(self._too_short_run) >= MAX_CONSECUTIVE_TOO_SHORT:
                raise TooShortError(self._too_short_message())

    def _too_short_message(self) -> str:
        lengths = np.array(self._too_short_run)
        low, median, high = (int(v) for v in np.percentile(lengths, [0, 50, 100]))
        minimum = self.cfg.min_sample_size
        return (
            f"the last {len(lengths)} utterances drawn were all shorter than data.min_sample_size="
            f"{minimum} samples ({minimum / SAMPLE_RATE:.2f} s): lengths {low}-{high} samples "
            f"({low / SAMPLE_RATE:.2f}-{high / SAMPLE_RATE:.2f} s, median {median}); lower "
            "data.min_sample_size or shard longer utterances"
        )

    def _shuffled(self) -> tuple[SampleRef, RawSample]:
        while len(self.shuffle) < self.cfg.shuffle_buffer:
            self.shuffle.append(self._pull())
        index = int(self.rng.integers(len(self.shuffle)))
        item, self.shuffle[index] = self.shuffle[index], self._pull()
        return item

    def _crop_length(self, sample: RawSample) -> int:
        return min(sample.num_samples, self.cfg.max_sample_size)

    def _bucket_of(self, sample: RawSample) -> int:
        index = int(np.searchsorted(self.bucket_edges, self._crop_length(sample)))
        return min(index, len(self.bucket_edges) - 1)

    def next_batch(self) -> Batch:
        while True:
            members = self._next_members()
            batch = self._collate([sample for _, sample in members])
            if batch is not None:
                return batch

    def _next_members(self) -> list[tuple[SampleRef, RawSample]]:
        while True:
            item = self._shuffled()
            bucket_id = self._bucket_of(item[1])
            bucket = self.buckets[bucket_id]
            # Batches are as large as max_tokens allows for the longest utterance this bucket can hold.
            if (len(bucket) + 1) * int(self.bucket_edges[bucket_id]) > self.cfg.max_tokens and bucket:
                self.buckets[bucket_id] = [item]
                return bucket
            bucket.append(item)
            if sum(map(len, self.buckets)) > self.cfg.bucket_buffer:
                fullest = max(range(len(self.buckets)), key=lambda b: len(self.buckets[b]))
                members, self.buckets[fullest] = self.buckets[fullest], []
                return members

    def _collate(self, samples: list[RawSample]) -> Batch | None:
        """Decode, (normalise,) crop and right-pad ``samples`` into one batch; undecodable ones are
        dropped and counted. Audio is decoded straight into the batch buffer."""
        lengths = [self._crop_length(sample) for sample in samples]
        source = np.empty((len(samples), max(lengths)), dtype=np.float32)
        for row, sample in enumerate(samples):
            try:
                lengths[row] = self._decode_crop(sample, source[row, : lengths[row]])
            except ValueError:
                self.counters["undecodable"] += 1
                lengths[row] = 0
            source[row, lengths[row] :] = 0.0  # right padding (and what a short decode left out)
        kept = [row for row, length in enumerate(lengths) if length > 0]
        if not kept:
            return None
        if len(kept) < len(samples):
            source, lengths, samples = source[kept], [lengths[r] for r in kept], [samples[r] for r in kept]
        longest = max(lengths)
        if longest < source.shape[1]:
            source = np.ascontiguousarray(source[:, :longest])
        padding = None
        if min(lengths) < longest:
            padding = torch.zeros(source.shape, dtype=torch.bool)
            for row, length in enumerate(lengths):
                padding[row, length:] = True
        self.counters["samples"] += len(samples)
        return Batch(
            source=torch.from_numpy(source),
            padding_mask=padding,
            num_samples=sum(lengths),
            keys=[sample.key for sample in samples],
        )

    def _decode_crop(self, sample: RawSample, out: np.ndarray) -> int:
        """A random crop of ``len(out)`` samples of ``sample`` into ``out``; returns its length."""
        start = int(self.rng.integers(sample.num_samples - len(out) + 1))
        return self.preparer(sample, out, start)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "readers": [reader.state_dict() for reader in self.readers],
            "shuffle": [ref for ref, _ in self.shuffle],
            "buckets": [[ref for ref, _ in bucket] for bucket in self.buckets],
            "counters": dict(self.counters),
            "streams": self.stream_counts.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["readers"]) != len(self.readers):
            raise ValueError("loader state has a different number of streams than the configured data")
        self.rng.bit_generator.state = state["rng"]
        for reader, reader_state in zip(self.readers, state["readers"], strict=True):
            reader.load_state_dict(reader_state)
        refs = [tuple(ref) for ref in state["shuffle"]] + [
            tuple(ref) for bucket in state["buckets"] for ref in bucket
        ]
        samples: dict[SampleRef, RawSample] = {}
        for stream_id, reader in enumerate(self.readers):
            samples.update(reader.fetch([ref for ref in refs if ref[0] == stream_id]))
        missing = [ref for ref in refs if ref not in samples]
        if missing:
            raise ValueError(
                f"cannot restore {len(missing)} buffered samples (shards changed?): {missing[:3]}"
            )
        self.shuffle = [(tuple(ref), samples[tuple(ref)]) for ref in state["shuffle"]]
        self.buckets = [[(tuple(ref), samples[tuple(ref)]) for ref in bucket] for bucket in state["buckets"]]
        self.counters.clear()  # in place: the readers share it
        self.counters.update(state["counters"])
        if "streams" in state:
            self.stream_counts[:] = np.array(state["streams"], dtype=np.int64)

    def close(self) -> None:
        """Close every open shard (files and `pipe:` processes)."""
        for reader in self.readers:
            reader.close()
