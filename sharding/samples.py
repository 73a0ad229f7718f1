"""What one source file becomes in a tar: its sample keys, its segments, and the members of each sample.

A sample is `<key>.flac` (or `<key>.s16`, raw little-endian int16) plus `<key>.json`, its metadata,
and `<key>.txt`, its transcript, and `<key>.phn`, its phones, where the corpus has them
(`xlsr.data.shard_format` names the members). Everything here is a pure function of the record and
its decoded audio, so tars are byte-identical across runs.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from sharding.audio import DecodedAudio, os_path
from sharding.manifest import SourceRecord
from sharding.segment import segment_bounds
from xlsr.data.shard_format import (
    AUDIO_MEMBER_EXTENSION,
    META_MEMBER_EXTENSION,
    PHONES_MEMBER_EXTENSION,
    TEXT_MEMBER_EXTENSION,
    escape_path,
)


def sample_key(record: SourceRecord, segment: int) -> str:
    """`<corpus>_<language>_<16 hex of sha1(name bytes)>_<segment>`, where the name is the file's path
    relative to the corpus root (`SourceRecord.name`): the same wherever the corpus is mounted, unique
    per file and segment, ASCII whatever the file name, dot-free (WebDataset splits member names at
    the first dot). The bytes are the name as the OS sees it: the UTF-8 of the path for every UTF-8
    name."""
    digest = hashlib.sha1(os_path(record.name)).hexdigest()[:16]
    return f"{record.corpus}_{record.language}_{digest}_{segment:04d}"


def tar_samples(
    record: SourceRecord, decoded: DecodedAudio, max_seconds: float | None, audio_format: str
) -> Iterator[tuple[dict[str, Any], int]]:
    """WebDataset samples (dicts of member extension -> bytes) and their lengths in audio samples.

    A recording longer than `max_seconds` becomes several samples, cut at pauses (`sharding.segment`);
    each names its source (relative to the corpus root) and its offset in seconds. The transcript,
    when the corpus has one, goes into a `txt` member of a recording that stays whole, and so do the
    phones (a `phn` member)."""
    rate = decoded.sample_rate
    bounds = segment_bounds(decoded.samples, rate, max_seconds)
    for index, (offset, length) in enumerate(bounds):
        key = sample_key(record, index)
        extension, audio = encode_audio(decoded.samples[offset : offset + length], rate, audio_format)
        meta = {
            "key": key,
            "language": record.language,
            "source_language": record.source_language or record.language,
            "corpus": record.corpus,
            "source": escape_path(record.name),
            "speaker": record.speaker,
            "segment": index,
            "offset": offset / rate,
            "num_samples": length,
            "duration": length / rate,
            "sample_rate": rate,
            "source_sample_rate": decoded.source_sample_rate,
            "source_channels": decoded.source_channels,
        }
        sample = {
            "__key__": key,
            extension: audio,
            META_MEMBER_EXTENSION: json.dumps(meta, sort_keys=True).encode(),
        }
        if record.text is not None and len(bounds) == 1:
            sample[TEXT_MEMBER_EXTENSION] = record.text.encode("utf-8", "surrogateescape")
        if record.phones is not None and len(bounds) == 1:
            sample[PHONES_MEMBER_EXTENSION] = record.phones.encode("utf-8", "surrogateescape")
        yield sample, length


def encode_audio(samples: np.ndarray, sample_rate: int, audio_format: str) -> tuple[str, bytes]:
    """(member extension, bytes). Clipping first: libsndfile wraps, not clips, out-of-range floats."""
    clipped = np.clip(samples, -1.0, 1.0)
    if audio_format == "int16":
        return AUDIO_MEMBER_EXTENSION["int16"], np.round(clipped * 32767.0).astype("<i2").tobytes()
    buffer = io.BytesIO()
    sf.write(buffer, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    return AUDIO_MEMBER_EXTENSION["flac"], buffer.getvalue()
