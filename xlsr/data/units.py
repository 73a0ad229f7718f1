"""Reading one stream's units (pieces of shards) for one loader slot, and the open-reader budget.

A slot reads its pieces of a stream in a fresh seeded order each pass, forever. At most
``data.max_open_shards`` shard readers (files or ``pipe:`` processes) are open per slot; the least
drawn stream's reader is closed first and reopens where it stopped (a seek on files; ``pipe:``
streams re-read the shard up to that point). Which readers are open never changes which samples
come out. A missing, unreadable, corrupt or truncated unit is counted by cause and skipped for the
pass. Shards are read by the `ShardReader` their URL names (`xlsr.data.shard_readers`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xlsr.data.planning import Piece, PlannedStream
from xlsr.data.shard_format import ShardInfo, escape_path
from xlsr.data.shard_readers import shard_reader
from xlsr.data.shards import RawSample, failure_cause
from xlsr.process import UserError

log = logging.getLogger(__name__)

SampleRef = tuple[int, int, int, int]  # (stream, pass, piece position in that pass, offset in piece)
# The pass number of a carry: what the slots of another topology left of their pass (xlsr.data.carry),
# read before a slot's own passes.
CARRY_PASS = -1


def pass_order(num_pieces: int, seed: tuple[int, int, int], pass_: int) -> np.ndarray:
    """The order a slot reads its ``num_pieces`` pieces in, in pass ``pass_``; ``seed`` is (stream
    seed, stream, slot). Resumed runs rely on this exact seeding."""
    entropy = pass_ if pass_ != CARRY_PASS else 2**63 - 1
    return np.random.default_rng([*seed, entropy]).permutation(num_pieces)


# Why a unit (piece of a shard) could not be read; each is counted as "broken_<cause>".
BROKEN_CAUSES = ("missing", "unreadable", "corrupt", "truncated", "empty")
DEFAULT_MAX_OPEN_SHARDS = 16


@dataclass(frozen=True)
class StreamSpec:
    name: str  # "corpus/language"
    shards: tuple[ShardInfo, ...]
    # Share of the sampled audio this stream gets (the upsampling table).
    hour_prob: float
    # Per shard, the seconds the upsampling counts (xlsr.data.loader.stream_seconds); None: stored.
    shard_seconds: tuple[float, ...] | None = None

    @property
    def utterances(self) -> int:
        return sum(shard.samples for shard in self.shards)

    def planned(self) -> PlannedStream:
        return PlannedStream(self.shards, self.hour_prob, self.shard_seconds)


class EmptyStreamError(UserError, RuntimeError):
    """No unit of a stream yields a usable sample for a slot (missing, unreadable or empty shards)."""


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
        self.carry: tuple[Piece, ...] = ()  # read first, as pass CARRY_PASS (xlsr.data.carry)
        self._samples: Iterator[tuple[int, int, int, RawSample | None]] | None = None
        self._resume_byte: int | None = None  # where the next sample starts, once known
        self._gave_samples = False  # the current piece yielded a usable sample
        self._suspended = False  # closed to make room for another reader: reopening counts
        self.counters = counters  # the slot's skip counts (shared)
        self.readers = readers
        self.failures: dict[str, str] = {}  # url -> why it could not be read, for EmptyStreamError
        self._order_of: tuple[int, np.ndarray] = (-2, np.empty(0, dtype=np.int64))  # (pass, its order)
        # Where each piece's first sample starts in its tar, once read: later passes seek straight there.
        self._piece_start_byte: dict[Piece, int] = {}

    def _pieces_of(self, pass_: int) -> tuple[Piece, ...]:
        return self.carry if pass_ == CARRY_PASS else self.pieces

    def _order(self, pass_: int) -> np.ndarray:
        # Recomputed, not checkpointed: resumed runs rely on this exact seeding of each pass's order.
        if self._order_of[0] != pass_:
            self._order_of = (pass_, pass_order(len(self._pieces_of(pass_)), self.seed, pass_))
        return self._order_of[1]

    def _piece(self, pass_: int, position: int) -> Piece:
        return self._pieces_of(pass_)[int(self._order(pass_)[position])]

    def start_with(self, carry: Sequence[Piece]) -> None:
        """Read ``carry`` (another topology's rest of the pass) before this slot's own passes."""
        self.close()
        self.carry = tuple(carry)
        self.pass_, self.position, self.offset = (CARRY_PASS if self.carry else 0), 0, 0
        self._order_of = (-2, np.empty(0, dtype=np.int64))

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
            if barren > len(self.pieces) + len(self.carry):
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
                self._samples = shard_reader(url).samples(url, start, piece.stop, resume)
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
        if self.position == len(self._pieces_of(self.pass_)):
            self.pass_, self.position = self.pass_ + 1, 0  # after the carry: pass 0

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
                for index, _, _, sample in shard_reader(url).samples(url, piece.start, stop):
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

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"pass": self.pass_, "position": self.position, "offset": self.offset}
        if self.carry:  # kept after it is read: buffered samples may still refer to it
            state["carry"] = [[p.shard, p.start, p.stop] for p in self.carry]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.pass_, self.position, self.offset = state["pass"], state["position"], state["offset"]
        self.carry = tuple(Piece(*p) for p in state.get("carry", ()))
        self._order_of = (-2, np.empty(0, dtype=np.int64))
        self._resume_byte, self._gave_samples = None, False


_UNUSABLE = object()
