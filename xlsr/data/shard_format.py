"""The on-disk format of a shard set, in one place: what `xlsr shard` writes and the loader reads.

A shard set is a directory holding ``index.json`` and ``<corpus>/<language>/shard-NNNNNN.tar``. Each tar
is a WebDataset tar: per utterance, an audio member ``<key>.flac`` (FLAC, 16-bit PCM) or ``<key>.s16``
(raw little-endian int16) and a metadata member ``<key>.json``, plus optional ``<key>.txt``
(transcript) and ``<key>.phn`` (phones) members. The index lists every shard with its stream
(corpus, language), sample count and seconds of audio; see docs/data.md for all fields.

File names are written into text (``skipped.tsv``, sidecars, the ``source`` metadata field, the printed
summary) with ``escape_path``, a reversible escape of the OS-level bytes of the name: any name the OS
allows, UTF-8 or not, is kept and reported losslessly (``unescape_path`` gives the exact bytes back).

This module is torch-free (no webdataset, no numpy): the shard writer, ``xlsr stats`` and the loader
all read and write the index through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr.config.schema import SAMPLE_RATE
from xlsr.fileio import atomic_write_text
from xlsr.process import UserError

INDEX_NAME = "index.json"
INDEX_VERSION = 1
# `--format` value -> extension of the audio member in the tar.
AUDIO_MEMBER_EXTENSION = {"flac": "flac", "int16": "s16"}
AUDIO_FORMATS = tuple(AUDIO_MEMBER_EXTENSION)
AUDIO_MEMBER_EXTENSIONS = tuple(AUDIO_MEMBER_EXTENSION.values())
META_MEMBER_EXTENSION = "json"
TEXT_MEMBER_EXTENSION = "txt"  # optional: the utterance's transcript (UTF-8), never needed to train
# Optional: the phones spoken (UTF-8, separated by single spaces, e.g. eSpeak IPA from
# `sharding.speech`), like the transcript only for a recording that stays whole; for phone probes.
PHONES_MEMBER_EXTENSION = "phn"
# Fields of one entry of the index's "shards" list.
SHARD_FIELDS = ("path", "corpus", "language", "samples", "seconds")
# A missing-shards error lists this many paths, then the count.
_LISTED_MISSING = 3
_STAT_THREADS = 16  # existence checks are metadata round trips on network filesystems


class ShardIndexError(UserError, ValueError):
    """An index file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed by an index; ``url`` is resolved against the index's directory."""

    url: str
    corpus: str
    language: str
    samples: int
    seconds: float
    keys_digest: str | None = None  # see keys_digest()
    lengths: tuple[tuple[float, int, float], ...] | None = None  # LengthHistogram: (upper, count, seconds)


@dataclass(frozen=True)
class ShardIndex:
    """A checked index: the file it came from, its JSON object, and its shards."""

    path: Path
    data: dict[str, Any]
    shards: tuple[ShardInfo, ...]


