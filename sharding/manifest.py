"""`SourceRecord`, what the shard writer knows about one source file, and the manifest layout.

Every input layout (a TSV/JSONL manifest here, the directory layouts in `sharding.corpora`) is turned
into the same flat list of records, so the shard writer needs to know nothing about where the files
came from. Importers only look at paths and text files; audio is decoded later, in the writer, where a
bad file is skipped and reported instead of stopping the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sharding.languages import LanguageNames
from xlsr.data.shard_format import escape_path

# Corpus and language names become directory names and parts of WebDataset keys, where a '.' would
# split the key (WebDataset cuts keys at the first dot) and a '/' would add a directory level.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class SourceRecord:
    """One source audio file and what we know about it before decoding it."""

    path: str  # where the file is now (absolute, or relative to the working directory)
    language: str  # canonical tag (sharding.languages)
    corpus: str
    speaker: str | None = None
    duration: float | None = None
    # The file's path relative to the corpus root, '/'-separated: sample keys and the held-out split
    # depend on it, never on where the corpus is mounted. None: `path` itself.
    rel_path: str | None = None
    source_language: str | None = None  # the corpus's own name for the language, when it differs
    text: str | None = None  # the transcript, when the corpus has one
    # The phones spoken, space-separated (e.g. IPA from `sharding.speech`), when the corpus has them.
    phones: str | None = None

    @property
    def labels(self) -> list[str | None]:
        """What a shard stores of the record besides audio and metadata (shard fingerprints hash it):
        the transcript, and the phones where known (only then, so that shards planned before phones
        existed keep their fingerprints)."""
        return [self.text] if self.phones is None else [self.text, self.phones]

    @property
    def name(self) -> str:
        """The mount-independent name of the file (see `rel_path`)."""
        return self.rel_path if self.rel_path is not None else self.path


def check_name(value: str, what: str, where: str = "") -> str:
    """Return `value` if it is usable as a corpus or language name, else raise a ValueError."""
    if not _NAME_RE.match(value):
        prefix = f"{escape_path(where)}: " if where else ""
        raise ValueError(
            f"{prefix}bad {what} '{escape_path(value)}': use letters, digits, '_' and '-' only "
            "(it becomes a directory name and part of each sample key)"
        )
    return value


# --------------------------------------------------------------------------------------------------
# Manifests


def read_manifest(
    path: str | os.PathLike, default_corpus: str = "corpus", names: LanguageNames | None = None
) -> list[SourceRecord]:
    """Read a TSV (with a header row) or JSONL manifest.

    Fields: `path` and `language` are required; `corpus`, `speaker`, `duration` (seconds), `text`
    (a transcript) and `phones` (the phones spoken, separated by whitespace, stored with single
    spaces) are optional. Relative paths are resolved against the manifest's directory, so a
    manifest can be moved together with its audio, and that relative path names the file in sample
    keys. Languages are mapped to canonical tags by `names` (`sharding.languages`). A file whose first
    non-blank character is '{' is read as JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    text = _read_utf8(path)
    rows = _jsonl_rows(path, text) if text.lstrip().startswith("{") else _tsv_rows(path, text)
    names = names if names is not None else LanguageNames()
    return [_record_from_row(path, line_no, row, default_corpus, names) for line_no, row in rows]


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None


def _tsv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: empty manifest (expected a header row with 'path' and 'language')")
    header = [column.strip() for column in lines[0].split("\t")]
    for required in ("path", "language"):
        if required not in header:
            raise ValueError(f"{path}:1: header has no '{required}' column (found: {', '.join(header)})")
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise ValueError(
                f"{path}:{line_no}: expected {len(header)} tab-separated fields, got {len(values)}"
            )
        yield line_no, dict(zip(header, values, strict=True))


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        yield line_no, row


def _record_from_row(
    path: Path, line_no: int, row: dict, default_corpus: str, names: LanguageNames
) -> SourceRecord:
    where = f"{path}:{line_no}"

    def text_field(name: str) -> str | None:
        value = row.get(name)
        if value is None:
            return None
        if not isinstance(value, str | int):
            raise ValueError(f"{where}: field '{name}' must be a string, got {value!r}")
        return str(value).strip() or None

    audio_path = text_field("path")
    language = text_field("language")
    for name, value in (("path", audio_path), ("language", language)):
        if value is None:
            raise ValueError(f"{where}: missing required field '{name}'")
    corpus = text_field("corpus") or default_corpus
    full_path = os.path.normpath(path.parent / audio_path)
    tag = names.canonical(language)
    return SourceRecord(
        path=full_path,
        language=check_name(tag, "language", where),
        corpus=check_name(corpus, "corpus", where),
        speaker=text_field("speaker"),
        duration=_parse_duration(row.get("duration"), where),
        # A relative path names the file wherever corpus and manifest are mounted; an absolute one cannot.
        rel_path=None
        if os.path.isabs(audio_path)
        else Path(os.path.relpath(full_path, path.parent)).as_posix(),
        source_language=language if tag != language else None,
        text=text_field("text"),
        phones=_parse_phones(row.get("phones"), where),
    )


def _parse_phones(value: object, where: str) -> str | None:
    """Phones separated by single spaces (any run of whitespace in the manifest is one separator);
    None for a missing or blank field."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'phones' must be a string of space-separated phones, got {value!r}")
    return " ".join(value.split()) or None


def _parse_duration(value: object, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        duration = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'duration' must be a number of seconds, got {value!r}") from None
    if not math.isfinite(duration) or duration < 0:
        raise ValueError(f"{where}: field 'duration' must be a finite number >= 0, got {value!r}")
    return duration
