"""The stateful, deterministic sample stream of one loader slot.

A *slot* is one (rank, dataloader worker) pair. Every slot owns disjoint data: each (corpus,
language) stream is cut into *units* — whole shards when there are at least as many shards as slots,
otherwise interleaved slices of shards — and unit ``u`` belongs to slot ``u mod num_slots``. A slot
reads its units in a fresh seeded order each pass, forever: there are no epochs for ranks to
disagree on, and the trainer owns the step count.

Per slot, one seeded RNG drives, in a fixed order: the choice of stream for the next utterance
(upsampling), the shuffle buffer, and the random crop. Every buffered sample carries a reference
(stream, pass, unit position, offset), so the slot's state is small — RNG state, read positions and
buffer references — and restoring it re-reads exactly the buffered samples: a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xlsr.config import DataConfig
from xlsr.data.shard_format import ShardInfo
from xlsr.data.shards import RawSample, decode_sample_into, iter_shard
from xlsr.process import UserError
from xlsr.seeding import derive_seed

SampleRef = tuple[int, int, int, int]  # (stream, pass, unit position in that pass, offset in unit)


@dataclass(frozen=True)
class StreamSpec:
    name: str  # "corpus/language"
    shards: tuple[ShardInfo, ...]
    # Probability of drawing the next *utterance* from this stream.
    utterance_prob: float


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


def plan_units(shards: tuple[ShardInfo, ...], num_slots: int) -> list[tuple[int, int, int]]:
    """(shard, part, parts) units: shard ``shard`` read at every ``parts``-th sample from ``part``.

    Shards are sliced only as finely as needed to give every slot a unit, and never into more
    parts than they have samples (the index knows the counts).
    """
    target_parts = math.ceil(num_slots / max(1, len(shards)))
    parts = [max(1, min(target_parts, shard.samples)) for shard in shards]
    return [
        (index, part, parts[index])
        for part in range(max(parts))
        for index in range(len(shards))
        if part < parts[index]
    ]


class UnitReader:
    """Reads one stream's units assigned to a slot, in a reshuffled order every pass, forever."""

    def __init__(
        self, stream_id: int, spec: StreamSpec, slot: int, num_slots: int, seed: int, counters: Counter[str]
    ):
        self.stream_id = stream_id
        self.spec = spec
        units = plan_units(spec.shards, num_slots)
        # A stream with fewer utterances than slots cannot be split disjointly: its slots share units.
        self.units = units[slot::num_slots] if len(units) >= num_slots else [units[slot % len(units)]]
        self.seed = (seed, stream_id, slot)
        self.pass_, self.position, self.offset = 0, 0, 0
        self._samples: Iterator[RawSample] | None = None
        self.counters = counters  # the slot's skip counts (shared)
        self.last_error: str | None = None  # why the last broken unit could not be read

    def _order(self, pass_: int) -> np.ndarray:
        # Recomputed, not checkpointed: resumed runs rely on this exact seeding of each pass's order.
        return np.random.default_rng([*self.seed, pass_]).permutation(len(self.units))

    def _unit_samples(self, pass_: int, position: int) -> Iterator[RawSample]:
        shard, part, parts = self.units[self._order(pass_)[position]]
        yield from iter_shard(self.spec.shards[shard].url, part, parts)

    def next(self) -> tuple[SampleRef, RawSample]:
        empty_units = 0
        while True:
            if self._samples is None:
                self._samples = self._unit_samples(self.pass_, self.position)
                for _ in range(self.offset):
                    next(self._samples, None)
            try:
                sample = next(self._samples, None)
            except Exception as exc:  # a truncated, corrupt or vanished tar: count it, move on
                self.counters["broken_units"] += 1
                self.last_error = " ".join(f"{type(exc).__name__}: {exc}".split())
                sample = None
            if sample is not None:
                ref = (self.stream_id, self.pass_, self.position, self.offset)
                self.offset += 1
                return ref, sample
            empty_units = 0 if self.offset else empty_units + 1
            if empty_units > len(self.units):
                raise EmptyStreamError(self._no_samples_message())
            self._advance_unit()

    def _no_samples_message(self) -> str:
        urls = sorted({self.spec.shards[shard].url for shard, _, _ in self.units})
        listed = ", ".join(urls[:3]) + (f" and {len(urls) - 3} more" if len(urls) > 3 else "")
        last = f" (last error: {self.last_error})" if self.last_error else ""
        return f"stream {self.spec.name} has no readable samples for this slot in {listed}{last}"

    def _advance_unit(self) -> None:
        self._close()
        self.position, self.offset = self.position + 1, 0
        if self.position == len(self.units):
            self.pass_, self.position = self.pass_ + 1, 0

    def fetch(self, refs: list[SampleRef]) -> dict[SampleRef, RawSample]:
        """Re-read specific samples (to refill buffers on resume)."""
        found: dict[SampleRef, RawSample] = {}
        by_unit: dict[tuple[int, int], set[int]] = {}
        for ref in refs:
            by_unit.setdefault((ref[1], ref[2]), set()).add(ref[3])
        for (pass_, position), offsets in by_unit.items():
            for offset, sample in enumerate(self._unit_samples(pass_, position)):
                if offset in offsets:
                    found[(self.stream_id, pass_, position, offset)] = sample
                if offset >= max(offsets):
                    break
        return found

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_, "position": self.position, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_, self.position, self.offset = state["pass"], state["position"], state["offset"]
        self._close()

    def _close(self) -> None:
        if self._samples is not None:
            self._samples.close()  # releases the file or the `pipe:` process
        self._samples = None


