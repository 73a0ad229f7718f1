"""XLS-R-shaped shard sets without real audio: for the loader's tests and its sampling benchmark.

Two things with the shape of XLS-R's pretraining data (many (corpus, language) streams, hours skewed
by orders of magnitude, several corpora):

- ``xlsr_hours()`` and ``index_for_hours(...)``: an ``index.json`` object for a layout of 1 GB shards
  holding given hours per stream, with no tar behind it, for planning benchmarks at hundreds of slots.
- ``write_skewed_shard_set(...)``: a small real shard set (tars and index) whose streams are skewed
  like XLS-R's but whose utterances are a few milliseconds of int16 noise, so it builds in about a
  second and a loader can draw hundreds of thousands of utterances from it in a test.

XLS-R (Babu et al., arXiv 2111.09296, §3.1) pretrains on VoxPopuli (372k h, 23 languages), Multilingual
LibriSpeech (50k h, 8 languages), Common Voice (7k h, 60 languages), VoxLingua107 (6.6k h, 107
languages) and BABEL (1k h, 17 languages). ``xlsr_hours`` uses the published hours per language for
VoxPopuli (facebookresearch/voxpopuli README, unlabelled data, scaled to XLS-R's 372k h) and MLS
(Pratap et al., arXiv 2012.03411, Table 1); for the other three corpora it spreads each corpus total
log-linearly between a largest and a smallest language (assumed ranges, stated below), which keeps
their number of languages, their totals and a realistic skew.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from xlsr.data.shard_format import ShardInfo, make_index, read_index, shard_entry, write_index

SAMPLE_RATE = 16_000
FLAC_BYTES_PER_SECOND = 0.6 * 2 * SAMPLE_RATE  # 16-bit PCM compressed to about 60% (as the writer assumes)

VOXPOPULI_HOURS = {  # thousands of hours of unlabelled speech, 400k-hour release
    "bg": 17.6, "cs": 18.7, "da": 13.6, "de": 23.2, "el": 17.7, "en": 24.1, "es": 21.4, "et": 10.6,
    "fi": 14.2, "fr": 22.8, "hr": 8.1, "hu": 17.7, "it": 21.9, "lt": 14.4, "lv": 13.1, "mt": 9.1,
    "nl": 19.0, "pl": 21.2, "pt": 17.5, "ro": 17.9, "sk": 12.1, "sl": 11.3, "sv": 16.3,
}  # fmt: skip
MLS_HOURS = {
    "en": 44_659.74, "de": 1_966.51, "nl": 1_554.24, "fr": 1_076.58, "es": 917.68, "it": 247.38,
    "pt": 160.96, "pl": 103.65,
}  # fmt: skip
# corpus -> (languages, total hours, largest language's hours, smallest's): assumed log-linear spread.
SPREAD_CORPORA = {
    "commonvoice": (60, 7_000.0, 900.0, 0.5),
    "voxlingua107": (107, 6_628.0, 250.0, 4.0),
    "babel": (17, 1_000.0, 100.0, 30.0),
}
VOXPOPULI_TOTAL_HOURS = 372_000.0
# Mean utterance seconds per corpus (assumed: VoxPopuli and MLS segments, short Common Voice clips).
UTTERANCE_SECONDS = {"voxpopuli": 15.0, "mls": 15.0, "commonvoice": 5.0, "voxlingua107": 10.0, "babel": 5.0}


def xlsr_hours() -> dict[tuple[str, str], float]:
    """Hours per (corpus, language) with the shape of XLS-R's pretraining data (see the module doc)."""
    scale = VOXPOPULI_TOTAL_HOURS / (1000 * sum(VOXPOPULI_HOURS.values()))
    hours = {("voxpopuli", lang): 1000 * h * scale for lang, h in VOXPOPULI_HOURS.items()}
    hours.update({("mls", lang): h for lang, h in MLS_HOURS.items()})
    for corpus, (count, total, largest, smallest) in SPREAD_CORPORA.items():
        spread = np.geomspace(largest, smallest, count)
        for rank, h in enumerate(spread * total / spread.sum()):
            hours[(corpus, f"l{rank:03d}")] = float(h)
    return hours


