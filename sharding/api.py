"""The typed entry points of the sharding package: `shard(ShardJob)` and `stats(index_path, ...)`.

Both raise instead of printing: `ShardError` for a user error (bad input path, manifest, option),
`ShardIndexError` for a missing or malformed index, `RuntimeError` when planned shards are missing
after a split run. Command lines (`xlsr shard`, `xlsr stats`), the demo and SLURM array tasks call
these functions and decide what to print.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharding.hours import format_hours_table, format_realised_table, plot_hours, stream_hours
from sharding.manifest import SourceRecord, load_records
from sharding.writer import SKIPPED_NAME, ShardWriterConfig, read_skipped, write_shards
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
    layout: str | None = None  # None: "manifest" for a file, "dir" for a directory
    corpus: str | None = None  # None: the layout's default name
    workers: int = 1
    shard_size_bytes: int = 10**9
    audio_format: str = "flac"
    max_seconds: float | None = None
    min_seconds: float = 0.25
    drop_silent: bool = False
    seed: int = 0
    task_index: int = 0
    num_tasks: int = 1
    language_alpha: float = 0.5  # for the hours table only
    corpus_alpha: float = 0.5
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", Path(self.input))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.num_tasks < 1 or not 0 <= self.task_index < self.num_tasks:
            raise ShardError(
                f"task_index must lie in [0, num_tasks), got task {self.task_index} of {self.num_tasks}"
            )
        self.writer_config()  # checks the output settings

    def writer_config(self) -> ShardWriterConfig:
        try:
            return ShardWriterConfig(
                out_dir=self.out_dir,
                shard_size_bytes=self.shard_size_bytes,
                audio_format=self.audio_format,  # checked by the config
                max_seconds=self.max_seconds,
                min_seconds=self.min_seconds,
                drop_silent=self.drop_silent,
                workers=self.workers,
                seed=self.seed,
            )
        except ValueError as exc:
            raise ShardError(str(exc)) from None

    def resolved_layout(self) -> str:
        return self.layout or ("manifest" if self.input.is_file() else "dir")


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
    index: dict[str, Any] | None = None
    task: TaskShare | None = None
    skipped: tuple[dict[str, str], ...] = ()  # rows of skipped.tsv (complete runs only)

    @property
    def index_path(self) -> Path:
        return self.job.out_dir / INDEX_NAME

    def sources_line(self) -> str:
        return f"{self.source_files} source files from {escape_path(self.job.input)} (layout {self.layout})"

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
        return "\n".join([*self._totals_lines(), *self._skipped_lines(), f"index: {index}"])

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


def load_job_records(job: ShardJob) -> list[SourceRecord]:
    """The source files of the job's input, read with its layout; `ShardError` if there are none."""
    check_input(job)
    layout = job.resolved_layout()
    try:
        records = load_records(job.input, layout, job.corpus)
    except (OSError, ValueError) as exc:
        raise ShardError(str(exc)) from None
    if not records:
        raise ShardError(f"no audio files found in {escape_path(job.input)} with --layout {layout}")
    return records


def shard(job: ShardJob) -> ShardResult:
    """Write the job's shards (its share of them, for one task of a split run) and, for a whole run,
    the index and skipped.tsv. Resumable: a rerun skips finished shards."""
    check_input(job)
    check_output_dir(job)
    records = load_job_records(job)
    written = write_shards(records, job.writer_config(), job.task_index, job.num_tasks, job.progress)
    base = {"job": job, "layout": job.resolved_layout(), "source_files": len(records)}
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
    return ShardResult(**base, index=written, skipped=tuple(read_skipped(job.out_dir)))


@dataclass(frozen=True)
class StatsResult:
    """Hours and upsampling shares of a shard index, and the plot written (if any)."""

    index_path: Path
    index: dict[str, Any]
    hours: dict[tuple[str, str], float]  # (corpus, language) -> hours of audio
    probabilities: dict[tuple[str, str], float] = field(default_factory=dict)  # empty without audio
    table: str = ""
    plot: Path | None = None


def stats(
    index_path: str | os.PathLike,
    language_alpha: float = 0.5,
    corpus_alpha: float = 0.5,
    plot: str | os.PathLike | None = None,
) -> StatsResult:
    """Hours per stream before and after upsampling; with `plot`, also a bar chart written there
    (nothing is plotted for an index without shards)."""
    index = read_index(index_path)
    hours = stream_hours(index.data)
    try:
        table = format_hours_table(index.data, language_alpha, corpus_alpha)
        has_audio = sum(hours.values()) > 0
        probabilities = upsampling_probabilities(hours, language_alpha, corpus_alpha) if has_audio else {}
    except ValueError as exc:
        raise ShardError(str(exc)) from None
    written = None
    if plot is not None and index.shards:
        try:
            written = plot_hours(index.data, plot, language_alpha, corpus_alpha)
        except OSError as exc:  # name the plot, not the temporary file next to it
            raise ShardError(f"cannot write the plot {escape_path(plot)}: {_os_reason(exc, plot)}") from None
    return StatsResult(index.path, index.data, hours, probabilities, table, written)


SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class RunStatsResult:
    """What a finished run drew per (corpus, language), from its ``summary.json``."""

    summary_path: Path
    streams: list[dict[str, Any]]  # summary["data"]["streams"]
    table: str


def stats_of_run(run_dir: str | os.PathLike) -> RunStatsResult:
    """Realised against target share of the sampled audio per stream, for a run directory written by
    ``xlsr train`` (its ``summary.json``, ``data.streams``)."""
    path = Path(run_dir) / SUMMARY_NAME
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(
            f"{escape_path(path)} not found: pass the run directory of a finished `xlsr train`"
        ) from None
    except (OSError, ValueError) as exc:
        raise ShardError(f"cannot read {escape_path(path)}: {exc}") from None
    streams = summary.get("data", {}).get("streams") if isinstance(summary, dict) else None
    if not isinstance(streams, list) or not streams:
        raise ShardError(f"{escape_path(path)} has no data.streams (a run from before per-stream telemetry?)")
    return RunStatsResult(path, streams, format_realised_table(streams))


def _os_reason(exc: OSError, path: str | os.PathLike) -> str:
    """The OS error, with the file it concerns unless that is `path` or its temporary sibling."""
    reason = exc.strerror or str(exc)
    culprit = exc.filename
    if culprit is not None and os.path.dirname(os.fspath(culprit)) != os.path.dirname(os.fspath(path)):
        reason += f": {escape_path(culprit)}"
    return reason
