"""The typed entry points of the sharding package: `shard(ShardJob)` and `stats(index_path, ...)`.

Both raise instead of printing: `ShardError` for a user error (bad input path, manifest, option),
`ShardIndexError` for a missing or malformed index, `RuntimeError` when planned shards are missing
after a split run. Command lines (`xlsr shard`, `xlsr stats`), the demo and SLURM array tasks call
these functions and decide what to print.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharding.corpora import EVALUATION_SPLITS, Found, ImportOptions, LayoutError, read_corpus
from sharding.hours import (
    DEFAULT_CROP_SECONDS,
    combined_index,
    format_hours_table,
    format_split_table,
    plot_hours,
    stream_hours,
)
from sharding.languages import read_language_map
from sharding.manifest import SourceRecord
from sharding.segment import DEFAULT_MAX_SECONDS
from sharding.split import VALID_DIR, split_records
from sharding.writer import SKIPPED_NAME, ShardWriterConfig, read_skipped, with_durations, write_shards
from xlsr.data.shard_format import INDEX_NAME, escape_path, read_index
from xlsr.data.upsampling import upsampling_probabilities
from xlsr.process import UserError

# The summary lists at most this many skipped files; skipped.tsv has them all.
MAX_LISTED_SKIPS = 20


class ShardError(UserError, ValueError):
    """A user error: the input, a manifest row or an option cannot be used. The message says why."""


@dataclass(frozen=True)
class ShardJob:
    """One `xlsr shard` run: its fields are the command's flags (see `sharding.cli`)."""

    input: Path
    out_dir: Path
    layout: str | None = None  # None: "manifest" for a file, else detected (sharding.corpora)
    corpus: str | None = None  # None: the layout's default name
    include_splits: frozenset[str] = frozenset()  # evaluation splits imported anyway (dev, test, eval)
    include_unvalidated: bool = False  # Common Voice: also other.tsv
    language_map: Path | None = None  # tsv: corpus's language name -> tag (sharding.languages)
    workers: int = 1
    shard_size_bytes: int = 10**9
    audio_format: str = "flac"
    # Cut longer recordings at pauses into segments of at most this (sharding.segment); None or 0: off.
    max_seconds: float | None = DEFAULT_MAX_SECONDS
    min_seconds: float = 0.25
    drop_silent: bool = False
    seed: int = 0
    task_index: int = 0
    num_tasks: int = 1
    language_alpha: float = 0.5  # for the hours table only
    corpus_alpha: float = 0.5
    progress: bool = True
    # Seconds per (corpus, language) held out into OUT/valid/ (sharding.split); 0: no held-out set.
    valid_seconds: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Path(self.input))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        object.__setattr__(self, "include_splits", frozenset(self.include_splits))
        unknown = sorted(self.include_splits - set(EVALUATION_SPLITS))
        if unknown:
            raise ShardError(
                f"--include-splits: unknown split(s) {', '.join(unknown)}; "
                f"choose from {', '.join(EVALUATION_SPLITS)}"
            )
        if self.num_tasks < 1 or not 0 <= self.task_index < self.num_tasks:
            raise ShardError(
                f"task_index must lie in [0, num_tasks), got task {self.task_index} of {self.num_tasks}"
            )
        if isinstance(self.valid_seconds, bool) or not (
            isinstance(self.valid_seconds, int | float) and math.isfinite(self.valid_seconds)
        ):
            raise ShardError(f"valid_seconds must be a finite number of seconds, got {self.valid_seconds!r}")
        if self.valid_seconds < 0:
            raise ShardError(f"valid_seconds must be >= 0 (0: no held-out set), got {self.valid_seconds}")
        self.writer_config()  # checks the output settings

    def writer_config(self) -> ShardWriterConfig:
        try:
            return ShardWriterConfig(
                out_dir=self.out_dir,
                shard_size_bytes=self.shard_size_bytes,
                audio_format=self.audio_format,  # checked by the config
                max_seconds=self.max_seconds or None,
                min_seconds=self.min_seconds,
                drop_silent=self.drop_silent,
                workers=self.workers,
                seed=self.seed,
            )
        except ValueError as exc:
            raise ShardError(str(exc)) from None

    def import_options(self) -> ImportOptions:
        try:
            language_map = read_language_map(self.language_map) if self.language_map else {}
        except (OSError, ValueError) as exc:
            raise ShardError(str(exc)) from None
        return ImportOptions(self.corpus, self.include_splits, self.include_unvalidated, language_map)

    def split_root(self) -> Path:
        """What held-out recordings' paths are taken relative to: the input directory, or the
        manifest's directory (the one its relative paths are resolved against)."""
        return self.input if self.input.is_dir() else self.input.parent


