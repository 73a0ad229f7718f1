"""Find the audio files of a raw corpus and describe each one as a `SourceRecord`.

Every input layout (a plain directory tree, a TSV/JSONL manifest, or the download layout of a public
corpus) is turned into the same flat list of records, so the shard writer needs to know nothing about
where the files came from. Importers only look at paths and text files; audio is decoded later, in the
writer, where a bad file is skipped and reported instead of stopping the run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xlsr.data.shard_format import escape_path

# Suffixes (lower case) of the source audio files that the directory scan and importers pick up.
# libsndfile >= 1.0.29 decodes Ogg Opus, and the soundfile wheels ship 1.2.x, so MLS's opus release
# is imported too.
SOURCE_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
LAYOUTS = ("dir", "manifest", "commonvoice", "mls", "voxpopuli")

# Corpus and language names become directory names and parts of WebDataset keys, where a '.' would
# split the key (WebDataset cuts keys at the first dot) and a '/' would add a directory level.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class SourceRecord:
    """One source audio file and what we know about it before decoding it."""

    path: str
    language: str
    corpus: str
    speaker: str | None = None
    duration: float | None = None


def check_name(value: str, what: str, where: str = "") -> str:
    """Return `value` if it is usable as a corpus or language name, else raise a ValueError."""
    if not _NAME_RE.match(value):
        prefix = f"{escape_path(where)}: " if where else ""
        raise ValueError(
            f"{prefix}bad {what} '{escape_path(value)}': use letters, digits, '_' and '-' only "
            "(it becomes a directory name and part of each sample key)"
        )
    return value


def is_audio_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SOURCE_AUDIO_SUFFIXES


def _sorted_audio_files(root: Path, pattern: str = "**/*") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if is_audio_file(p))


def _language_dirs(root: Path) -> list[Path]:
    """Sub-directories of `root`, sorted, ignoring hidden ones such as `.cache`."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input directory not found: {root}")
    return root


# --------------------------------------------------------------------------------------------------
# Manifests


def read_manifest(path: str | os.PathLike, default_corpus: str = "corpus") -> list[SourceRecord]:
    """Read a TSV (with a header row) or JSONL manifest.

    Fields: `path` and `language` are required; `corpus`, `speaker` and `duration` (seconds) are
    optional. Relative paths are resolved against the manifest's directory, so a manifest can be moved
    together with its audio. A file whose first non-blank character is '{' is read as JSONL.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    text = _read_utf8(path)
    rows = _jsonl_rows(path, text) if text.lstrip().startswith("{") else _tsv_rows(path, text)
    return [_record_from_row(path, line_no, row, default_corpus) for line_no, row in rows]


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


def _record_from_row(path: Path, line_no: int, row: dict, default_corpus: str) -> SourceRecord:
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
    return SourceRecord(
        path=os.path.normpath(path.parent / audio_path),
        language=check_name(language, "language", where),
        corpus=check_name(corpus, "corpus", where),
        speaker=text_field("speaker"),
        duration=_parse_duration(row.get("duration"), where),
    )


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


# --------------------------------------------------------------------------------------------------
# Directory layouts


def scan_directory(root: str | os.PathLike, corpus: str) -> list[SourceRecord]:
    """Layout `ROOT/<language>/**/*.{wav,flac,mp3,ogg,opus}`: the first directory level is the language."""
    root = _require_dir(root)
    check_name(corpus, "corpus")
    records = []
    for lang_dir in _language_dirs(root):
        language = check_name(lang_dir.name, "language", str(lang_dir))
        records += [SourceRecord(str(p), language, corpus) for p in _sorted_audio_files(lang_dir)]
    return records


def import_common_voice(root: str | os.PathLike, corpus: str = "commonvoice") -> list[SourceRecord]:
    """Common Voice: `ROOT/<lang>/validated.tsv` (`client_id path sentence ...`) and `ROOT/<lang>/clips/`.

    ROOT may also be one language directory (it holds `validated.tsv` itself). Only validated clips are
    used. `client_id` becomes the speaker; `clip_durations.tsv` (newer releases, milliseconds) supplies
    durations when present, which saves opening every mp3 while planning shards.
    """
    root = _require_dir(root)
    check_name(corpus, "corpus")
    lang_dirs = [root] if (root / "validated.tsv").is_file() else _language_dirs(root)
    records = []
    for lang_dir in lang_dirs:
        table = lang_dir / "validated.tsv"
        if not table.is_file():
            continue
        language = check_name(lang_dir.name, "language", str(lang_dir))
        durations = _common_voice_durations(lang_dir / "clip_durations.tsv")
        for line_no, row in _read_tsv_dicts(table, required=("path",)):
            clip = row["path"].strip()
            if not clip:
                raise ValueError(f"{table}:{line_no}: empty 'path' field")
            records.append(
                SourceRecord(
                    path=str(lang_dir / "clips" / clip),
                    language=language,
                    corpus=corpus,
                    speaker=(row.get("client_id") or "").strip() or None,
                    duration=durations.get(clip),
                )
            )
    return records


def _common_voice_durations(table: Path) -> dict[str, float]:
    if not table.is_file():
        return {}
    durations = {}
    for _, row in _read_tsv_dicts(table, required=("clip", "duration[ms]")):
        try:
            durations[row["clip"]] = float(row["duration[ms]"]) / 1000.0
        except ValueError:
            continue  # a bad duration only costs a header read later
    return durations


def _read_tsv_dicts(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a header-first TSV. Quotes are data (Common Voice sentences contain them)."""
    line_no = 1
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header is None:
                return
            missing = [name for name in required if name not in header]
            if missing:
                raise ValueError(f"{path}:1: header has no column(s) {', '.join(missing)}")
            for line_no, values in enumerate(reader, start=2):
                if values:
                    # Short rows happen in Common Voice (empty trailing fields): missing fields are absent.
                    yield line_no, dict(zip(header, values, strict=False))
        except UnicodeDecodeError:  # line_no: the last row read whole, so the bad byte is just after it
            raise ValueError(f"{path}: not UTF-8 text (after line {line_no})") from None


