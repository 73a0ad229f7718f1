"""VoxLingua107 as its per-language zips extract: `<language>/<video>__U__S<n>---<start>-<end>.wav`.

Every language zip (`<code>.zip`) holds one folder of 16 kHz wav segments cut from YouTube videos,
unzipped into ROOT or into `ROOT/train/`; the development set (`dev.zip`) extracts to `dev/<code>/`,
and is kept out unless `--include-splits dev`. Codes are YouTube's ISO 639-1 codes, some deprecated
(`iw` -> `he`, `jw` -> `jv`), and a few ISO 639-3 ones (`ceb`, `haw`, `sco`, `war`). Segments of one
video stay together in the held-out split (the video id is the group).

ROOT is the folder holding the language folders (or `train/`, and maybe `dev/`); keys use
`<code>/<file>` (`dev/<code>/<file>` for the development set).
"""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, relative

SEGMENT_MARK = "__U__S"
DEV = "dev"
TRAIN = "train"  # where speechbrain's recipe unzips the language zips


class VoxLinguaLayout:
    name = "voxlingua107"
    default_corpus = "voxlingua107"
    tree = "ROOT/[train/]<code>/<video>__U__S<n>---<start>-<end>.wav [+ ROOT/dev/<code>/...]"

    def detect(self, root: Path) -> str | None:
        for folder in (root, root / TRAIN):
            for language_dir in child_dirs(folder)[:20]:
                if any(SEGMENT_MARK in p.name for p in _first_files(language_dir)):
                    return f"VoxLingua107 segment names in {language_dir.relative_to(root).as_posix()}/"
        return None

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        train = root / TRAIN if os.path.isdir(root / TRAIN) else root
        dev_languages = child_dirs(root / DEV)
        if not options.includes(DEV):
            found.excluded_splits[DEV] += sum(len(found.audio_files(d, "*")) for d in dev_languages)
        folders = [d for d in child_dirs(train) if d.name != DEV]
        for folder in folders + (dev_languages if options.includes(DEV) else []):
            for path in found.audio_files(folder, "*"):
                video = path.name.split(SEGMENT_MARK, 1)[0]
                speaker = f"video-{video}" if SEGMENT_MARK in path.name else None
                base = root if folder.parent.name == DEV else train
                found.record(path, relative(path, base), folder.name, corpus, speaker=speaker)
        return found


def _first_files(directory: Path, limit: int = 5) -> list[Path]:
    files = []
    try:
        for path in directory.iterdir():
            if os.path.isfile(path):
                files.append(path)
                if len(files) >= limit:
                    break
    except OSError:  # an unreadable folder (lost+found) is not a corpus
        pass
    return files