def index_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the index inside it when ``path`` is a shard-set directory."""
    path = Path(path)
    return path / INDEX_NAME if path.is_dir() else path


def read_index(path: str | os.PathLike) -> ShardIndex:
    """Read and check the index at ``path`` (the file or its directory); raise ``ShardIndexError``."""
    file = index_file(path)
    if not file.is_file():
        raise ShardIndexError(f"shard index not found: {file} (run `xlsr shard INPUT OUT_DIR` first)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardIndexError(f"{file}: not a valid JSON index ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
        raise ShardIndexError(
            f"{file}: not a version-{INDEX_VERSION} shard index (no 'version': {INDEX_VERSION})"
        )
    if not isinstance(data.get("shards"), list):
        raise ShardIndexError(f"{file}: expected a 'shards' list")
    _check_audio_settings(data, file)
    shards = tuple(_shard_info(entry, position, file) for position, entry in enumerate(data["shards"]))
    return ShardIndex(file, data, shards)


def _check_audio_settings(data: dict[str, Any], file: Path) -> None:
    """The set's sample rate and audio format, when stated, must be what the loader decodes: a shard
    set at another rate would otherwise train silently at the wrong speed. (Absent means the writer's
    defaults, 16 kHz FLAC, for indexes written by hand.)"""
    rate = data.get("sample_rate", SAMPLE_RATE)
    if isinstance(rate, bool) or rate != SAMPLE_RATE:
        raise ShardIndexError(
            f"{file}: 'sample_rate' is {rate!r}, but the model takes {SAMPLE_RATE} Hz audio "
            "(re-shard with `xlsr shard`, which resamples to 16 kHz)"
        )
    audio_format = data.get("audio_format", AUDIO_FORMATS[0])
    if audio_format not in AUDIO_FORMATS:
        raise ShardIndexError(
            f"{file}: 'audio_format' is {audio_format!r}; supported: {', '.join(AUDIO_FORMATS)}"
        )


def _shard_info(entry: object, position: int, file: Path) -> ShardInfo:
    where = f"{file}: shards[{position}]"
    if not isinstance(entry, dict):
        raise ShardIndexError(f"{where} is not an object")
    missing = [field for field in SHARD_FIELDS if field not in entry]
    if missing:
        raise ShardIndexError(f"{where} lacks {', '.join(missing)}")
    names = {field: entry[field] for field in ("path", "corpus", "language")}
    for field, value in names.items():
        if not isinstance(value, str) or not value:
            raise ShardIndexError(f"{where}: '{field}' must be a non-empty string, got {value!r}")
    samples, seconds = _counts(entry["samples"], entry["seconds"], where)
    digest = entry.get("keys_digest")
    if digest is not None and not isinstance(digest, str):
        raise ShardIndexError(f"{where}: 'keys_digest' must be a string, got {digest!r}")
    return ShardInfo(
        _resolve_url(names["path"], file.parent),
        names["corpus"],
        names["language"],
        samples,
        seconds,
        digest,
        _lengths(entry.get("lengths"), where),
    )


def _lengths(value: object, where: str) -> tuple[tuple[float, int, float], ...] | None:
    if value is None:
        return None
    bins = []
    for row in value if isinstance(value, list) else [None]:
        numbers = row if isinstance(row, list) and len(row) == 3 else None
        if numbers is None or not all(_is_number(v) for v in numbers):
            raise ShardIndexError(f"{where}: 'lengths' must be a list of [upper seconds, count, seconds]")
        bins.append((float(numbers[0]), int(numbers[1]), float(numbers[2])))
    return tuple(bins)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _counts(samples: object, seconds: object, where: str) -> tuple[int, float]:
    """``samples`` a whole number >= 0, ``seconds`` finite, >= 0, and > 0 when there are samples: the
    loader divides by it, and a NaN would send every draw to one stream."""
    numbers = (int, float)
    if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (samples, seconds)):
        raise ShardIndexError(
            f"{where}: 'samples' and 'seconds' must be numbers, got {samples!r} and {seconds!r}"
        )
    if samples < 0 or samples != int(samples) or not math.isfinite(seconds) or seconds < 0:
        raise ShardIndexError(
            f"{where}: 'samples' (a whole number) and 'seconds' (finite) must be >= 0, "
            f"got {samples!r} and {seconds!r}"
        )
    if samples > 0 and seconds == 0:
        raise ShardIndexError(f"{where}: {int(samples)} samples but 'seconds' is 0")
    return int(samples), float(seconds)


def _resolve_url(path: str, base: Path) -> str:
    """Relative shard paths are relative to the index; absolute paths and URLs stay as they are."""
    if not is_local(path) or os.path.isabs(path):
        return path
    return str(base / path)


def shard_entry(
    path: str,
    corpus: str,
    language: str,
    samples: int,
    seconds: float,
    keys_digest: str | None = None,
    lengths: list[list[float]] | None = None,
) -> dict[str, Any]:
    """One entry of the index's "shards" list (``path`` relative to the index). The optional fields:
    ``keys_digest`` identifies the shard's utterances (``keys_digest()``), ``lengths`` is its
    ``LengthHistogram``."""
    entry = dict(zip(SHARD_FIELDS, (path, corpus, language, samples, seconds), strict=True))
    if keys_digest is not None:
        entry["keys_digest"] = keys_digest
    if lengths is not None:
        entry["lengths"] = lengths
    return entry


def keys_digest(keys: Iterable[str]) -> str:
    """What identifies a shard's utterances, whatever its path: 32 hex of SHA-256 over its sorted
    keys (the writer passes `<key>:<hash of the encoded audio>`, so two corpora that happen to share
    relative paths and names do not match). Two indexes listing a shard with the same digest list
    the same utterances."""
    text = "\n".join(sorted(keys))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class LengthHistogram:
    """Utterance durations of a shard in bins (0.5 s up to 60 s, 10 s up to 10 min, then 1 min), each
    with its count and its seconds: enough to count the seconds a model cropping every draw to C
    seconds can see, Σ min(d, C), for any C (``visible_seconds``), exact up to one bin."""

    def __init__(self) -> None:
        self.bins: dict[float, list[float]] = {}  # upper edge -> [count, seconds]

    def add(self, seconds: float) -> None:
        upper = _bin_upper(seconds)
        entry = self.bins.setdefault(upper, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def to_json(self) -> list[list[float]]:
        return [[upper, int(count), round(total, 4)] for upper, (count, total) in sorted(self.bins.items())]


def _bin_upper(seconds: float) -> float:
    for limit, width in _BIN_WIDTHS:
        if seconds <= limit:
            return max(width, math.ceil(seconds / width) * width)
    return math.ceil(seconds / 60.0) * 60.0


def _bin_lower(upper: float) -> float:
    width = next((width for limit, width in _BIN_WIDTHS if upper <= limit), 60.0)
    return upper - width


_BIN_WIDTHS = ((60.0, 0.5), (600.0, 10.0))


def longer_than(shard: ShardInfo, seconds: float) -> tuple[int, float]:
    """(utterances, their seconds) of the shard's histogram bins that lie wholly above ``seconds``."""
    bins = [(count, total) for upper, count, total in shard.lengths or () if _bin_lower(upper) >= seconds]
    return sum(count for count, _ in bins), sum(total for _, total in bins)