def index_for_hours(
    hours: dict[tuple[str, str], float],
    utterance_seconds: dict[str, float] | None = None,
    shard_bytes: float = 1e9,
) -> dict[str, Any]:
    """An index object (no tars) cutting each stream into shards of ``shard_bytes`` of FLAC, the last
    one partial, with utterances of the corpus's mean duration."""
    utterance_seconds = utterance_seconds or UTTERANCE_SECONDS
    shard_seconds = shard_bytes / FLAC_BYTES_PER_SECOND
    entries = []
    for (corpus, language), stream_hours in sorted(hours.items()):
        seconds_left = stream_hours * 3600
        per_utterance = utterance_seconds[corpus]
        for number in range(math.ceil(seconds_left / shard_seconds)):
            seconds = min(shard_seconds, seconds_left)
            seconds_left -= seconds
            samples = max(1, round(seconds / per_utterance))
            path = f"{corpus}/{language}/shard-{number:06d}.tar"
            entries.append(shard_entry(path, corpus, language, samples, samples * per_utterance))
    return make_index(SAMPLE_RATE, "flac", entries, _totals(entries), {"count": 0, "by_reason": {}})


def xlsr_shards(out_dir: str | Path, shard_bytes: float = 1e9) -> tuple[ShardInfo, ...]:
    """The shards of ``index_for_hours(xlsr_hours())``, written as ``out_dir/index.json`` (no tars)
    and read back through the one index reader."""
    return read_index(write_index(out_dir, index_for_hours(xlsr_hours(), shard_bytes=shard_bytes))).shards


# --------------------------------------------------------------------------------------------------
# A tiny real shard set


def skewed_layout(
    corpora: dict[str, int], min_utterances: int = 2, max_utterances: int = 1000, seed: int = 0
) -> dict[tuple[str, str], tuple[int, int]]:
    """(corpus, language) -> (utterances, samples per utterance): utterance counts spread log-evenly
    from ``min_utterances`` to ``max_utterances`` over all streams in a seeded order, and lengths of
    160-320 samples, so hours differ by more than ``max_utterances / min_utterances``."""
    keys = [(corpus, f"l{i:03d}") for corpus, count in corpora.items() for i in range(count)]
    rng = np.random.default_rng(seed)
    counts = np.geomspace(min_utterances, max_utterances, len(keys)).round().astype(int)
    lengths = np.linspace(160, 320, len(keys)).round().astype(int)
    order, length_order = rng.permutation(len(keys)), rng.permutation(len(keys))
    # The largest and the smallest stream get the longest and the shortest utterances: the full skew.
    length_of = {int(np.argmax(counts)): int(lengths.max()), int(np.argmin(counts)): int(lengths.min())}
    layout = {}
    for position, key in enumerate(keys):
        stream = int(order[position])
        length = length_of.get(stream, int(lengths[length_order[position]]))
        layout[key] = (int(counts[stream]), length)
    return layout


def write_skewed_shard_set(
    out_dir: str | Path,
    layout: dict[tuple[str, str], tuple[int, int]],
    utterances_per_shard: int = 48,
    seed: int = 0,
) -> Path:
    """Write ``layout`` (see ``skewed_layout``) as int16 WebDataset shards with an index; return the
    index path. Every stream's last shard is partial, so shards of one stream differ in size."""
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    entries = []
    for (corpus, language), (utterances, length) in sorted(layout.items()):
        for number, first in enumerate(range(0, utterances, utterances_per_shard)):
            count = min(utterances_per_shard, utterances - first)
            path = f"{corpus}/{language}/shard-{number:06d}.tar"
            _write_noise_tar(out_dir / path, corpus, language, first, count, length, rng)
            entries.append(shard_entry(path, corpus, language, count, count * length / SAMPLE_RATE))
    index = make_index(SAMPLE_RATE, "int16", entries, _totals(entries), {"count": 0, "by_reason": {}})
    return write_index(out_dir, index)


def _write_noise_tar(
    path: Path, corpus: str, language: str, first: int, count: int, length: int, rng: np.random.Generator
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for number in range(first, first + count):
            key = f"{corpus}_{language}_{number:016x}_0000"
            audio = rng.integers(-3000, 3000, length, dtype=np.int16).astype("<i2").tobytes()
            meta = {"key": key, "language": language, "corpus": corpus, "num_samples": length}
            for extension, data in (("s16", audio), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _totals(entries: list[dict[str, Any]]) -> dict[str, Any]:
    by_stream: dict[str, float] = {}
    for entry in entries:
        stream = f"{entry['corpus']}/{entry['language']}"
        by_stream[stream] = by_stream.get(stream, 0.0) + entry["seconds"] / 3600
    return {
        "samples": sum(e["samples"] for e in entries),
        "seconds": sum(e["seconds"] for e in entries),
        "hours_by_stream": by_stream,
    }
