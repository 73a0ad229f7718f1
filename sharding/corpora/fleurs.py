"""FLEURS (google/fleurs) as its per-language archives extract: `<language>_<region>/`.

Each language folder holds `audio/{train,dev,test}/<n>.wav` (16 kHz) and `{train,dev,test}.tsv`
without a header: `id, file name, raw transcription, transcription, characters, samples, gender`.
The folder name is the language (`de_de` -> `de`, `cmn_hans_cn` -> `zh`). Only `train` is imported
unless `--include-splits` names `dev` or `test`. The lists name no speaker, so the held-out split
groups by recording.

ROOT is the folder holding the language folders, one of them, or a clone of the Hugging Face repository
(`data/<language_region>/`); keys use `<language_region>/audio/...`. The archives
`audio/<split>.tar.gz` must be extracted in place (into `audio/<split>/`).
"""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, read_text_lines, relative

SPLITS = ("train", "dev", "test")
DATA = "data"
_FILE_NAME, _RAW_TEXT = 1, 2  # columns of the lists


class FleursLayout:
    name = "fleurs"
    default_corpus = "fleurs"
    tree = "[ROOT/]<language>_<region>/{train,dev,test}.tsv + audio/{train,dev,test}/*.wav"

    def detect(self, root: Path) -> str | None:
        languages = language_dirs(root)
        return "FLEURS language folders " + ", ".join(d.name for d in languages[:3]) if languages else None

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        languages = language_dirs(root)
        base = languages[0].parent if languages else root
        for language_dir in languages:
            for split in SPLITS:
                audio = found.audio_files(language_dir / "audio" / split, "*")
                if split != "train" and not options.includes(split):
                    found.excluded_splits[split] += len(audio)
                    continue
                texts = _transcripts(language_dir / f"{split}.tsv")
                for path in audio:
                    found.record(
                        path, relative(path, base), language_dir.name, corpus, text=texts.get(path.name)
                    )
        return found


def _is_language_dir(directory: Path) -> bool:
    return os.path.isdir(directory / "audio") and any(os.path.isfile(directory / f"{s}.tsv") for s in SPLITS)


def language_dirs(root: Path) -> list[Path]:
    if _is_language_dir(root):
        return [root]
    found = [d for d in child_dirs(root) if _is_language_dir(d)]
    if not found and os.path.isdir(root / DATA):  # a clone of the Hugging Face repository: data/<lang>/
        found = [d for d in child_dirs(root / DATA) if _is_language_dir(d)]
    return found


def _transcripts(table: Path) -> dict[str, str]:
    if not os.path.isfile(table):
        return {}
    texts = {}
    for line in read_text_lines(table):
        fields = line.split("\t")
        if len(fields) > _RAW_TEXT and fields[_RAW_TEXT].strip():
            texts[fields[_FILE_NAME].strip()] = fields[_RAW_TEXT].strip()
    return texts