class SlotPipeline:
    """Upsampled mixing → shuffle buffer → length buckets → cropped, padded batches."""

    def __init__(self, specs: list[StreamSpec], cfg: DataConfig, slot: int, num_slots: int, seed: int):
        if cfg.max_sample_size > cfg.max_tokens:
            raise ValueError(
                f"data.max_sample_size ({cfg.max_sample_size}) must not exceed "
                f"data.max_tokens ({cfg.max_tokens})"
            )
        self.cfg = cfg
        self.counters: Counter[str] = Counter()  # samples batched, and skips by reason
        self.readers = [
            UnitReader(i, spec, slot, num_slots, seed, self.counters) for i, spec in enumerate(specs)
        ]
        self.probs = np.array([spec.utterance_prob for spec in specs], dtype=np.float64)
        self.probs /= self.probs.sum()
        # What Generator.choice(p=probs) computes on every call (the same draws), computed once.
        self.cdf = self.probs.cumsum()
        self.cdf /= self.cdf[-1]
        # Its state is checkpointed, so changing how it is seeded only changes fresh starts.
        self.rng = np.random.default_rng(derive_seed(seed, "data_slot", slot))
        self.shuffle: list[tuple[SampleRef, RawSample]] = []
        edges = np.linspace(cfg.min_sample_size, cfg.max_sample_size, cfg.num_buckets + 1)[1:]
        self.bucket_edges = np.ceil(edges).astype(np.int64)
        self.buckets: list[list[tuple[SampleRef, RawSample]]] = [[] for _ in range(cfg.num_buckets)]
        self.scratch = np.empty(0, dtype=np.float32)  # whole utterances, for normalisation

    # -- sample flow ------------------------------------------------------------------------------

    def _pull(self) -> tuple[SampleRef, RawSample]:
        """Next usable utterance of the upsampled mixture."""
        while True:
            reader = self.readers[int(self.cdf.searchsorted(self.rng.random(), side="right"))]
            ref, sample = reader.next()
            if sample.num_samples >= self.cfg.min_sample_size:
                return ref, sample
            self.counters["too_short"] += 1

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
        if not self.cfg.normalize:
            return decode_sample_into(sample, out, start)
        # Normalised over the whole utterance before cropping (fairseq), so the whole is decoded; the
        # statistics take two passes (mean, and E[x²] by BLAS), then only the crop is written.
        if len(self.scratch) < sample.num_samples:
            self.scratch = np.empty(sample.num_samples, dtype=np.float32)
        wave = self.scratch[: decode_sample_into(sample, self.scratch[: sample.num_samples])]
        mean = float(wave.mean())
        variance = max(float(np.dot(wave, wave)) / max(len(wave), 1) - mean * mean, 0.0)
        crop = wave[start : start + len(out)]
        np.subtract(crop, np.float32(mean), out=out[: len(crop)])
        np.multiply(out[: len(crop)], np.float32(1 / np.sqrt(variance + 1e-5)), out=out[: len(crop)])
        return len(crop)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "readers": [reader.state_dict() for reader in self.readers],
            "shuffle": [ref for ref, _ in self.shuffle],
            "buckets": [[ref for ref, _ in bucket] for bucket in self.buckets],
            "counters": dict(self.counters),
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