def visible_seconds(shard: ShardInfo, crop_seconds: float) -> float:
    """Seconds of the shard a model that crops every utterance to ``crop_seconds`` can see: each
    utterance counts at most that. From the shard's length histogram; for a shard without one, every
    utterance is taken to have the shard's mean length."""
    if shard.samples == 0:
        return 0.0
    if shard.lengths is None:
        return shard.samples * min(shard.seconds / shard.samples, crop_seconds)
    if all(upper <= crop_seconds for upper, _, _ in shard.lengths):
        return shard.seconds  # nothing is cropped: the exact stored seconds
    total = 0.0
    for upper, count, seconds in shard.lengths:
        if upper <= crop_seconds:
            total += seconds
        elif _bin_lower(upper) >= crop_seconds:
            total += count * crop_seconds
        else:  # the crop falls inside this bin: exact when all its utterances lie on one side
            total += min(seconds, count * crop_seconds)
    return total


def make_index(
    sample_rate: int,
    audio_format: str,
    shards: list[dict[str, Any]],
    totals: dict[str, Any],
    skipped: dict[str, Any],
) -> dict[str, Any]:
    """The index object: format version, audio settings, shard entries, totals and skip counts."""
    return {
        "version": INDEX_VERSION,
        "sample_rate": sample_rate,
        "audio_format": audio_format,
        "shards": shards,
        "totals": totals,
        "skipped": skipped,
    }


def write_index(out_dir: str | os.PathLike, index: dict[str, Any]) -> Path:
    """Write ``index`` as ``out_dir/index.json`` atomically; return its path."""
    path = Path(out_dir) / INDEX_NAME
    atomic_write_text(path, json.dumps(index, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# Shard files


def is_local(url: str) -> bool:
    """True for a shard that is a file on this machine (not a URL or a ``pipe:`` command)."""
    return not ("://" in url or url.startswith("pipe:"))


def missing_shards(shards: Iterable[ShardInfo]) -> list[str]:
    """The local shard files that do not exist, in index order (URLs and pipes are not checked)."""
    local = [shard.url for shard in shards if is_local(shard.url)]
    with ThreadPoolExecutor(_STAT_THREADS) as pool:
        exists = list(pool.map(os.path.isfile, local))
    return [url for url, found in zip(local, exists, strict=True) if not found]


def check_shards_exist(index: ShardIndex) -> None:
    """Raise ``ShardIndexError`` (one line: the first few missing paths and how many) unless every
    local shard the index lists exists. The loader calls it before starting any worker."""
    missing = missing_shards(index.shards)
    if missing:
        listed = ", ".join(escape_path(url) for url in missing[:_LISTED_MISSING])
        more = f" and {len(missing) - _LISTED_MISSING} more" if len(missing) > _LISTED_MISSING else ""
        raise ShardIndexError(
            f"{index.path}: {len(missing)} of {len(index.shards)} shard(s) missing: {listed}{more} "
            "(rerun the `xlsr shard` command that wrote it, or fix data.train)"
        )


# --------------------------------------------------------------------------------------------------
# File names as text

# Escaped: the backslash itself, ASCII control characters (tab and newline would break a TSV row),
# and bytes that are not UTF-8 (``surrogateescape`` turns each into one code point U+DC80..U+DCFF).
_NEEDS_ESCAPE = re.compile(r"[\\\x00-\x1f\x7f\udc80-\udcff]")
_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[\\tnr])")
_UNESCAPED = {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}


def escape_path(path: str | bytes | os.PathLike) -> str:
    r"""A file name as one line of printable text that ``unescape_path`` turns back into its exact bytes.

    The name's OS-level bytes (``os.fsencode``) are read as UTF-8; valid characters stay as they are,
    ``\`` becomes ``\\``, tab/newline/CR become ``\t``/``\n``/``\r``, other control characters and
    every byte that is not UTF-8 become ``\xHH``. So ``caf\xe9.wav`` is the Latin-1 name
    ``b"caf\xe9.wav"``, while the UTF-8 name ``café.wav`` stays ``café.wav``.
    """
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # a str that no file name can have (a lone surrogate from a manifest)
        raw = os.fspath(path).encode("utf-8", "surrogatepass")
    return _NEEDS_ESCAPE.sub(_escape_char, raw.decode("utf-8", "surrogateescape"))


def _escape_char(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED_ESCAPES.get(char) or f"\\x{code - 0xDC00 if code >= 0xDC80 else code:02x}"


def unescape_path(text: str) -> bytes:
    """The exact bytes of a name written by ``escape_path`` (``os.fsdecode`` makes it a ``str`` path)."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode("utf-8", "surrogateescape")
        code = match[1]
        out += bytes([int(code[1:], 16)]) if code[0] == "x" else _UNESCAPED[code]
        position = match.end()
    out += text[position:].encode("utf-8", "surrogateescape")
    return bytes(out)
