"""The held-out utterances a run is validated on: deterministic, capped per language, split over ranks.

Which utterances: for every (corpus, language) of the ``data.valid`` indexes, utterances in the
order of a hash of their key, until ``validation.max_seconds_per_language`` is reached; each is
cropped to ``data.max_sample_size`` at an offset derived from its key, and normalised like the
training data. The selection, crops and (in `xlsr.evaluation.validate`) masks depend on the keys
alone, so values are comparable across updates, world sizes, backends and resumes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from xlsr.config import SAMPLE_RATE, DataConfig, ValidationConfig
from xlsr.data.shard_format import read_index
from xlsr.data.shard_readers import iter_shard
from xlsr.data.shards import RawSample
from xlsr.data.stages import UtterancePreparer


@dataclass
class ValidUtterance:
    index: int  # position in the whole valid set (the same on every rank)
    key: str
    stream: int  # index into ValidSet.streams
    audio: torch.Tensor  # (L,) float32, cropped and normalised


@dataclass
class ValidSet:
    streams: list[tuple[str, str]]  # (corpus, language), sorted
    size: int  # utterances in the whole set, over all ranks
    utterances: list[ValidUtterance]  # this rank's share
    keys: list[str]  # every utterance's key, by index
    labels: list[int]  # every utterance's stream, by index


def key_hash(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "surrogateescape"))


def load_valid_set(
    data: DataConfig, validation: ValidationConfig, rank: int = 0, world_size: int = 1
) -> ValidSet:
    """This rank's share (every ``world_size``-th utterance from ``rank``) of the capped valid set."""
    chosen = _choose(data, validation)
    streams = sorted({(raw.corpus, raw.language) for raw in chosen})
    stream_of = {name: position for position, name in enumerate(streams)}
    preparer = UtterancePreparer(data.normalize)
    utterances = [
        ValidUtterance(index, raw.key, stream_of[(raw.corpus, raw.language)], _prepare(raw, data, preparer))
        for index, raw in enumerate(chosen)
        if index % world_size == rank
    ]
    labels = [stream_of[(raw.corpus, raw.language)] for raw in chosen]
    return ValidSet(streams, len(chosen), utterances, [raw.key for raw in chosen], labels)


def _choose(data: DataConfig, validation: ValidationConfig) -> list[RawSample]:
    return choose_by_key(
        data.valid,
        lambda raw: raw.num_samples >= data.min_sample_size,
        validation.max_seconds_per_language * SAMPLE_RATE,
        lambda raw: min(raw.num_samples, data.max_sample_size),
    )


def choose_by_key(
    indexes: list[str],
    keep: Callable[[RawSample], bool],
    cap_samples: float,
    counted: Callable[[RawSample], int],
) -> list[RawSample]:
    """Every (corpus, language) stream's utterances that ``keep`` accepts, in the order of a hash of
    their key, until their ``counted`` samples reach ``cap_samples``; streams in name order."""
    by_stream: dict[tuple[str, str], list[RawSample]] = {}
    for path in indexes:
        for shard in read_index(path).shards:
            for raw in iter_shard(shard.url):
                if keep(raw):
                    by_stream.setdefault((raw.corpus, raw.language), []).append(raw)
    chosen = []
    for name in sorted(by_stream):
        total = 0
        for raw in sorted(by_stream[name], key=lambda r: (key_hash(r.key), r.key)):
            if total >= cap_samples:
                break
            chosen.append(raw)
            total += counted(raw)
    return chosen


def _prepare(raw: RawSample, data: DataConfig, preparer: UtterancePreparer) -> torch.Tensor:
    """Cropped to ``data.max_sample_size`` at an offset derived from the key; normalised as in training."""
    out = np.empty(min(raw.num_samples, data.max_sample_size), dtype=np.float32)
    start = key_hash(raw.key) % (raw.num_samples - len(out) + 1)
    return torch.from_numpy(out[: preparer(raw, out, start)])
