"""VoxPopuli unlabelled audio as the official scripts download it (facebookresearch/voxpopuli).

`python -m voxpopuli.download_audios --root ROOT` writes whole plenary sessions to
`ROOT/raw_audios/<language>/<year>/<session>.ogg` (often hours long); `python -m
voxpopuli.get_unlabelled_data --root ROOT` cuts them into `ROOT/unlabelled_data/<language>/<year>/
<session>_<n>.ogg`. Both hold the same speech, so one is read, never both: `unlabelled_data` when the
download root has it (what XLS-R trained on), else `raw_audios`. Long sessions are cut at pauses at
shard time (`--max-seconds`). Segments of one session stay together in the held-out split.

ROOT is the download root, `raw_audios/` or `unlabelled_data/`; keys use the path from that folder's
name down (`raw_audios/fr/2019/<session>.ogg`), the same whichever is passed.
"""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, relative

SEGMENTED = "unlabelled_data"
SESSIONS = "raw_audios"
UNTRANSLATED = "original"  # raw_audios/original/<year>/*_original.ogg, fetched by `--subset asr`


class VoxPopuliLayout:
    name = "voxpopuli"
    default_corpus = "voxpopuli"
    tree = "[ROOT/]{unlabelled_data,raw_audios}/<language>/<year>/*.ogg (the download root, or either folder)"

    def detect(self, root: Path) -> str | None:
        if root.name in (SEGMENTED, SESSIONS):
            return f"a VoxPopuli {root.name}/ folder"
        present = [name for name in (SEGMENTED, SESSIONS) if os.path.isdir(root / name)]
        return f"VoxPopuli download root ({', '.join(p + '/' for p in present)})" if present else None

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        audio_root = root if root.name in (SEGMENTED, SESSIONS) else _chosen_folder(root, found)
        if audio_root is None:
            return found
        for language_dir in child_dirs(audio_root):
            if language_dir.name == UNTRANSLATED:
                found.notes.append(
                    f"{audio_root.name}/{UNTRANSLATED}/ not read: sessions of the ASR subset in their "
                    "speakers' mixed languages (no one language to name them by)"
                )
                continue
            for path in found.audio_files(language_dir, "*/*"):
                session = path.stem.rsplit("_", 1)[0] if audio_root.name == SEGMENTED else path.stem
                found.record(
                    path,
                    relative(path, audio_root.parent),
                    language_dir.name,
                    corpus,
                    speaker=f"session-{session}",
                )
        return found


def _chosen_folder(root: Path, found: Found) -> Path | None:
    if os.path.isdir(root / SEGMENTED):
        if os.path.isdir(root / SESSIONS):
            found.notes.append(
                f"read {SEGMENTED}/ only: {SESSIONS}/ holds the same sessions uncut "
                f"(pass ROOT/{SESSIONS} to read those instead)"
            )
        return root / SEGMENTED
    return root / SESSIONS if os.path.isdir(root / SESSIONS) else None
