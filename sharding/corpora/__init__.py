"""Corpus layouts: read a raw corpus as its official download lays it out, or say why not.

`read_corpus(input, layout, options)` returns `Found` (records plus what was left out). Without a
layout, `detect_layout` recognises the corpora by their marks (`validated.tsv`, `mls_*`,
`raw_audios/`, `BABEL_*`, ...) and the result says which it used; a root that fits nothing gets one
line saying what each layout expects, what was found, and, where a folder above or below fits,
which one to pass instead.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from sharding.corpora.babel import BabelLayout
from sharding.corpora.base import (
    AUDIO_SUFFIXES,
    EVALUATION_SPLITS,
    Found,
    ImportOptions,
    Layout,
    child_dirs,
    require_dir,
)
from sharding.corpora.commonvoice import CommonVoiceLayout
from sharding.corpora.directory import DirectoryLayout
from sharding.corpora.fleurs import FleursLayout
from sharding.corpora.mls import MLSLayout
from sharding.corpora.voxlingua import VoxLinguaLayout
from sharding.corpora.voxpopuli import VoxPopuliLayout
from sharding.languages import LanguageNames
from sharding.manifest import read_manifest
from xlsr.data.shard_format import escape_path

# Detection order: the specific corpora first, the generic `dir` layout last.
CORPUS_LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        CommonVoiceLayout(),
        MLSLayout(),
        VoxPopuliLayout(),
        BabelLayout(),
        FleursLayout(),
        VoxLinguaLayout(),
        DirectoryLayout(),
    )
}
MANIFEST = "manifest"
GENERIC = "dir"
MAX_PROBED_FOLDERS = 200
LAYOUTS = (*CORPUS_LAYOUTS, MANIFEST)
MANIFEST_TREE = (
    "a .tsv (header row) or .jsonl file with path and language (corpus, speaker, duration, text, phones)"
)


class LayoutError(ValueError):
    """The input fits no layout, or not the one asked for; the message explains what was expected."""


def read_corpus(input: str | os.PathLike, layout: str | None, options: ImportOptions) -> Found:
    """Records of INPUT read with `layout` (None: detected); LayoutError when it finds no audio."""
    input = Path(os.path.abspath(input))  # `.` has no name, and layouts read folder names
    if os.path.isfile(input) or layout == MANIFEST:
        return _read_manifest(input, options)
    root = require_dir(input)
    if layout is None:
        layout, reason = detect_layout(root)
    elif layout not in CORPUS_LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    else:
        reason = None
    found = CORPUS_LAYOUTS[layout].read(root, options)
    if reason is not None:
        found.notes.insert(0, f"layout {layout} detected: {reason}")
    if not found.records:
        raise LayoutError(no_audio_message(root, layout, found))
    return found


def _read_manifest(path: Path, options: ImportOptions) -> Found:
    names = LanguageNames(dict(options.language_map))
    records = read_manifest(path, default_corpus=options.corpus or "corpus", names=names)
    if not records:
        raise LayoutError(f"{escape_path(path)}: the manifest lists no audio files")
    return Found(MANIFEST, records, names)


def detect_layout(root: Path) -> tuple[str, str]:
    """(layout, why) for the first layout whose marks `root` has; LayoutError for none. A folder that
    holds a known corpus further down is not read as `dir` (its folders would become "languages")."""
    specific = _specific(root)
    if specific is not None:
        return specific
    reason = CORPUS_LAYOUTS[GENERIC].detect(root)
    if reason is None or _corpus_below(root) is not None:
        raise LayoutError(no_layout_message(root))
    return GENERIC, reason


def _specific(root: Path, exclude: str | None = None) -> tuple[str, str] | None:
    """The first corpus layout (not `dir`) whose marks `root` has, with why."""
    for name, layout in CORPUS_LAYOUTS.items():
        if name not in (exclude, GENERIC) and (reason := layout.detect(root)):
            return name, reason
    return None


def _corpus_below(root: Path) -> tuple[Path, str, str] | None:
    """A folder one or two levels below `root` that a corpus layout recognises. At most
    MAX_PROBED_FOLDERS are probed: corpora sit near the top of a download, and on a network
    filesystem every probe is a few directory listings."""
    probed = 0
    for child in child_dirs(root)[:MAX_PROBED_FOLDERS]:
        for folder in (child, *child_dirs(child)[:10]):
            found = _specific(folder)
            if found is not None:
                return folder, *found
            probed += 1
            if probed >= MAX_PROBED_FOLDERS:
                return None
    return None


def no_layout_message(root: Path) -> str:
    hint = _hint(root)
    expected = "; ".join(f"{name}: {layout.tree}" for name, layout in CORPUS_LAYOUTS.items())
    return f"no audio files found in {escape_path(root)}: it fits no corpus layout ({_contents(root)})" + (
        f"; {hint}" if hint else f"; expected one of: {expected}; or a manifest file"
    )


def no_audio_message(root: Path, layout: str, found: Found) -> str:
    """Why `layout` found no audio in `root`, and what would work instead."""
    tree = CORPUS_LAYOUTS[layout].tree
    message = (
        f"no audio files found in {escape_path(root)} with layout {layout} "
        f"(expects {tree}; {_contents(root)})"
    )
    extra = [line for line in found.summary_lines() if "detected" not in line]
    hint = _hint(root, exclude=layout)
    return "; ".join([message, *extra, *([hint] if hint else [])])


def _hint(root: Path, exclude: str | None = None) -> str | None:
    """Where a corpus layout would fit: this folder with another layout, a folder below, or above."""
    here = _specific(root, exclude)
    if here is not None:
        return f"it looks like {here[0]} ({here[1]}): pass --layout {here[0]}"
    below = _corpus_below(root)
    if below is not None:
        folder, name, reason = below
        shown = escape_path(folder.relative_to(root).as_posix())
        return f"found {shown}/ which looks like {name} ({reason}): pass it as ROOT"
    for parent in (root.parent, root.parent.parent):
        above = _specific(parent)
        if above is not None:
            return f"its parent {escape_path(parent)} looks like {above[0]} ({above[1]}): pass that as ROOT"
    flat = [p for p in _files(root) if p.suffix.lower() in AUDIO_SUFFIXES]
    if flat:
        return (
            f"{len(flat)} audio files lie directly in it: the dir layout reads ROOT/<language>/..., so put "
            "them in a folder named by their language, or list them in a manifest (--layout manifest)"
        )
    return None


def _contents(root: Path) -> str:
    folders = [d.name for d in child_dirs(root)]
    suffixes = Counter(p.suffix.lower() or "(none)" for p in _files(root))
    shown = ", ".join(escape_path(name) + "/" for name in folders[:5]) + (", ..." if len(folders) > 5 else "")
    files = ", ".join(f"{n} {suffix}" for suffix, n in suffixes.most_common(4))
    return f"found {len(folders)} folder(s){': ' + shown if shown else ''}, files: {files or 'none'}"


def _files(root: Path) -> list[Path]:
    try:
        return [p for p in root.iterdir() if os.path.isfile(p) and not p.name.startswith(".")]
    except OSError:
        return []


__all__ = [
    "CORPUS_LAYOUTS",
    "EVALUATION_SPLITS",
    "LAYOUTS",
    "Found",
    "ImportOptions",
    "LayoutError",
    "detect_layout",
    "read_corpus",
]
