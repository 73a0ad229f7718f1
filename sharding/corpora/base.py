"""What every corpus layout shares: the options of an import, what it found, and the file walk.

A layout reads a corpus as its official download lays it out and returns `Found`: the records to
shard, plus everything it left out and why (files ignored for their suffix, evaluation splits kept
out, listed files that do not exist, names it mapped), so the shard summary can say it in a few lines.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sharding.languages import LanguageNames
from sharding.manifest import SourceRecord, check_name
from xlsr.data.shard_format import escape_path

# Suffixes (lower case) of every container libsndfile decodes (soundfile's wheels ship libsndfile
# 1.2, which reads MP3 and Ogg Opus too). NIST SPHERE (`.sph`) is BABEL's format.
AUDIO_SUFFIXES = frozenset(
    {
        ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".sph", ".nist", ".aif", ".aiff",
        ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf", ".htk", ".voc", ".wve", ".paf", ".svx", ".sd2",
    }
)  # fmt: skip
# Files that are never audio and never worth a word in the summary.
_QUIET_SUFFIXES = frozenset({".tsv", ".txt", ".json", ".jsonl", ".csv", ".md", ".lst", ".stm", ".scp"})
# Split names corpora use for evaluation audio; `--include-splits` takes these.
EVALUATION_SPLITS = ("dev", "test", "eval")


@dataclass(frozen=True)
class ImportOptions:
    """How to read a corpus: the `xlsr shard` flags that concern importing."""

    corpus: str | None = None  # None: the layout's default name
    include_splits: frozenset[str] = frozenset()  # evaluation splits to import anyway
    include_unvalidated: bool = False  # Common Voice: also other.tsv
    language_map: dict[str, str] = field(default_factory=dict)  # corpus name -> tag (--language-map)

    def corpus_name(self, default: str) -> str:
        return check_name(self.corpus or default, "corpus")

    def includes(self, split: str) -> bool:
        return split in self.include_splits


@dataclass
class Found:
    """The records a layout found, and what it left out."""

    layout: str
    records: list[SourceRecord] = field(default_factory=list)
    names: LanguageNames = field(default_factory=LanguageNames)
    ignored_suffixes: Counter[str] = field(default_factory=Counter)  # suffix -> files not read
    excluded_splits: Counter[str] = field(default_factory=Counter)  # split -> files kept out
    notes: list[str] = field(default_factory=list)  # what the layout chose, in one line each

    @classmethod
    def start(cls, layout: str, options: ImportOptions) -> Found:
        return cls(layout, names=LanguageNames(dict(options.language_map)))

    def record(self, path: Path, rel_path: str, source_language: str, corpus: str, **fields) -> None:
        """Add a record; the language is mapped to its canonical tag here."""
        tag = check_name(self.names.canonical(source_language), "language", str(path))
        self.records.append(
            SourceRecord(
                path=str(path),
                language=tag,
                corpus=corpus,
                rel_path=rel_path,
                source_language=source_language if source_language != tag else None,
                **fields,
            )
        )

    def audio_files(self, directory: Path, pattern: str = "**/*") -> list[Path]:
        """Audio files under `directory` matching `pattern`, sorted; other files are counted."""
        files = []
        for path in sorted(directory.glob(pattern)):
            if not os.path.isfile(path):
                continue
            suffix = path.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                files.append(path)
            elif suffix not in _QUIET_SUFFIXES and not path.name.startswith("."):
                self.ignored_suffixes[suffix or "(none)"] += 1
        return files

    def summary_lines(self) -> list[str]:
        lines = list(self.notes)
        if self.excluded_splits:
            parts = ", ".join(f"{split}: {n}" for split, n in sorted(self.excluded_splits.items()))
            lines.append(f"evaluation splits kept out ({parts} files); --include-splits adds them")
        if self.ignored_suffixes:
            parts = ", ".join(f"{suffix}: {n}" for suffix, n in sorted(self.ignored_suffixes.items()))
            lines.append(f"ignored for their suffix (not audio libsndfile decodes): {parts}")
        return lines + self.names.report()


class Layout(Protocol):
    """A corpus layout: how to recognise it, what it expects, and how to read it."""

    name: str
    default_corpus: str
    tree: str  # the expected directory tree, for `xlsr shard --help` and error messages

    def detect(self, root: Path) -> str | None:
        """Why `root` looks like this layout (e.g. "validated.tsv in de/"), or None."""
        ...

    def read(self, root: Path, options: ImportOptions) -> Found: ...


def child_dirs(root: Path) -> list[Path]:
    """Sub-directories of `root`, sorted, ignoring hidden ones such as `.cache`. Read with scandir,
    whose entries know their type without a stat per file: detection looks into many folders, on
    network filesystems too."""
    try:
        with os.scandir(root) as entries:
            names = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []
    return [root / name for name in sorted(names)]


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_tsv_dicts(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
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
                raise ValueError(f"{escape_path(path)}:1: header has no column(s) {', '.join(missing)}")
            for line_no, values in enumerate(reader, start=2):
                if values:
                    # Short rows happen in Common Voice (empty trailing fields): missing fields are absent.
                    yield line_no, dict(zip(header, values, strict=False))
        except UnicodeDecodeError:  # line_no: the last row read whole, so the bad byte is just after it
            raise ValueError(f"{escape_path(path)}: not UTF-8 text (after line {line_no})") from None


def read_text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file ('' for a missing one is the caller's business)."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{escape_path(path)}: not UTF-8 text") from None


def require_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input directory not found: {escape_path(root)}")
    return root
