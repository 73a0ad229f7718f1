"""IARPA BABEL language packs (LDC releases) as extracted: `[IARPA_]BABEL_<phase>_<id>/`.

A pack holds `conversational/{training,untranscribed-training,dev,eval}/audio/*.sph` (some builds
`.wav`) and, in some packs, `scripted/training/audio/*.sph` (8 kHz NIST SPHERE telephone speech,
decoded by libsndfile), with transcripts in `<split>/transcription/<same name>.txt` (`[start]` lines
between text lines). File names are `BABEL_<phase>_<id>_<speaker>_<date>_<time>_<inLine|outLine>.sph`,
one side of a call each: the 5-digit field names the call's speaker, and both sides of a call stay
in one held-out group.
The language comes from the pack id (`LANGUAGE_BY_PACK`, canonicalised like every other name, so
Kurmanji is `ku` as Common Voice's `kmr` is), not from folder names; `--language-map` maps an id
(`202<TAB>sw`) the table lacks. `dev` and `eval`
are kept out unless `--include-splits` names them; `sub-train` (the limited-LP subset of `training`)
is read only when `training` is absent, so no file is read twice.

ROOT is a pack or the folder holding packs; keys use `<pack>/<...>`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sharding.corpora.base import Found, ImportOptions, child_dirs, read_text_lines, relative
from sharding.languages import canonical_tag

# LDC packs extract to IARPA_BABEL_OP1_102/ (Lao: IARPA_Babel_203/, no phase); performers' builds to
# IARPA-babel202b-v1.0d-build/BABEL_OP2_202/.
PACK_RE = re.compile(r"BABEL_(?:(?:BP|OP\d)_)?(\d{3})", re.IGNORECASE)
SPEAKER_RE = re.compile(r"BABEL_(?:(?:BP|OP\d)_)?\d{3}_(\d+)_", re.IGNORECASE)
EVALUATION = {"dev": "dev", "eval": "eval"}
SUBSET_OF_TRAINING = "sub-train"

# BABEL language ids (IARPA BABEL program; LDC catalogue entries LDC2016S02 and later).
LANGUAGE_BY_PACK = {
    "101": "yue", "102": "as", "103": "bn", "104": "ps", "105": "tr", "106": "tl", "107": "vi",
    "201": "ht", "202": "sw", "203": "lo", "204": "ta", "205": "kmr", "206": "zu", "207": "tpi",
    "301": "ceb", "302": "kk", "303": "te", "304": "lt", "305": "gn", "306": "ig", "307": "am",
    "401": "mn", "402": "jv", "403": "luo", "404": "ka",
}  # fmt: skip


class BabelLayout:
    name = "babel"
    default_corpus = "babel"
    tree = "[ROOT/][IARPA_]BABEL_<phase>_<id>/{conversational,scripted}/<split>/audio/*.sph"

    def detect(self, root: Path) -> str | None:
        packs = pack_dirs(root)
        return "BABEL packs " + ", ".join(p.name for p in packs[:3]) if packs else None

    def read(self, root: Path, options: ImportOptions) -> Found:
        found = Found.start(self.name, options)
        corpus = options.corpus_name(self.default_corpus)
        base = root.parent if root in pack_dirs(root) else root
        for pack in pack_dirs(root):
            language = _pack_language(pack, found)
            for split_dir in _split_dirs(pack, found, options):
                texts = split_dir / "transcription"
                for path in found.audio_files(split_dir / "audio", "*"):
                    speaker = SPEAKER_RE.match(path.name)
                    found.record(
                        path,
                        relative(path, base),
                        language,
                        corpus,
                        speaker=f"{pack.name}-{speaker[1]}" if speaker else None,
                        text=_transcript(texts / f"{path.stem}.txt"),
                    )
        return found


def pack_dirs(root: Path) -> list[Path]:
    if PACK_RE.search(root.name) and _kinds(root):
        return [root]
    return [d for d in child_dirs(root) if PACK_RE.search(d.name) and _kinds(d)]


def _kinds(pack: Path) -> list[Path]:
    return [pack / kind for kind in ("conversational", "scripted") if os.path.isdir(pack / kind)]


def _pack_language(pack: Path, found: Found) -> str:
    """The pack id, which names the language: the table maps known ids to tags (a --language-map
    entry for the id wins); an unknown id is kept as given and reported, so it can be mapped."""
    match = PACK_RE.search(pack.name)
    assert match is not None
    pack_id = match[1]
    if pack_id in LANGUAGE_BY_PACK:
        tag = canonical_tag(LANGUAGE_BY_PACK[pack_id]) or LANGUAGE_BY_PACK[pack_id]
        found.names.overrides.setdefault(pack_id, tag)
    return pack_id


def _split_dirs(pack: Path, found: Found, options: ImportOptions) -> list[Path]:
    chosen = []
    for kind in _kinds(pack):
        splits = {d.name: d for d in child_dirs(kind) if os.path.isdir(d / "audio")}
        for name, split_dir in sorted(splits.items()):
            evaluation = EVALUATION.get(name)
            if evaluation and not options.includes(evaluation):
                found.excluded_splits[evaluation] += len(found.audio_files(split_dir / "audio", "*"))
            elif name == SUBSET_OF_TRAINING and "training" in splits:
                found.notes.append(f"{pack.name}/{kind.name}/{name}/ not read: a subset of training/")
            else:
                chosen.append(split_dir)
    return chosen


def _transcript(path: Path) -> str | None:
    """The words of a BABEL transcript: text lines, without `[time]` lines and `<no-speech>` marks."""
    if not os.path.isfile(path):
        return None
    words = []
    for line in read_text_lines(path):
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            continue
        words += [w for w in line.split() if not (w.startswith("<") and w.endswith(">"))]
    return " ".join(words) or None
