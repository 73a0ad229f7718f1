"""Reading the samples of one shard tar written by `xlsr shard` (the index: ``shard_format``).

A sample is ``<key>.flac`` (or ``<key>.s16``, raw int16) plus ``<key>.json`` metadata, and maybe a
transcript (``<key>.txt``) and phones (``<key>.phn``). Audio stays compressed until a batch is
collated, so buffers hold bytes, not waveforms. Shard paths may be local files or any URL webdataset
opens, such as ``pipe:aws s3 cp s3://bucket/shard.tar -``.
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

from xlsr.data.shard_format import (
    AUDIO_MEMBER_EXTENSION,
    AUDIO_MEMBER_EXTENSIONS,
    META_MEMBER_EXTENSION,
    PHONES_MEMBER_EXTENSION,
    TEXT_MEMBER_EXTENSION,
)

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
    text: str | None = None  # the transcript, where the shard has one (TEXT_MEMBER_EXTENSION)
    phones: str | None = None  # space-separated phones, where the shard has them (PHONES_MEMBER_EXTENSION)
    speaker: str | None = None  # the metadata's speaker, where the corpus knows it


def iter_samples(
    url: str,
    start: int = 0,
    stop: int | None = None,
    resume_byte: int | None = None,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, int, int, RawSample | None]]:
    """``(index, first_byte, next_byte, sample)`` for the samples ``start <= index < stop`` of one shard,
    in stored order; ``sample`` is None for an entry without audio or readable metadata (or one ``keep``
    rejects: its data is skipped, not read). ``first_byte`` is where the sample starts in the tar and
    ``next_byte`` where the following one starts: a reader that closed after ``index`` reopens with
    ``start=index + 1, resume_byte=next_byte``: files seek there, a ``pipe:`` command holding
    ``{offset}`` is run with the byte offset in its place, other ``pipe:`` streams re-read up to it.

    With ``stop``, the shard must hold at least ``stop`` samples (the index's count): fewer raise
    ``ShortShardError``, so a tar cut at a member boundary, or empty, does not pass as complete.
    Raises ``TarFormatError`` for a corrupt or truncated tar, ``OSError`` when it cannot be opened.
    """
    resume = resume_byte if resume_byte is not None and start > 0 else None
    ranged = is_ranged_pipe(url)
    stream = webdataset.gopen(url.replace(OFFSET_FIELD, str(resume or 0)) if ranged else url)
    finished = False
    try:
        tar = _TarStream(stream, url)
        index = 0
        if resume is not None and (ranged or tar.seekable):
            if ranged:  # the command starts there
                tar.position = resume
            else:
                tar.seek(resume)
            index = start
        try:
            yield from _grouped(tar, index, start, stop, keep)
        except ShortShardError:
            _close(stream, early=False)  # a failed `pipe:` command explains a short read better
            raise
        finished = True
    finally:
        _close(stream, early=not finished)


# In a `pipe:` URL, where the command takes the byte offset to start reading at (0 on a first open).
OFFSET_FIELD = "{offset}"


def is_ranged_pipe(url: str) -> bool:
    """A ``pipe:`` command that can start at a byte offset, e.g.
    ``pipe:curl -s -r {offset}- https://host/shard.tar``: a reader that was closed reopens it there
    instead of re-reading the shard from its start."""
    return url.startswith("pipe:") and OFFSET_FIELD in url


class TarFormatError(ValueError):
    """A shard is not a readable tar: ``cause`` is "corrupt" or "truncated"."""

    def __init__(self, message: str, cause: str = "corrupt"):
        super().__init__(message)
        self.cause = cause


class ShortShardError(TarFormatError):
    """A tar ended cleanly before the number of samples the index promises."""

    def __init__(self, url: str, found: int, expected: int):
        cause = "empty" if found == 0 else "truncated"
        super().__init__(f"{url}: {found} sample(s) where the index promises at least {expected}", cause)


def failure_cause(exc: BaseException) -> str:
    """Why a shard could not be read, as one of missing, unreadable, corrupt, truncated, empty."""
    if isinstance(exc, TarFormatError):
        return exc.cause
    if isinstance(exc, FileNotFoundError):
        return "missing"
    return "unreadable"  # permissions, I/O errors, a failed `pipe:` command, an unknown URL scheme


def _close(stream: BinaryIO, early: bool) -> None:
    """Close a shard stream. A ``pipe:`` command stopped early (its reader had what it needed) exits
    on SIGPIPE, which webdataset reports as an error: nothing was lost, so it is not one here. After
    a full read, a failed command (its exit status) is an error."""
    try:
        stream.close()
    except OSError:
        if not early:
            raise


_BLOCK = 512
# webdataset's split of a member name into sample key and field (the extension after the first dot).
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")
_META_MEMBER = re.compile(r"__[^/]*__($|/)")


def _grouped(
    tar: _TarStream, index: int, start: int, stop: int | None, keep: Callable[[int], bool] | None
) -> Iterator[tuple[int, int, int, RawSample | None]]:
    """Members grouped into samples by webdataset's key rule; ``index`` is the first key's number."""
    key, sample = None, {}
    wanted, first = False, tar.position
    for begin, name, read in _tar_members(tar):
        match = _MEMBER_NAME.match(name)
        if match is None or _META_MEMBER.search(name):
            read(False)
            continue
        if match[1] != key:
            if key is not None:
                if index >= start:
                    yield index, first, begin, (_to_raw_sample(sample) if wanted else None)
                index += 1
            if stop is not None and index >= stop:
                return
            key, sample, first = match[1], {"__key__": match[1]}, begin
            wanted = index >= start and (keep is None or keep(index))
        data = read(wanted)
        if wanted:
            sample[match[2]] = data
    if key is not None:
        if index >= start:
            yield index, first, tar.position, (_to_raw_sample(sample) if wanted else None)
        index += 1
    if stop is not None and index < stop:
        raise ShortShardError(tar.url, index, stop)


class _TarStream:
    """A shard stream that knows its byte position (``pipe:`` streams cannot tell())."""

    def __init__(self, stream: BinaryIO, url: str):
        self.stream, self.url, self.position = stream, url, 0
        seekable = getattr(stream, "seekable", None)  # webdataset's pipe: streams have no seekable()
        self.seekable = bool(seekable is not None and seekable())

    def seek(self, position: int) -> None:
        self.stream.seek(position)
        self.position = position

    def read(self, size: int, at_boundary: bool = False) -> bytes | None:
        data = self.stream.read(size)
        while len(data) < size:
            more = self.stream.read(size - len(data))
            if not more:
                if at_boundary and not data:
                    return None
                raise TarFormatError(
                    f"{self.url}: truncated tar (wanted {size} bytes, got {len(data)})", "truncated"
                )
            data += more
        self.position += size
        return data

    def skip(self, size: int) -> None:
        if size and self.seekable:
            self.stream.seek(size, os.SEEK_CUR)
            self.position += size
        elif size:
            self.read(size)


def _tar_members(tar: _TarStream) -> Iterator[tuple[int, str, Callable[[bool], bytes | None]]]:
    """(first byte, name, read) for each regular file of a tar stream; ``read(True)`` returns its data,
    ``read(False)`` skips it. The first byte is that of the member's first header (a GNU long name or
    pax header included). A lean reader of ustar headers with GNU long names and pax paths, because
    Python's ``tarfile`` (under webdataset's ``tar_file_iterator``) costs a fifth of the FLAC decode time."""
    long_name: str | None = None
    begin = 0
    while True:
        if long_name is None:
            begin = tar.position
        header = tar.read(_BLOCK, at_boundary=True)
        if header is None or not any(header):
            return
        size, kind = _parse_header(header, tar.url)
        consumed = False

        def read(keep: bool, size: int = size) -> bytes | None:
            nonlocal consumed
            consumed = True
            data = tar.read(size) if keep else tar.skip(size)
            tar.skip(-size % _BLOCK)
            return data

        if kind in (b"0", b"\0", b"7"):
            name = long_name or _header_name(header)
            long_name = None
            yield begin, name, read
            if not consumed:
                read(False)
        elif kind == b"L":  # GNU long name of the next member
            long_name = read(True).rstrip(b"\0").decode("utf-8", "replace")
        elif kind == b"x":  # pax extended header: only the path matters here
            records = read(True).decode("utf-8", "replace")
            long_name = next((r.split("=", 1)[1] for r in records.split("\n") if " path=" in r), long_name)
        else:  # directories, links, global pax headers
            read(False)


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
        speaker = meta.get("speaker") if isinstance(meta, dict) else None  # other JSON fails below
        return RawSample(
            key=sample["__key__"],
            audio=sample[audio_extension],
            audio_extension=audio_extension,
            num_samples=int(meta["num_samples"]),
            language=str(meta["language"]),
            corpus=str(meta["corpus"]),
            text=_text_member(sample, TEXT_MEMBER_EXTENSION),
            phones=_text_member(sample, PHONES_MEMBER_EXTENSION),
            speaker=str(speaker) if speaker is not None else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


def _text_member(sample: dict, extension: str) -> str | None:
    data = sample.get(extension)
    return data.decode("utf-8", "replace") if data is not None else None


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