@dataclass(frozen=True)
class TaskShare:
    """What one task of a split run (`num_tasks > 1`) did; the index is written after all tasks."""

    task_index: int
    num_tasks: int
    planned: int  # shards in the whole plan
    assigned: tuple[str, ...]  # this task's shards (paths relative to the output directory)
    written: int
    already_complete: int


@dataclass(frozen=True)
class ShardResult:
    """What `shard` did. `index` is None for one task of a split run; `task` is set then."""

    job: ShardJob
    layout: str
    source_files: int
    import_lines: tuple[str, ...] = ()  # what the layout found and left out (Found.summary_lines)
    index: dict[str, Any] | None = None
    task: TaskShare | None = None
    skipped: tuple[dict[str, str], ...] = ()  # rows of skipped.tsv (complete runs only)
    valid_index: dict[str, Any] | None = None  # OUT/valid/index.json, for a complete run that held out

    @property
    def index_path(self) -> Path:
        return self.job.out_dir / INDEX_NAME

    @property
    def valid_index_path(self) -> Path:
        return self.job.out_dir / VALID_DIR / INDEX_NAME

    def sources_line(self) -> str:
        """What was read: the file count and layout, then one line per thing left out or mapped."""
        first = f"{self.source_files} source files from {escape_path(self.job.input)} (layout {self.layout})"
        return "\n".join([first, *self.import_lines])

    def summary(self) -> str:
        """The report `xlsr shard` prints: totals, hours table, skipped files; or the task's share."""
        if self.task is not None:
            t = self.task
            return (
                f"task {t.task_index}/{t.num_tasks}: {len(t.assigned)} shard(s) "
                f"({t.written} written, {t.already_complete} already complete); "
                f"{INDEX_NAME} is written after all tasks (by the --slurm merge job, or a run without "
                "--num-tasks)"
            )
        assert self.index is not None
        index = escape_path(self.index_path)
        lines = [*self._totals_lines(), *self._skipped_lines(), *self._valid_lines(), f"index: {index}"]
        return "\n".join(lines)

    def _valid_lines(self) -> list[str]:
        """The held-out set: its size, training against held-out audio per stream, its skipped files."""
        valid, index = self.valid_index, self.index
        if valid is None or index is None:
            return []
        totals, count = valid["totals"], valid["skipped"]["count"]
        path = escape_path(self.valid_index_path)
        lines = [
            f"held out (--valid-seconds {self.job.valid_seconds:g}): {totals['samples']} samples, "
            f"{totals['seconds']:.1f} s in {len(valid['shards'])} shard(s) -> {path}",
            format_split_table(index, valid),
        ]
        if count:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in valid["skipped"]["by_reason"].items())
            tsv = escape_path(self.job.out_dir / VALID_DIR / SKIPPED_NAME)
            lines.append(f"held out but skipped: {count} files ({reasons}) -> {tsv}")
        return lines

    def _totals_lines(self) -> list[str]:
        index, job = self.index, self.job
        assert index is not None
        totals = index["totals"]
        hours = totals["seconds"] / 3600
        lines = [f"{totals['samples']} samples, {hours:.3f} h in {len(index['shards'])} shard(s)"]
        try:
            lines.append(format_hours_table(index, job.language_alpha, job.corpus_alpha))
        except ValueError as exc:  # a bad alpha must not hide that the shards were written
            lines.append(f"(no upsampling table: {exc})")
        return lines

    def _skipped_lines(self) -> list[str]:
        assert self.index is not None
        skipped = self.index["skipped"]
        reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped["by_reason"].items())
        suffix = f" ({reasons})" if reasons else ""
        tsv = escape_path(self.job.out_dir / SKIPPED_NAME)
        lines = [f"skipped {skipped['count']} files{suffix} -> {tsv}"]
        # The rows are escaped as in skipped.tsv, so any file name prints, and prints as listed there.
        lines += [f"  {row['path']}\t{row['reason']}" for row in self.skipped[:MAX_LISTED_SKIPS]]
        if len(self.skipped) > MAX_LISTED_SKIPS:
            lines.append("  ...")
        return lines


