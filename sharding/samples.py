"""What one source file becomes in a tar: its sample keys, its segments, and the members of each sample.

A sample is `<key>.flac` (or `<key>.s16`, raw little-endian int16) plus `<key>.json`, its metadata
(`xlsr.data.shard_format` names the members). Everything here is a pure function of the record and its
decoded audio, so tars are byte-identical across runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from sharding.audio import DecodedAudio, os_path
from sharding.manifest import SourceRecord
from xlsr.data.shard_format import AUDIO_MEMBER_EXTENSION, META_MEMBER_EXTENSION, escape_path


def sample_key(record: SourceRecord, segment: int) -> str:
    """`<corpus>_<language>_<16 hex of sha1(path bytes)>_<segment>`: stable, unique per file and segment,
    ASCII whatever the file name, dot-free (WebDataset splits member names at the first dot). The
    bytes are the name as the OS sees it: the UTF-8 of the path for every UTF-8 name."""
    digest = hashlib.sha1(os_path(record.path)).hexdigest()[:16]
    return f"{record.corpus}_{record.language}_{digest}_{segment:04d}"


def split_segments(samples: np.ndarray, sample_rate: int, max_seconds: float | None) -> list[np.ndarray]:
    """Cut into the fewest equal consecutive pieces of at most `max_seconds`.

    Equal pieces rather than fixed-length ones plus a remainder: no audio is dropped and no tiny tail
    segment is produced (every piece of a split recording is longer than max_seconds / 2).
    """
    if not max_seconds:
        return [samples]
    max_len = max(1, int(max_seconds * sample_rate))
    pieces = math.ceil(len(samples) / max_len)
    return np.array_split(samples, pieces) if pieces > 1 else [samples]


def tar_samples(
    record: SourceRecord, decoded: DecodedAudio, max_seconds: float | None, audio_format: str
) -> Iterator[tuple[dict[str, Any], int]]:
    """WebDataset samples (dicts of member extension -> bytes) and their lengths in audio samples."""
    offset = 0
    for index, segment in enumerate(split_segments(decoded.samples, decoded.sample_rate, max_seconds)):
        key = sample_key(record, index)
        extension, audio = encode_audio(segment, decoded.sample_rate, audio_format)
        meta = {
            "key": key,
            "language": record.language,
            "corpus": record.corpus,
            "source": escape_path(record.path),
            "speaker": record.speaker,
            "segment": index,
            "offset": offset / decoded.sample_rate,
            "num_samples": len(segment),
            "duration": len(segment) / decoded.sample_rate,
            "sample_rate": decoded.sample_rate,
            "source_sample_rate": decoded.source_sample_rate,
            "source_channels": decoded.source_channels,
        }
        offset += len(segment)
        yield (
            {
                "__key__": key,
                extension: audio,
                META_MEMBER_EXTENSION: json.dumps(meta, sort_keys=True).encode(),
            },
            len(segment),
        )


def encode_audio(samples: np.ndarray, sample_rate: int, audio_format: str) -> tuple[str, bytes]:
    """(member extension, bytes). Clipping first: libsndfile wraps, not clips, out-of-range floats."""
    clipped = np.clip(samples, -1.0, 1.0)
    if audio_format == "int16":
        return AUDIO_MEMBER_EXTENSION["int16"], np.round(clipped * 32767.0).astype("<i2").tobytes()
    buffer = io.BytesIO()
    sf.write(buffer, clipped, sample_rate, format="FLAC", subtype="PCM_16")
    return AUDIO_MEMBER_EXTENSION["flac"], buffer.getvalue()
