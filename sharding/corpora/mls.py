"""Multilingual LibriSpeech (OpenSLR 94) as its tarballs extract: `mls_<language>[_opus]/`.

Each release folder holds `{train,dev,test}/audio/<speaker>/<book>/<speaker>_<book>_<n>.{flac,opus}`
and `{split}/transcripts.txt` (`<utterance id><TAB><text>`). The language is the folder name
(`mls_german`, `mls_polish_opus` -> `de`, `pl`). Only `train` is imported unless `--include-splits`
names `dev` or `test`. Where the flac and the opus release of one language are both present, the flac
one is read: they hold the same audio.

ROOT is the folder holding `mls_*` folders, or one of them; keys use `mls_<language>[_opus]/<split>/...`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, read_text_lines, relative
from sharding.languages import canonical_tag

PREFIX = "mls_"
SPLITS = ("train", "dev", "test")
OPUS_SUFFIX = "_opus"


class MLSLayout:
    name = "mls"
    default_corpus = "mls"
    tree = "[ROOT/]mls_<language>[_opus]/{train,dev,test}/audio/<speaker>/<book>/*.{flac,opus}"

    def detect(self, root: Path) -> str | None:
        releases = release_dirs(root)
        if not releases:
            return None
        return "MLS release folders " + ", ".join(d.name for d in releases[:3])

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        releases = release_dirs(root)
        base = root.parent if releases == [root] else root
        for release in _one_release_per_language(releases, found):
            language = release.name.removeprefix(PREFIX).removesuffix(OPUS_SUFFIX)
            for split in SPLITS:
                if split != "train" and not options.includes(split):
                    found.excluded_splits[split] += len(found.audio_files(release / split / "audio", "*/*/*"))
                    continue
                texts = _transcripts(release / split / "transcripts.txt")
                for path in found.audio_files(release / split / "audio", "*/*/*"):
                    found.record(
                        path,
                        relative(path, base),
                        language,
                        corpus,
                        speaker=path.parent.parent.name,
                        text=texts.get(path.stem),
                    )
        return found


def release_dirs(root: Path) -> list[Path]:
    if root.name.startswith(PREFIX) and any(os.path.isdir(root / split) for split in SPLITS):
        return [root]
    return [d for d in child_dirs(root) if d.name.startswith(PREFIX)]


def _one_release_per_language(releases: list[Path], found: Found) -> list[Path]:
    """The flac release of a language where both it and the opus one are present."""
    by_language: dict[str | None, list[Path]] = {}
    for release in releases:
        name = release.name.removeprefix(PREFIX)
        by_language.setdefault(canonical_tag(name) or name, []).append(release)
    chosen = []
    for group in by_language.values():
        group.sort(key=lambda d: (d.name.endswith(OPUS_SUFFIX), d.name))
        chosen.append(group[0])
        for other in group[1:]:
            found.notes.append(f"{other.name}/ not read: {group[0].name}/ holds the same audio")
    return sorted(chosen)


def _transcripts(path: Path) -> dict[str, str]:
    if not os.path.isfile(path):
        return {}
    texts = {}
    for line in read_text_lines(path):
        utterance, _, text = line.partition("\t")
        if text.strip():
            texts[utterance.strip()] = text.strip()
    return texts
