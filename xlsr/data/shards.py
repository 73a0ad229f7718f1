"""Reading the samples of one shard tar written by `xlsr shard` (the index: ``shard_format``).

A sample is ``<key>.flac`` (or ``<key>.s16``, raw int16) plus ``<key>.json`` metadata. Audio stays
compressed until a batch is collated, so buffers hold bytes, not waveforms. Shard paths may be local
files or any URL webdataset opens, such as ``pipe:aws s3 cp s3://bucket/shard.tar -``.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile
import webdataset

from xlsr.data.shard_format import AUDIO_MEMBER_EXTENSION, AUDIO_MEMBER_EXTENSIONS, META_MEMBER_EXTENSION

_INT16 = AUDIO_MEMBER_EXTENSION["int16"]


@dataclass
class RawSample:
    """One utterance as stored: compressed audio bytes and its metadata."""

    key: str
    audio: bytes
    audio_extension: str  # which audio member it came from: one of AUDIO_MEMBER_EXTENSIONS
    num_samples: int
    language: str
    corpus: str


def iter_shard(url: str, part: int = 0, parts: int = 1) -> Iterator[RawSample]:
    """Samples of one shard in stored order (every ``parts``-th from ``part``); metadata-less or
    audio-less entries are skipped. ``url`` is anything ``webdataset.gopen`` opens (paths, ``pipe:``).
    Raises ``TarFormatError`` for a corrupt or truncated tar."""
    stream = webdataset.gopen(url)
    try:
        index, key, sample = -1, None, {}
        for name, read in _tar_members(stream, url):
            match = _MEMBER_NAME.match(name)
            if match is None or _META_MEMBER.search(name):
                read(False)
                continue
            if match[1] != key:
                if sample and (raw := _to_raw_sample(sample)) is not None:
                    yield raw
                index, key, sample = index + 1, match[1], {"__key__": match[1]}
            wanted = index % parts == part
            data = read(wanted)
            if wanted:
                sample[match[2]] = data
        if sample and (raw := _to_raw_sample(sample)) is not None:
            yield raw
    finally:
        stream.close()


class TarFormatError(ValueError):
    """A shard is not a readable tar (corrupt or truncated)."""


_BLOCK = 512
# webdataset's split of a member name into sample key and field (the extension after the first dot).
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


def _tar_members(stream: BinaryIO, url: str) -> Iterator[tuple[str, Callable[[bool], bytes | None]]]:
    """(name, read) for each regular file of a tar stream; ``read(True)`` returns its data, ``read(False)``
    skips it. A lean reader of ustar headers with GNU long names and pax paths, because Python's
    ``tarfile`` (under webdataset's ``tar_file_iterator``) costs a fifth of the FLAC decode time."""
    long_name: str | None = None
    while True:
        header = _read_exactly(stream, _BLOCK, url, at_boundary=True)
        if header is None or not any(header):
            return
        size, kind = _parse_header(header, url)
        consumed = False

        def read(keep: bool, size: int = size) -> bytes | None:
            nonlocal consumed
            consumed = True
            data = _read_exactly(stream, size, url) if keep else _skip(stream, size, url)
            _skip(stream, -size % _BLOCK, url)
            return data

        if kind in (b"0", b"\0", b"7"):
            name = long_name or _header_name(header)
            long_name = None
            yield name, read
            if not consumed:
                read(False)
        elif kind == b"L":  # GNU long name of the next member
            long_name = read(True).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax extended header: only the path matters here
            records = read(True).decode("utf-8", "replace")
            long_name = next((r.split("=", 1)[1] for r in records.split("\n") if " path=" in r), long_name)
        else:  # directories, links, global pax headers
            read(False)


def _read_exactly(stream: BinaryIO, size: int, url: str, at_boundary: bool = False) -> bytes | None:
    data = stream.read(size)
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            if at_boundary and not data:
                return None
            raise TarFormatError(f"{url}: truncated tar (wanted {size} bytes, got {len(data)})")
        data += more
    return data


def _skip(stream: BinaryIO, size: int, url: str) -> None:
    seekable = getattr(stream, "seekable", None)  # webdataset's pipe: streams have no seekable()
    if size and seekable is not None and seekable():
        stream.seek(size, os.SEEK_CUR)
    elif size:
        _read_exactly(stream, size, url)


def _parse_header(header: bytes, url: str) -> tuple[int, bytes]:
    """(data size, type flag); checks the header checksum."""
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        raw_size = header[124:136]
        if raw_size[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
            size = int.from_bytes(raw_size[1:], "big")
        else:
            size = int(raw_size.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise TarFormatError(f"{url}: corrupt tar header") from None
    if stored != sum(header) - sum(header[148:156]) + 8 * 32:
        raise TarFormatError(f"{url}: corrupt tar header (checksum mismatch)")
    return size, header[156:157]


def _header_name(header: bytes) -> str:
    name = header[0:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar" and (prefix := header[345:500].split(b"\0", 1)[0]):
        name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _to_raw_sample(sample: dict) -> RawSample | None:
    audio_extension = next((ext for ext in AUDIO_MEMBER_EXTENSIONS if ext in sample), None)
    if audio_extension is None or META_MEMBER_EXTENSION not in sample:
        return None
    try:
        meta = json.loads(sample[META_MEMBER_EXTENSION])
        return RawSample(
            key=sample["__key__"],
            audio=sample[audio_extension],
            audio_extension=audio_extension,
            num_samples=int(meta["num_samples"]),
            language=str(meta["language"]),
            corpus=str(meta["corpus"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def decode_sample(raw: RawSample) -> np.ndarray:
    """Float32 waveform in [-1, 1]; raises ``ValueError`` for undecodable audio."""
    if raw.audio_extension == _INT16:
        return np.frombuffer(raw.audio, dtype="<i2").astype(np.float32) / 32768.0
    try:
        audio, _ = soundfile.read(io.BytesIO(raw.audio), dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot decode {raw.key}: {exc}") from None
    if audio.ndim != 1:
        audio = audio.mean(axis=1)
    return audio


def decode_sample_into(raw: RawSample, out: np.ndarray, start: int = 0) -> int:
    """Decode ``len(out)`` samples from ``start`` straight into ``out`` (float32, 1-D); returns how many
    were written (fewer if the audio is shorter than its metadata says).

    The batch buffer is filled without an intermediate array, and FLAC seeks so only the crop is
    decoded. Raises ``ValueError`` for undecodable audio, like ``decode_sample``.
    """
    if raw.audio_extension == _INT16:
        ints = np.frombuffer(raw.audio, dtype="<i2")[start : start + len(out)]
        np.multiply(ints, np.float32(1 / 32768), out=out[: len(ints)])
        return len(ints)
    try:
        with soundfile.SoundFile(io.BytesIO(raw.audio)) as audio:
            if audio.channels != 1:  # shards are mono; anything else takes the general path
                wave = decode_sample(raw)[start : start + len(out)]
                out[: len(wave)] = wave
                return len(wave)
            if start:
                audio.seek(start)
            return len(audio.read(len(out), dtype="float32", out=out))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot decode {raw.key}: {exc}") from None
