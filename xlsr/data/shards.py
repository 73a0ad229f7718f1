"""Reading shard sets written by `xlsr shard`: the index, and the samples of one tar.

A sample is ``<key>.flac`` (or ``<key>.s16``, raw int16) plus ``<key>.json`` metadata. Audio stays
compressed until a batch is collated, so buffers hold bytes, not waveforms. Shard paths may be local
files or any URL webdataset opens, such as ``pipe:aws s3 cp s3://bucket/shard.tar -``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import webdataset
from webdataset import tariterators

AUDIO_EXTENSIONS = ("flac", "s16")


@dataclass(frozen=True)
class ShardInfo:
    url: str
    corpus: str
    language: str
    samples: int
    seconds: float


@dataclass
class RawSample:
    """One utterance as stored: compressed audio bytes and its metadata."""

    key: str
    audio: bytes
    audio_format: str
    num_samples: int
    language: str
    corpus: str


class ShardIndexError(ValueError):
    """An index file is missing or malformed."""


def read_index(path: str | os.PathLike) -> list[ShardInfo]:
    """Shards listed by an index.json (or the index.json inside a directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "index.json"
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardIndexError(f"shard index not found: {path} (run `xlsr shard` first)") from None
    except json.JSONDecodeError as exc:
        raise ShardIndexError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(index, dict) or "shards" not in index:
        raise ShardIndexError(f"{path}: expected an object with a 'shards' list")
    shards = []
    for i, entry in enumerate(index["shards"]):
        try:
            url = entry["path"]
            if "://" not in url and not url.startswith("pipe:") and not os.path.isabs(url):
                url = str(path.parent / url)
            shards.append(
                ShardInfo(
                    url, entry["corpus"], entry["language"], int(entry["samples"]), float(entry["seconds"])
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardIndexError(
                f"{path}: shards[{i}] needs path, corpus, language, samples, seconds ({exc})"
            ) from None
    return shards


def iter_shard(url: str) -> Iterator[RawSample]:
    """Samples of one shard in stored order; metadata-less or audio-less entries are skipped."""
    stream = webdataset.gopen(url)
    try:
        files = ({**entry, "__url__": url} for entry in tariterators.tar_file_iterator(stream))
        for sample in tariterators.group_by_keys(files):
            raw = _to_raw_sample(sample)
            if raw is not None:
                yield raw
    finally:
        stream.close()


def _to_raw_sample(sample: dict) -> RawSample | None:
    audio_format = next((ext for ext in AUDIO_EXTENSIONS if ext in sample), None)
    if audio_format is None or "json" not in sample:
        return None
    try:
        meta = json.loads(sample["json"])
        return RawSample(
            key=sample["__key__"],
            audio=sample[audio_format],
            audio_format=audio_format,
            num_samples=int(meta["num_samples"]),
            language=str(meta["language"]),
            corpus=str(meta["corpus"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def decode_audio(raw: RawSample) -> np.ndarray:
    """Float32 waveform in [-1, 1]; raises ``ValueError`` for undecodable audio."""
    if raw.audio_format == "s16":
        return np.frombuffer(raw.audio, dtype="<i2").astype(np.float32) / 32768.0
    try:
        audio, _ = soundfile.read(io.BytesIO(raw.audio), dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot decode {raw.key}: {exc}") from None
    if audio.ndim != 1:
        audio = audio.mean(axis=1)
    return audio
