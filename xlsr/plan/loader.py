"""How fast the loader must be, and how many CPU cores that takes (docs/planning.md, "Loader").

Each GPU consumes ``audio_s_per_s`` seconds of audio per second. A loader core reads and decodes
audio at some multiple of real time, measured here for a few seconds over the run's own shards with
the loader's own preparation (read from the tar, decode, normalise, crop). With ``data.normalize``
whole utterances are decoded, so uncut long recordings cost more per second the model sees; without
it, FLAC seeks to the crop. Without readable shards the default is a 16 kHz FLAC rate measured on one
Zen 3 core with soundfile: about 4,000× real time, 2,500× with per-utterance normalisation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np

from xlsr.config import SAMPLE_RATE, DataConfig
from xlsr.data.shard_format import ShardInfo, is_local
from xlsr.data.shard_readers import iter_shard
from xlsr.data.shards import RawSample
from xlsr.data.stages import UtterancePreparer

DEFAULT_DECODE_X = 4_000.0
DEFAULT_DECODE_X_NORMALIZED = 2_500.0
# Utterances read from one shard before moving to the next (so several streams are sampled).
UTTERANCES_PER_SHARD = 16


@dataclass(frozen=True)
class DecodeRate:
    """Seconds of audio the model sees, prepared per CPU second on one core."""

    x_realtime: float
    source: str


def default_decode_rate(data: DataConfig, stored_per_visible: float) -> DecodeRate:
    """The default rate per second the model sees: normalisation decodes whole utterances, so it
    costs the stored seconds behind each visible one."""
    if data.normalize:
        x = DEFAULT_DECODE_X_NORMALIZED / stored_per_visible
        return DecodeRate(x, "default for 16 kHz FLAC with normalisation (whole utterances decoded)")
    return DecodeRate(DEFAULT_DECODE_X, "default for 16 kHz FLAC")


def measure_decode_rate(
    data: DataConfig, shards: tuple[ShardInfo, ...], budget_s: float, stored_per_visible: float
) -> DecodeRate:
    """Read and prepare utterances of local ``shards`` for about ``budget_s`` CPU seconds on this
    core (at most twice that in wall-clock time); unreadable shards and audio are skipped, as the
    loader skips them."""
    local = [s for s in shards if is_local(s.url) and os.path.isfile(s.url) and s.samples]
    preparer, crop = UtterancePreparer(data.normalize), data.max_sample_size
    out, rng = np.empty(crop, dtype=np.float32), np.random.default_rng(0)
    seen, utterances = 0.0, 0
    started, wall_started = time.process_time(), time.perf_counter()
    for sample in _samples(_interleaved_by_stream(local)):
        if time.process_time() - started >= budget_s or time.perf_counter() - wall_started >= 2 * budget_s:
            break
        length = min(sample.num_samples, crop)
        start = int(rng.integers(0, sample.num_samples - length + 1))
        try:
            seen += preparer(sample, out[:length], start) / SAMPLE_RATE
        except ValueError:
            continue  # undecodable: the loader skips it too
        utterances += 1
    spent = time.process_time() - started
    if seen <= 0 or spent <= 0:
        return default_decode_rate(data, stored_per_visible)
    return DecodeRate(
        seen / spent, f"measured on {utterances} utterances of the shards, one core of this machine"
    )


def _samples(shards: list[ShardInfo]) -> Iterator[RawSample]:
    """Up to UTTERANCES_PER_SHARD utterances of each shard in turn; a shard that cannot be read is
    skipped (the loader skips it too, and says so)."""
    for shard in shards:
        try:
            yield from islice(iter_shard(shard.url), UTTERANCES_PER_SHARD)
        except Exception:  # a damaged shard must not stop a plan
            continue


def _interleaved_by_stream(shards: list[ShardInfo]) -> list[ShardInfo]:
    """One shard of each stream in turn, so a short budget still samples every stream."""
    by_stream: dict[tuple[str, str], list[ShardInfo]] = {}
    for shard in shards:
        by_stream.setdefault((shard.corpus, shard.language), []).append(shard)
    queues = list(by_stream.values())
    order = []
    for depth in range(max((len(q) for q in queues), default=0)):
        order.extend(q[depth] for q in queues if depth < len(q))
    return order


@dataclass(frozen=True)
class LoaderPlan:
    audio_s_per_s_per_gpu: float
    decode: DecodeRate
    cores_per_gpu: float
    read_mb_per_s_per_node: float
    workers_per_gpu: int  # data.num_workers


def plan_loader(
    audio_s_per_s_per_gpu: float,
    gpus_per_node: int,
    decode: DecodeRate,
    bytes_per_stored_second: float,
    stored_per_visible: float,
    workers_per_gpu: int,
) -> LoaderPlan:
    cores = audio_s_per_s_per_gpu / decode.x_realtime
    read = audio_s_per_s_per_gpu * stored_per_visible * bytes_per_stored_second * gpus_per_node / 1e6
    return LoaderPlan(audio_s_per_s_per_gpu, decode, cores, read, workers_per_gpu)
