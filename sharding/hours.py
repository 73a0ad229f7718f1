"""Summaries of a shard index: hours per stream, shares before and after upsampling, a bar chart."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from xlsr.data.upsampling import format_probability_table, upsampling_probabilities
from xlsr.fileio import atomic_write_with


def stream_hours(index: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Hours of audio per (corpus, language) stream."""
    hours: dict[tuple[str, str], float] = defaultdict(float)
    for shard in index["shards"]:
        hours[(shard["corpus"], shard["language"])] += shard["seconds"] / 3600.0
    return dict(hours)


def format_hours_table(index: dict[str, Any], language_alpha: float = 0.5, corpus_alpha: float = 0.5) -> str:
    """Hours and share per stream, naturally and after XLS-R upsampling (`xlsr.data.upsampling`)."""
    hours = stream_hours(index)
    if not hours or sum(hours.values()) <= 0:
        return "(the index holds no audio)"
    probs = upsampling_probabilities(hours, language_alpha, corpus_alpha)
    title = f"upsampling: language_alpha={language_alpha}, corpus_alpha={corpus_alpha}"
    return title + "\n" + format_probability_table(hours, probs)


def language_hours_before_after(
    index: dict[str, Any], language_alpha: float = 0.5, corpus_alpha: float = 0.5
) -> dict[str, tuple[float, float]]:
    """Per language: (natural hours, hours it would get when sampling the same total with upsampling)."""
    hours = stream_hours(index)
    probs = upsampling_probabilities(hours, language_alpha, corpus_alpha)
    total = sum(hours.values())
    result: dict[str, tuple[float, float]] = {}
    for (_, language), amount in hours.items():
        before, after = result.get(language, (0.0, 0.0))
        result[language] = (before + amount, after)
    for (_, language), p in probs.items():
        before, after = result[language]
        result[language] = (before, after + p * total)
    return dict(sorted(result.items(), key=lambda item: (-item[1][0], item[0])))


def plot_hours(
    index: dict[str, Any], out_png: str | os.PathLike, language_alpha: float = 0.5, corpus_alpha: float = 0.5
) -> Path:
    """Bar chart of hours per language before and after upsampling (log scale), written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    per_language = language_hours_before_after(index, language_alpha, corpus_alpha)
    names = list(per_language)
    before = [per_language[n][0] for n in names]
    after = [per_language[n][1] for n in names]
    positions = range(len(names))
    figure = Figure(figsize=(max(6.0, 0.5 * len(names) + 2), 4.0), layout="constrained")
    axes = figure.add_subplot()
    axes.bar([p - 0.2 for p in positions], before, width=0.4, label="natural")
    axes.bar([p + 0.2 for p in positions], after, width=0.4, label="upsampled (same total)")
    axes.set_xticks(list(positions), names, rotation=45 if len(names) > 12 else 0)
    axes.set_yscale("log")
    axes.set_ylabel("hours")
    axes.set_title(f"hours per language (language_alpha={language_alpha}, corpus_alpha={corpus_alpha})")
    axes.legend()
    return atomic_write_with(out_png, lambda handle: figure.savefig(handle, format="png", dpi=100))


def format_split_table(train: dict[str, Any], valid: dict[str, Any]) -> str:
    """Training hours against held-out seconds per stream, for a set sharded with a held-out part."""
    train_hours, valid_hours = stream_hours(train), stream_hours(valid)
    header = f"{'corpus':<14}{'language':<10}{'train h':>10}{'valid h':>10}{'valid s':>10}{'valid %':>9}"
    lines = ["training and held-out (valid) audio per stream", header, "-" * len(header)]
    for corpus, language in sorted(set(train_hours) | set(valid_hours)):
        kept, held = train_hours.get((corpus, language), 0.0), valid_hours.get((corpus, language), 0.0)
        lines.append(f"{corpus:<14}{language:<10}" + _split_columns(kept, held))
    lines.append("-" * len(header))
    lines.append(f"{'total':<24}" + _split_columns(sum(train_hours.values()), sum(valid_hours.values())))
    return "\n".join(lines)


def _split_columns(kept: float, held: float) -> str:
    share = 100 * held / (kept + held) if kept + held > 0 else 0.0
    note = "  (no training audio)" if kept <= 0 else "  (nothing held out)" if held <= 0 else ""
    return f"{kept:>10.3f}{held:>10.3f}{3600 * held:>10.1f}{share:>8.1f}%{note}"