def import_mls(root: str | os.PathLike, corpus: str = "mls") -> list[SourceRecord]:
    """Multilingual LibriSpeech: `ROOT/mls_<language>/{train,dev,test}/audio/<speaker>/<book>/*.flac`.

    The language is the directory name without `mls_` (e.g. `german`). The opus release (`*.opus`) is
    imported as well: libsndfile decodes Ogg Opus; where it cannot, the files are skipped as unreadable.
    ROOT may also be one `mls_<language>` directory.
    """
    root = _require_dir(root)
    check_name(corpus, "corpus")
    lang_dirs = (
        [root]
        if root.name.startswith("mls_")
        else [d for d in _language_dirs(root) if d.name.startswith("mls_")]
    )
    records = []
    for lang_dir in lang_dirs:
        language = check_name(lang_dir.name.removeprefix("mls_"), "language", str(lang_dir))
        for split in ("train", "dev", "test"):
            for path in _sorted_audio_files(lang_dir / split / "audio", "*/*/*"):
                speaker = path.parent.parent.name
                records.append(SourceRecord(str(path), language, corpus, speaker=speaker))
    return records


def import_voxpopuli(root: str | os.PathLike, corpus: str = "voxpopuli") -> list[SourceRecord]:
    """VoxPopuli unlabelled audio as downloaded: `ROOT/<lang>/<year>/*.ogg`, one file per session.

    Sessions are long (often tens of minutes), so shard them with `--max-seconds` to cut each one into
    consecutive segments. Pre-segmented VoxPopuli data in the same layout works unchanged.
    """
    root = _require_dir(root)
    check_name(corpus, "corpus")
    records = []
    for lang_dir in _language_dirs(root):
        language = check_name(lang_dir.name, "language", str(lang_dir))
        records += [SourceRecord(str(p), language, corpus) for p in _sorted_audio_files(lang_dir, "*/*")]
    return records


def load_records(
    input: str | os.PathLike,
    layout: str,
    corpus: str | None = None,
) -> list[SourceRecord]:
    """Records from INPUT read with the given layout; `corpus=None` uses the layout's default name."""
    if layout == "dir":
        return scan_directory(input, corpus or "corpus")
    if layout == "manifest":
        return read_manifest(input, default_corpus=corpus or "corpus")
    importers = {"commonvoice": import_common_voice, "mls": import_mls, "voxpopuli": import_voxpopuli}
    if layout not in importers:
        raise ValueError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    importer = importers[layout]
    return importer(input, corpus) if corpus else importer(input)
