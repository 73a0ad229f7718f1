"""Read a shard index and summarise it: hours per stream, upsampling shares, a bar chart."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from xlsr.data.upsampling import format_probability_table, upsampling_probabilities

INDEX_NAME = "index.json"


def load_index(path: str | os.PathLike) -> dict[str, Any]:
    """The index written by `xlsr shard`; `path` is the index file or the directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no shard index at {path} (run `xlsr shard INPUT OUT_DIR` first)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid JSON index ({exc})") from None
    if not isinstance(index, dict) or index.get("version") != 1 or not isinstance(index.get("shards"), list):
        raise ValueError(f"{path}: not a version-1 shard index (expected 'version': 1 and a 'shards' list)")
    for position, shard in enumerate(index["shards"]):
        missing = [k for k in ("path", "corpus", "language", "samples", "seconds") if k not in shard]
        if missing:
            raise ValueError(f"{path}: shards[{position}] lacks {', '.join(missing)}")
    return index


def stream_hours(index: dict[str, Any]) -> dict[tuple[str, str], float]:
    """Hours of audio per (corpus, language) stream."""
    hours: dict[tuple[str, str], float] = defaultdict(float)
    for shard in index["shards"]:
        hours[(shard["corpus"], shard["language"])] += shard["seconds"] / 3600.0
    return dict(hours)


def format_hours_table(index: dict[str, Any], language_alpha: float = 0.5, corpus_alpha: float = 0.5) -> str:
    """Hours and share per stream, naturally and after XLS-R upsampling (spec §3.5)."""
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
    return _save_atomically(figure, Path(out_png))


def _save_atomically(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
