"""The `dir` layout: `ROOT/<language>/**/<audio>`, the first directory level naming the language."""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import AUDIO_SUFFIXES, Found, ImportOptions, child_dirs, relative

# First-level folders with these names are splits of some corpus (MLS's train/dev/test, ...), and
# reading them as languages would train on evaluation audio.
SPLIT_NAMES = frozenset({"train", "dev", "test", "eval", "valid", "validation", "training"})


class DirectoryLayout:
    name = "dir"
    default_corpus = "corpus"
    tree = "ROOT/<language>/**/*.{wav,flac,mp3,ogg,opus,sph,...}  (the first level names the language)"

    def detect(self, root: Path) -> str | None:
        with_audio = [d.name for d in child_dirs(root) if _has_audio(d)]
        if not with_audio:
            return None
        shown = ", ".join(with_audio[:4]) + (", ..." if len(with_audio) > 4 else "")
        return f"audio in language folders ({shown})"

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        splits = [d.name for d in child_dirs(root) if d.name.lower() in SPLIT_NAMES]
        if splits:
            raise ValueError(
                f"{root}: the dir layout reads ROOT/<language>/..., but {', '.join(splits)}/ "
                "name splits, not languages: pass the corpus's layout (--layout), or a manifest"
            )
        for language_dir in child_dirs(root):
            for path in found.audio_files(language_dir):
                found.record(path, relative(path, root), language_dir.name, corpus)
        return found


def _has_audio(directory: Path) -> bool:
    return any(p.suffix.lower() in AUDIO_SUFFIXES and os.path.isfile(p) for p in directory.rglob("*"))
