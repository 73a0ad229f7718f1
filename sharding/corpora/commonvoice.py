"""Common Voice as Mozilla's release tarball extracts: `cv-corpus-<version>-<date>/<language>/`.

Each language folder holds `clips/*.mp3` and TSV lists: `validated.tsv` (every clip with enough up
votes, *including* the clips of `dev.tsv` and `test.tsv`), `train.tsv`, `dev.tsv`, `test.tsv`,
`other.tsv` (not yet validated), `invalidated.tsv`, and in newer releases `clip_durations.tsv`
(milliseconds). Pretraining audio is `validated.tsv` minus the dev and test clips, so a model
fine-tuned and tested on Common Voice was never pretrained on its test audio; `--include-splits dev,test`
puts them back, `--include-unvalidated` adds `other.tsv` (unlabelled audio is fine for SSL).

ROOT may be one language folder, a release folder, or the folder above one release. Keys use
`<language>/clips/<clip>`, the same whichever of these is passed.
"""

from __future__ import annotations

import os
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, read_tsv_dicts

LIST_NAME = "validated.tsv"
EVALUATION_LISTS = {"dev": "dev.tsv", "test": "test.tsv"}
UNVALIDATED_LIST = "other.tsv"


class CommonVoiceLayout:
    name = "commonvoice"
    default_corpus = "commonvoice"
    tree = (
        "[cv-corpus-<version>/]<language>/{validated,dev,test,other}.tsv + clips/*.mp3 "
        "(a language folder, a release folder, or the folder above one release)"
    )

    def detect(self, root: Path) -> str | None:
        try:
            languages = language_dirs(root)
        except ValueError:
            return "several Common Voice releases"
        if not languages:
            return None
        return f"{LIST_NAME} in {_shown(languages, root)}"

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        for language_dir in language_dirs(root):
            _read_language(found, language_dir, corpus, options)
        return found


def language_dirs(root: Path) -> list[Path]:
    """The language folders under ROOT (see the module docstring); ValueError for several releases."""
    if os.path.isfile(root / LIST_NAME):
        return [root]
    languages = [d for d in child_dirs(root) if os.path.isfile(d / LIST_NAME)]
    if languages:
        return languages
    releases = [d for d in child_dirs(root) if any(os.path.isfile(g / LIST_NAME) for g in child_dirs(d))]
    if len(releases) > 1:
        names = ", ".join(d.name for d in releases)
        raise ValueError(
            f"{root} holds several Common Voice releases ({names}): pass one of them as ROOT "
            "(the same clips would be sharded twice)"
        )
    return [d for d in child_dirs(releases[0]) if os.path.isfile(d / LIST_NAME)] if releases else []


def _read_language(found: Found, language_dir: Path, corpus: str, options: ImportOptions) -> None:
    kept_out: dict[str, str] = {}  # clip -> its evaluation split
    for split, list_name in EVALUATION_LISTS.items():
        if not options.includes(split) and os.path.isfile(language_dir / list_name):
            for _, row in read_tsv_dicts(language_dir / list_name, ("path",)):
                kept_out[row["path"].strip()] = split
    durations = _durations(language_dir / "clip_durations.tsv")
    lists = [LIST_NAME] + ([UNVALIDATED_LIST] if options.include_unvalidated else [])
    seen: set[str] = set()
    for list_name in lists:
        table = language_dir / list_name
        if not os.path.isfile(table):
            continue
        for line_no, row in read_tsv_dicts(table, required=("path",)):
            clip = row["path"].strip()
            if not clip:
                raise ValueError(f"{table}:{line_no}: empty 'path' field")
            if clip in seen:
                continue
            seen.add(clip)
            if clip in kept_out:
                found.excluded_splits[kept_out[clip]] += 1
                continue
            found.record(
                language_dir / "clips" / clip,
                f"{language_dir.name}/clips/{clip}",
                language_dir.name,
                corpus,
                speaker=(row.get("client_id") or "").strip() or None,
                duration=durations.get(clip),
                text=(row.get("sentence") or "").strip() or None,
            )


def _durations(table: Path) -> dict[str, float]:
    if not os.path.isfile(table):
        return {}
    durations = {}
    for _, row in read_tsv_dicts(table, required=("clip", "duration[ms]")):
        try:
            durations[row["clip"]] = float(row["duration[ms]"]) / 1000.0
        except ValueError:
            continue  # a bad duration only costs a header read later
    return durations


def _shown(directories: list[Path], root: Path) -> str:
    names = [d.relative_to(root).as_posix() + "/" if d != root else "ROOT" for d in directories]
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
