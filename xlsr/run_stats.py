"""`xlsr stats --run RUN_DIR`: what a run drew per (corpus, language) against the upsampling target,
from its ``summary.json`` (``data.streams``, written by the trainer at exit)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr.data.shard_format import escape_path
from xlsr.process import UserError
from xlsr.run_dir import SUMMARY_NAME, read_json_object


class RunStatsError(UserError):
    pass


@dataclass(frozen=True)
class RunStatsResult:
    """What a finished run drew per (corpus, language), from its ``summary.json``."""

    summary_path: Path
    streams: list[dict[str, Any]]  # summary["data"]["streams"]
    table: str


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / SUMMARY_NAME).is_file()


def stats_of_run(run_dir: str | os.PathLike) -> RunStatsResult:
    """Realised against target share of the sampled audio per stream, for a run directory."""
    path = Path(run_dir) / SUMMARY_NAME
    if not path.is_file():
        raise RunStatsError(
            f"{escape_path(path)} not found: pass the run directory of a finished `xlsr train`"
        )
    summary = read_json_object(path)
    if summary is None:
        raise RunStatsError(f"cannot read {escape_path(path)}: not a JSON object")
    streams = (summary.get("data") or {}).get("streams")
    if not isinstance(streams, list) or not streams:
        raise RunStatsError(f"{escape_path(path)} has no data.streams (the run logged no interval yet?)")
    return RunStatsResult(path, streams, format_realised_table(streams))


def format_realised_table(streams: list[dict[str, Any]]) -> str:
    """What a run drew per stream (``summary["data"]["streams"]``) against the upsampling target.
    Shares and ``seen h`` count the audio the model saw (each draw cropped to data.max_sample_size);
    ``stored h`` the whole utterances drawn (absent in summaries of older runs)."""
    corpus_width = max([14, *(len(row["corpus"]) + 2 for row in streams)])
    language_width = max([10, *(len(row["language"]) + 2 for row in streams)])
    names = corpus_width + language_width
    header = (
        f"{'corpus':<{corpus_width}}{'language':<{language_width}}{'target %':>10}{'realised %':>12}{'x':>7}"
        f"{'seen h':>11}{'stored h':>11}{'utterances':>12}{'passes':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in sorted(streams, key=lambda r: (-r["target_share"], r["corpus"], r["language"])):
        target, realised = row["target_share"], row["realised_share"]
        ratio = f"{realised / target:>7.2f}" if target > 0 else f"{'-':>7}"
        name = f"{row['corpus']:<{corpus_width}}{row['language']:<{language_width}}"
        lines.append(
            f"{name}{100 * target:>9.2f}%{100 * realised:>11.2f}%{ratio}"
            f"{row['hours_drawn']:>11.3f}{_stored(row):>11}{row['utterances']:>12}{row['passes']:>9.2f}"
        )
    lines.append("-" * len(header))
    hours = sum(row["hours_drawn"] for row in streams)
    stored = sum(row.get("stored_hours_drawn", 0.0) for row in streams)
    utterances = sum(row["utterances"] for row in streams)
    lines.append(
        f"{'total':<{names}}{100.0:>9.2f}%{100.0:>11.2f}%{'':>7}{hours:>11.3f}{stored:>11.3f}{utterances:>12}"
    )
    return "\n".join(lines)


def _stored(row: dict[str, Any]) -> str:
    stored = row.get("stored_hours_drawn")
    return f"{stored:.3f}" if isinstance(stored, int | float) else "-"
