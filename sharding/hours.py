"""Summaries of a shard index: hours per stream, shares before and after upsampling, a bar chart.

Upsampling shares are computed, as in training, from the hours the model can see: every utterance
counts at most `crop_seconds` (training's `data.max_sample_size`; XLS-R's recipes crop to 20 s). The
stored hours are shown beside them. Several indexes are summarised as one mixture by passing an
index object whose `shards` list holds all of their entries (`combined_index`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from xlsr.data.shard_format import ShardInfo, visible_seconds
from xlsr.data.upsampling import format_probability_table, upsampling_probabilities
from xlsr.fileio import atomic_write_with

# XLS-R's crop, data.max_sample_size = 320000 samples at 16 kHz (configs/xlsr_*.yaml).
DEFAULT_CROP_SECONDS = 20.0


def combined_index(indexes: list[dict[str, Any]]) -> dict[str, Any]:
    """One index object listing the shards of all of `indexes` (for the mixture's tables)."""
    return {"shards": [entry for index in indexes for entry in index["shards"]]}


def stream_hours(index: dict[str, Any], crop_seconds: float | None = None) -> dict[tuple[str, str], float]:
    """Hours of audio per (corpus, language) stream: stored, or with `crop_seconds` those the model
    can see (each utterance at most that long)."""
    hours: dict[tuple[str, str], float] = defaultdict(float)
    for entry in index["shards"]:
        seconds = entry["seconds"] if crop_seconds is None else visible_seconds(_info(entry), crop_seconds)
        hours[(entry["corpus"], entry["language"])] += seconds / 3600.0
    return dict(hours)


def _info(entry: dict[str, Any]) -> ShardInfo:
    lengths = entry.get("lengths")
    return ShardInfo(
        entry["path"],
        entry["corpus"],
        entry["language"],
        int(entry["samples"]),
        float(entry["seconds"]),
        entry.get("keys_digest"),
        tuple(tuple(row) for row in lengths) if lengths is not None else None,
    )


def format_hours_table(
    index: dict[str, Any],
    language_alpha: float = 0.5,
    corpus_alpha: float = 0.5,
    crop_seconds: float = DEFAULT_CROP_SECONDS,
) -> str:
    """Hours and share per stream, naturally and after XLS-R upsampling (`xlsr.data.upsampling`)."""
    hours = stream_hours(index, crop_seconds)
    if not hours or sum(hours.values()) <= 0:
        return "(the index holds no audio)"
    probs = upsampling_probabilities(hours, language_alpha, corpus_alpha)
    title = (
        f"upsampling: language_alpha={language_alpha}, corpus_alpha={corpus_alpha}; hours: what a model "
        f"cropping to {crop_seconds:g} s sees; x: passes over a stream per pass over the mixture"
    )
    return title + "\n" + format_probability_table(hours, probs, stream_hours(index))


def language_hours_before_after(
    index: dict[str, Any],
    language_alpha: float = 0.5,
    corpus_alpha: float = 0.5,
    crop_seconds: float = DEFAULT_CROP_SECONDS,
) -> dict[str, tuple[float, float]]:
    """Per language, pooled over corpora: (natural hours, hours it would get when sampling the same
    total with upsampling), in hours the model can see."""
    hours = stream_hours(index, crop_seconds)
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
    index: dict[str, Any],
    out_png: str | os.PathLike,
    language_alpha: float = 0.5,
    corpus_alpha: float = 0.5,
    crop_seconds: float = DEFAULT_CROP_SECONDS,
) -> Path:
    """Bar chart of hours per language (pooled over corpora) before and after upsampling (log scale),
    written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    per_language = language_hours_before_after(index, language_alpha, corpus_alpha, crop_seconds)
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
    keys = sorted(set(train_hours) | set(valid_hours))
    corpus_width = max([14, *(len(key[0]) + 2 for key in keys)])
    language_width = max([10, *(len(key[1]) + 2 for key in keys)])
    header = (
        f"{'corpus':<{corpus_width}}{'language':<{language_width}}"
        f"{'train h':>10}{'valid h':>10}{'valid s':>10}{'valid %':>9}"
    )
    lines = ["training and held-out (valid) audio per stream", header, "-" * len(header)]
    for corpus, language in keys:
        kept, held = train_hours.get((corpus, language), 0.0), valid_hours.get((corpus, language), 0.0)
        lines.append(f"{corpus:<{corpus_width}}{language:<{language_width}}" + _split_columns(kept, held))
    lines.append("-" * len(header))
    totals = _split_columns(sum(train_hours.values()), sum(valid_hours.values()))
    lines.append(f"{'total':<{corpus_width + language_width}}" + totals)
    return "\n".join(lines)


def _split_columns(kept: float, held: float) -> str:
    share = 100 * held / (kept + held) if kept + held > 0 else 0.0
    note = "  (no training audio)" if kept <= 0 else "  (nothing held out)" if held <= 0 else ""
    return f"{kept:>10.3f}{held:>10.3f}{3600 * held:>10.1f}{share:>8.1f}%{note}"