def check_input(job: ShardJob) -> None:
    """Raise `ShardError` unless the job's input exists (also worth checking before queueing a job)."""
    if not job.input.exists():
        raise ShardError(f"input not found: {escape_path(job.input)}")


def check_output_dir(job: ShardJob) -> None:
    """Raise `ShardError` unless the output directory exists or can be created, and is writable.

    Checked before the (possibly long) planning, without creating anything: the nearest existing
    ancestor must be a directory this user may write to.
    """
    out_dir = job.out_dir.absolute()
    existing = next(p for p in (out_dir, *out_dir.parents) if os.path.lexists(p))
    if existing == out_dir:
        problem = f"output directory {escape_path(job.out_dir)}"
    else:
        problem = f"cannot create output directory {escape_path(job.out_dir)}: {escape_path(existing)}"
    if not existing.is_dir():
        raise ShardError(f"{problem} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ShardError(f"{problem} is not writable")


def load_job_records(job: ShardJob) -> Found:
    """The source files of the job's input, read with its layout (or the detected one); `ShardError`
    when there are none, saying what the layout expects and what was found."""
    check_input(job)
    try:
        return read_corpus(job.input, job.layout, job.import_options())
    except (LayoutError, OSError, ValueError) as exc:
        raise ShardError(str(exc)) from None


def shard(job: ShardJob) -> ShardResult:
    """Write the job's shards (its share of them, for one task of a split run) and, for a whole run,
    the index and skipped.tsv. Resumable: a rerun skips finished shards."""
    check_input(job)
    check_output_dir(job)
    found = load_job_records(job)
    records = found.records
    base = {
        "job": job,
        "layout": found.layout,
        "source_files": len(records),
        "import_lines": tuple(found.summary_lines()),
    }
    valid = None
    if job.valid_seconds > 0:
        records, valid = held_out_split(records, job)
    cfg = job.writer_config()
    written = write_shards(records, cfg, job.task_index, job.num_tasks, job.progress, valid_records=valid)
    if job.num_tasks > 1:
        task = TaskShare(
            task_index=job.task_index,
            num_tasks=job.num_tasks,
            planned=written["planned"],
            assigned=tuple(written["assigned"]),
            written=written["written"],
            already_complete=written["already_complete"],
        )
        return ShardResult(**base, task=task)
    valid_index = read_index(job.out_dir / VALID_DIR).data if valid is not None else None
    skipped = tuple(read_skipped(job.out_dir))
    _require_audio(written, valid_index, job)
    return ShardResult(**base, index=written, skipped=skipped, valid_index=valid_index)


def _require_audio(index: dict[str, Any], valid_index: dict[str, Any] | None, job: ShardJob) -> None:
    """A set in which every file was skipped is an error naming the skipped list, not a success."""
    samples = index["totals"]["samples"] + (valid_index["totals"]["samples"] if valid_index else 0)
    if samples:
        return
    skipped = index["skipped"]
    reasons = ", ".join(f"{reason}: {n}" for reason, n in skipped["by_reason"].items())
    raise ShardError(
        f"no usable audio: all {skipped['count']} source files were skipped ({reasons}); "
        f"see {escape_path(job.out_dir / SKIPPED_NAME)}"
    )


def held_out_split(
    records: list[SourceRecord], job: ShardJob
) -> tuple[list[SourceRecord], list[SourceRecord]]:
    """(training records, held-out records) by the rule of `sharding.split`; the durations are read
    here (from headers where the layout has none), once, and the plan reuses them."""
    if any(record.corpus == VALID_DIR for record in records):
        raise ShardError(
            f"a corpus named '{VALID_DIR}' cannot be sharded with a held-out set "
            f"(OUT/{VALID_DIR}/ holds that set): choose another --corpus"
        )
    train, valid, _ = split_records(with_durations(records), job.valid_seconds, job.split_root())
    return train, valid


@dataclass(frozen=True)
class StatsResult:
    """Hours and upsampling shares of one or more shard indexes (one mixture), and the plot written."""

    index_path: Path  # the first index
    index: dict[str, Any]  # the first index's object; `combined_index` of all of them for several
    hours: dict[tuple[str, str], float]  # (corpus, language) -> hours the model can see
    probabilities: dict[tuple[str, str], float] = field(default_factory=dict)  # empty without audio
    table: str = ""
    plot: Path | None = None
    valid_index_path: Path | None = None  # a held-out set next to an index (OUT/valid/index.json)
    valid_index: dict[str, Any] | None = None
    split_table: str = ""  # training against held-out audio per stream, for each held-out set
    index_paths: tuple[Path, ...] = ()  # every index read


def stats(
    index_path: str | os.PathLike | Sequence[str | os.PathLike],
    language_alpha: float = 0.5,
    corpus_alpha: float = 0.5,
    plot: str | os.PathLike | None = None,
    crop_seconds: float = DEFAULT_CROP_SECONDS,
) -> StatsResult:
    """Hours per stream before and after upsampling, for one index or the mixture of several; with
    `plot`, also a bar chart written there (nothing is plotted without shards). A held-out set next to
    an index (`OUT/valid/index.json`, `xlsr shard --valid-seconds`) is read too, and compared per
    stream. Hours count what a model cropping every utterance to `crop_seconds` can see."""
    paths = [index_path] if isinstance(index_path, str | os.PathLike) else list(index_path)
    if not paths:
        raise ShardError("give at least one index")
    indexes = [read_index(path) for path in paths]
    data = indexes[0].data if len(indexes) == 1 else combined_index([i.data for i in indexes])
    if not math.isfinite(crop_seconds) or crop_seconds <= 0:
        raise ShardError(f"the crop must be a positive number of seconds, got {crop_seconds}")
    hours = stream_hours(data, crop_seconds)
    try:
        table = format_hours_table(data, language_alpha, corpus_alpha, crop_seconds)
        has_audio = sum(hours.values()) > 0
        probabilities = upsampling_probabilities(hours, language_alpha, corpus_alpha) if has_audio else {}
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    written = None
    if plot is not None and data["shards"]:
        try:
            written = plot_hours(data, plot, language_alpha, corpus_alpha, crop_seconds)
        except OSError as exc:  # name the plot, not the temporary file next to it
            raise ShardError(f"cannot write the plot {escape_path(plot)}: {_os_reason(exc, plot)}") from None
    held_out = [(index, read_index(v)) for index in indexes if (v := _valid_path(index.path)).is_file()]
    split_table = "\n\n".join(
        (f"{escape_path(index.path)}:\n" if len(indexes) > 1 else "")
        + format_split_table(index.data, valid.data)
        for index, valid in held_out
    )
    first_valid = held_out[0][1] if held_out else None
    return StatsResult(
        indexes[0].path,
        data,
        hours,
        probabilities,
        table,
        written,
        first_valid.path if first_valid else None,
        first_valid.data if first_valid else None,
        split_table,
        tuple(index.path for index in indexes),
    )


def _valid_path(index_path: Path) -> Path:
    return index_path.parent / VALID_DIR / INDEX_NAME


def _os_reason(exc: OSError, path: str | os.PathLike) -> str:
    """The OS error, with the file it concerns unless that is `path` or its temporary sibling."""
    reason = exc.strerror or str(exc)
    culprit = exc.filename
    if culprit is not None and os.path.dirname(os.fspath(culprit)) != os.path.dirname(os.fspath(path)):
        reason += f": {escape_path(culprit)}"
    return reason
