"""The stages of a loader slot's pipeline, each a small stateful part (lhotse's style):

``Mixer`` (upsampled choice of stream, then that stream's next usable utterance) → ``ShuffleBuffer``
→ ``Bucketer`` (length-homogeneous groups within ``data.max_tokens``) → ``Collator`` (decode,
normalise, crop, pad → `Batch`). `xlsr.data.stream.SlotPipeline` composes them.

One seeded RNG per slot is shared by the stages and drives, in a fixed order, the choice of stream,
the shuffle buffer and the random crop. Buffered items are ``(SampleRef, RawSample)``: a stage's
state holds only the references, and restoring it re-reads exactly those samples (`Mixer.fetch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xlsr.config import SAMPLE_RATE, DataConfig
from xlsr.data.planning import Piece, UnitPlan
from xlsr.data.shards import RawSample, decode_sample_into
from xlsr.data.units import DEFAULT_MAX_OPEN_SHARDS, OpenReaders, SampleRef, StreamSpec, UnitReader
from xlsr.process import UserError

Item = tuple[SampleRef, RawSample]
# Per-stream draw counts kept in every slot's state (DataStream.telemetry sums them).
# Per stream: utterances drawn, their samples as the model sees them (each at most max_sample_size),
# too-short draws skipped, and the drawn utterances' stored samples.
STREAM_COUNTS = ("utterances", "samples", "too_short", "stored_samples")
# This many utterances in a row shorter than data.min_sample_size means none will ever be long enough.
MAX_CONSECUTIVE_TOO_SHORT = 10_000


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


class TooShortError(UserError, RuntimeError):
    """Every utterance drawn for a long time was shorter than ``data.min_sample_size``."""


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


class Mixer:
    """The upsampled mixture: a stream drawn by its weight, then that stream's next utterance long
    enough to train on (shorter ones are counted per stream and skipped)."""

    def __init__(
        self,
        specs: list[StreamSpec],
        cfg: DataConfig,
        plan: UnitPlan,
        slot: int,
        seed: int,
        rng: np.random.Generator,
        counters: Counter[str],
    ):
        self.min_sample_size, self.rng, self.counters = cfg.min_sample_size, rng, counters
        self.max_sample_size = cfg.max_sample_size
        probs = plan.draw_weights(slot)
        self.open_readers = OpenReaders(getattr(cfg, "max_open_shards", DEFAULT_MAX_OPEN_SHARDS), probs)
        self.readers = [
            UnitReader(i, spec, plan.pieces(i, slot), slot, seed, counters, self.open_readers)
            for i, spec in enumerate(specs)
        ]
        # What Generator.choice(p=probs) computes on every call (the same draws), computed once.
        self.cdf = probs.cumsum()
        self.cdf /= self.cdf[-1]
        self.stream_counts = np.zeros((len(specs), len(STREAM_COUNTS)), dtype=np.int64)
        self._too_short_run: list[int] = []  # lengths of the current run of too-short draws

    def __call__(self) -> Item:
        while True:
            stream = int(self.cdf.searchsorted(self.rng.random(), side="right"))
            ref, sample = self.readers[stream].next()
            counts = self.stream_counts[stream]
            if sample.num_samples >= self.min_sample_size:
                counts[0] += 1
                counts[1] += min(sample.num_samples, self.max_sample_size)
                counts[3] += sample.num_samples
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
        minimum = self.min_sample_size
        return (
            f"the last {len(lengths)} utterances drawn were all shorter than data.min_sample_size="
            f"{minimum} samples ({minimum / SAMPLE_RATE:.2f} s): lengths {low}-{high} samples "
            f"({low / SAMPLE_RATE:.2f}-{high / SAMPLE_RATE:.2f} s, median {median}); lower "
            "data.min_sample_size or shard longer utterances"
        )

    def fetch(self, refs: list[SampleRef]) -> dict[SampleRef, RawSample]:
        """Re-read buffered samples by reference (restoring the later stages)."""
        samples: dict[SampleRef, RawSample] = {}
        for stream_id, reader in enumerate(self.readers):
            samples.update(reader.fetch([ref for ref in refs if ref[0] == stream_id]))
        missing = [ref for ref in refs if ref not in samples]
        if missing:
            raise ValueError(
                f"cannot restore {len(missing)} buffered samples (shards changed?): {missing[:3]}"
            )
        return samples

    def state_dict(self) -> dict[str, Any]:
        return {
            "readers": [reader.state_dict() for reader in self.readers],
            "streams": self.stream_counts.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["readers"]) != len(self.readers):
            raise ValueError("loader state has a different number of streams than the configured data")
        for reader, reader_state in zip(self.readers, state["readers"], strict=True):
            reader.load_state_dict(reader_state)
        counts = np.array(state["streams"], dtype=np.int64).reshape(len(self.readers), -1)
        if counts.shape[1] < len(STREAM_COUNTS):
            # A state from before crops were counted: its samples were stored ones. What the model saw
            # is at most one crop per utterance of that.
            stored = counts[:, 1:2]
            seen = np.minimum(stored, counts[:, 0:1] * self.max_sample_size)
            counts = np.concatenate([counts[:, 0:1], seen, counts[:, 2:3], stored], axis=1)
        self.stream_counts[:] = counts

    def start_with(self, carry: list[list[Piece]], streams: np.ndarray | None = None) -> None:
        """Read another topology's rest of the pass first (`xlsr.data.carry`); ``streams``: the
        draws counted so far, which this slot carries on for the old ones."""
        for reader, pieces in zip(self.readers, carry, strict=True):
            reader.start_with(pieces)
        if streams is not None:
            self.stream_counts[:] = streams

    def close(self) -> None:
        """Close every open shard (files and `pipe:` processes)."""
        for reader in self.readers:
            reader.close()


class ShuffleBuffer:
    """Hands out a random one of the last ``size`` items, replacing it with the next from ``source``."""

    def __init__(self, source: Callable[[], Item], size: int, rng: np.random.Generator):
        self.source, self.size, self.rng = source, size, rng
        self.items: list[Item] = []

    def __call__(self) -> Item:
        while len(self.items) < self.size:
            self.items.append(self.source())
        index = int(self.rng.integers(len(self.items)))
        item, self.items[index] = self.items[index], self.source()
        return item

    def refs(self) -> list[SampleRef]:
        return [ref for ref, _ in self.items]

    def restore(self, refs: list[SampleRef], samples: dict[SampleRef, RawSample]) -> None:
        self.items = [(tuple(ref), samples[tuple(ref)]) for ref in refs]


class Bucketer:
    """Groups items of similar crop length: each bucket fills up to what ``max_tokens`` allows for its
    longest possible crop; when ``bucket_buffer`` items wait in all buckets, the fullest one goes."""

    def __init__(self, source: Callable[[], Item], cfg: DataConfig):
        self.source, self.cfg = source, cfg
        self.edges = bucket_edges(cfg)
        self.buckets: list[list[Item]] = [[] for _ in range(cfg.num_buckets)]

    def _bucket_of(self, sample: RawSample) -> int:
        return bucket_of(self.edges, crop_length(sample, self.cfg))

    def __call__(self) -> list[Item]:
        while True:
            item = self.source()
            bucket_id = self._bucket_of(item[1])
            bucket = self.buckets[bucket_id]
            # Batches are as large as max_tokens allows for the longest utterance this bucket can hold.
            if (len(bucket) + 1) * int(self.edges[bucket_id]) > self.cfg.max_tokens and bucket:
                self.buckets[bucket_id] = [item]
                return bucket
            bucket.append(item)
            if sum(map(len, self.buckets)) > self.cfg.bucket_buffer:
                fullest = max(range(len(self.buckets)), key=lambda b: len(self.buckets[b]))
                members, self.buckets[fullest] = self.buckets[fullest], []
                return members

    def refs(self) -> list[list[SampleRef]]:
        return [[ref for ref, _ in bucket] for bucket in self.buckets]

    def restore(self, refs: list[list[SampleRef]], samples: dict[SampleRef, RawSample]) -> None:
        self.buckets = [[(tuple(ref), samples[tuple(ref)]) for ref in bucket] for bucket in refs]


def bucket_edges(cfg: DataConfig) -> np.ndarray:
    """The longest crop (samples) each bucket holds: ``num_buckets`` equal steps up to the longest crop.
    A bucket with edge e holds ⌊max_tokens / e⌋ utterances."""
    edges = np.linspace(cfg.min_sample_size, cfg.max_sample_size, cfg.num_buckets + 1)[1:]
    return np.ceil(edges).astype(np.int64)


def bucket_of(edges: np.ndarray, crop_samples: int) -> int:
    return min(int(np.searchsorted(edges, crop_samples)), len(edges) - 1)


def crop_length(sample: RawSample, cfg: DataConfig) -> int:
    return min(sample.num_samples, cfg.max_sample_size)


class Collator:
    """Decodes, (normalises,) randomly crops and right-pads samples into one `Batch`; undecodable
    ones are dropped and counted. Audio is decoded straight into the batch buffer."""

    def __init__(self, cfg: DataConfig, rng: np.random.Generator, counters: Counter[str]):
        self.cfg, self.rng, self.counters = cfg, rng, counters
        self.preparer = UtterancePreparer(cfg.normalize)

    def __call__(self, samples: list[RawSample]) -> Batch | None:
        lengths = [crop_length(sample, self.cfg) for sample in samples]
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
