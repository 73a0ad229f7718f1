"""What the data of ``data.train`` becomes over a run: shares, hours seen and passes per stream, and
the audio one micro-batch holds (docs/planning.md, "Data").

The loader draws an utterance of stream s with probability ∝ p_s / A_s (p_s: its upsampled share,
A_s: the seconds of it the model can see, every utterance counting at most one crop) and fills
buckets of ``data.num_buckets`` crop lengths: a bucket whose longest crop is e samples holds
⌊max_tokens / e⌋ utterances. From the shards' length histograms this gives the expected audio and
crops per micro-batch, hence the audio per update, the hours each stream is drawn over the run, and
its passes: hours drawn / hours visible, how often each utterance repeats on average.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from xlsr.config import SAMPLE_RATE, DataConfig
from xlsr.data.loader import stream_specs
from xlsr.data.shard_format import ShardInfo, is_local, read_index
from xlsr.data.stages import bucket_edges, bucket_of
from xlsr.plan.errors import PlanError

# Bytes per second of 16 kHz mono FLAC speech (compression about 0.6 of 16-bit PCM); used for the
# storage bandwidth when the shards' sizes cannot be read.
DEFAULT_FLAC_BYTES_PER_SECOND = 20_500
SIZE_SAMPLE = 64


@dataclass(frozen=True)
class StreamPlan:
    corpus: str
    language: str
    stored_hours: float
    visible_hours: float  # each utterance at most one crop
    natural_share: float
    sampled_share: float
    hours_seen: float = 0.0
    passes: float = 0.0


@dataclass(frozen=True)
class BatchShape:
    """Expected contents of a micro-batch, and what a drawn utterance costs the loader."""

    audio_seconds: float  # audio (no padding) per micro-batch
    crops: float
    stored_per_visible: float  # seconds stored per second the model sees (whole utterances are read)
    from_index: bool  # False: every utterance assumed to be one full crop (no index given)

    @property
    def mean_crop_seconds(self) -> float:
        return self.audio_seconds / self.crops


@dataclass(frozen=True)
class DataPlan:
    streams: tuple[StreamPlan, ...]
    batch: BatchShape
    shards: tuple[ShardInfo, ...]
    bytes_per_stored_second: float
    bytes_source: str


def read_train_shards(data: DataConfig) -> tuple[ShardInfo, ...]:
    return tuple(shard for path in data.train for shard in read_index(path).shards)


def plan_data(data: DataConfig, shards: tuple[ShardInfo, ...]) -> DataPlan:
    """Streams and batch shape of ``data`` (without shards: one full crop per utterance)."""
    crop_seconds = data.max_sample_size / SAMPLE_RATE
    if not shards:
        crops = max(1, data.max_tokens // data.max_sample_size)
        full = BatchShape(crops * crop_seconds, crops, 1.0, False)
        return DataPlan((), full, (), DEFAULT_FLAC_BYTES_PER_SECOND, "assumed FLAC")
    try:
        specs, hours, probs = stream_specs(shards, data.language_alpha, data.corpus_alpha, crop_seconds)
    except ValueError as exc:
        raise PlanError(f"{exc} (data.train={data.train})") from None
    total = sum(hours.values())
    streams = []
    for spec in specs:
        corpus, language = spec.name.split("/", 1)
        key = (corpus, language)
        stored = sum(s.seconds for s in spec.shards) / 3600
        streams.append(StreamPlan(corpus, language, stored, hours[key], hours[key] / total, probs[key]))
    size, source = _bytes_per_stored_second(shards)
    return DataPlan(tuple(streams), batch_shape(data, specs), shards, size, source)


def with_run_totals(plan: DataPlan, audio_hours: float) -> DataPlan:
    """``plan`` with each stream's hours drawn and passes over ``audio_hours`` of training audio."""
    streams = tuple(
        dataclasses.replace(
            s,
            hours_seen=s.sampled_share * audio_hours,
            passes=s.sampled_share * audio_hours / s.visible_hours,
        )
        for s in plan.streams
    )
    return dataclasses.replace(plan, streams=streams)


def batch_shape(data: DataConfig, specs) -> BatchShape:
    """Expected audio and crops per micro-batch over the draw distribution (module docstring)."""
    crop, shortest = data.max_sample_size / SAMPLE_RATE, data.min_sample_size / SAMPLE_RATE
    edges = bucket_edges(data)
    weight_sum = audio = batches = stored = 0.0
    for spec in specs:
        visible = sum(spec.shard_seconds)
        for count, mean in _length_bins(spec.shards):
            if mean < shortest or visible <= 0:
                continue  # dropped by the loader as too short
            weight = spec.hour_prob / visible * count  # draws of these utterances
            seen = min(mean, crop)
            edge = int(edges[bucket_of(edges, round(seen * SAMPLE_RATE))])
            per_batch = max(1, data.max_tokens // edge)
            weight_sum += weight
            audio += weight * seen
            stored += weight * mean
            batches += weight / per_batch
    if batches == 0:
        raise PlanError(
            f"every utterance of data.train is shorter than data.min_sample_size ({shortest:g} s): "
            "the loader would skip them all"
        )
    return BatchShape(audio / batches, weight_sum / batches, stored / audio, True)


def _length_bins(shards: tuple[ShardInfo, ...]) -> list[tuple[int, float]]:
    """(count, mean seconds) per length-histogram bin of the shards (a shard's mean without one)."""
    bins = []
    for shard in shards:
        if shard.lengths:
            bins.extend((count, seconds / count) for _, count, seconds in shard.lengths if count)
        elif shard.samples:
            bins.append((shard.samples, shard.seconds / shard.samples))
    return bins


def _bytes_per_stored_second(shards: tuple[ShardInfo, ...]) -> tuple[float, str]:
    """From the sizes of up to SIZE_SAMPLE local shards spread over the list (a stat each: cheap
    here, slow for every shard of a large set on a network filesystem)."""
    sizes, seconds = 0, 0.0
    for shard in shards[:: max(1, len(shards) // SIZE_SAMPLE)]:
        if is_local(shard.url) and os.path.isfile(shard.url):
            sizes += os.path.getsize(shard.url)
            seconds += shard.seconds
    if seconds <= 0:
        return DEFAULT_FLAC_BYTES_PER_SECOND, "assumed FLAC (shard sizes not readable here)"
    return sizes / seconds, "the shards' sizes"
