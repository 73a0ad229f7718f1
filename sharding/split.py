"""Hold out about S seconds of every (corpus, language) stream for validation, by speaker or recording.

**Groups.** A record belongs to the group of its speaker when the importer knows one (Common Voice's
`client_id`, MLS's speaker directory, a manifest's `speaker` column), else to the group of its
recording: its source path relative to the input (the directory, or the manifest's directory), so
that moving a corpus does not change its split. A group is never divided, so the held-out set shares
no speaker (or recording) with training; a path listed twice follows its first listing.

**The rule.** Per stream, groups are ordered by a hash of their name (SHA-256, the first 8 bytes,
ties broken by the name). The held-out groups are the shortest prefix of that order whose seconds
reach S — so a stream gives between S and S plus one group's length — except that a group whose hash
lies in the upper half of the hash range is never held out: a stream with less than about 2·S seconds
keeps those groups for training (half of its groups on average; with few groups, anywhere from none to
all of them) instead of losing all of its audio.

**Why it is stable.** The rule is a threshold on the hash: hold out g iff hash(g) <= t and
hash(g) < 2^63, where t is the hash at which the stream's cumulative seconds in hash order first
reach S. When files are only added (new groups, or new files of known speakers), the cumulative
seconds below any hash value can only grow, so t can only fall. Hence a group that trains in one
version of a corpus never moves to the held-out set of a later version: a model pretrained on the
old training set is never scored on audio it has seen. The other direction is allowed: new groups
with small hashes push t down, and the old held-out groups above the new t move to training, which
keeps the held-out set near S instead of letting it grow with the corpus. Removing files can move
groups either way.

Durations are the ones planning uses (manifest or file header, before decoding), so the held-out
seconds in the index can be smaller when held-out files turn out to be unusable.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sharding.manifest import SourceRecord

VALID_DIR = "valid"  # OUT/valid/index.json, OUT/valid/<corpus>/<language>/shard-NNNNNN.tar
HASH_BITS = 64
# Groups whose hash is at or above this are never held out (see the module docstring).
MAX_HELD_OUT_HASH = 2 ** (HASH_BITS - 1)


@dataclass(frozen=True)
class StreamSplit:
    """How one (corpus, language) stream was split, in planning seconds."""

    corpus: str
    language: str
    groups: int
    held_out_groups: int
    seconds: float
    held_out_seconds: float


def group_name(record: SourceRecord, root: str | os.PathLike) -> str:
    """`speaker:<id>` when the speaker is known, else `recording:<path relative to the corpus root>`
    (`SourceRecord.rel_path`, or the path relative to `root` for a record without one)."""
    if record.speaker:
        return f"speaker:{record.speaker}"
    if record.rel_path is not None:
        return "recording:" + record.rel_path
    return "recording:" + Path(os.path.relpath(record.path, root)).as_posix()


def group_hash(name: str) -> int:
    """A 64-bit hash of a group name, the same on every machine and Python version."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[: HASH_BITS // 8], "big")


def held_out_groups(seconds: dict[str, float], valid_seconds: float) -> set[str]:
    """The groups to hold out of one stream: `seconds` maps each group to its seconds of audio."""
    held: set[str] = set()
    total = 0.0
    for name, digest in sorted(((n, group_hash(n)) for n in seconds), key=lambda item: (item[1], item[0])):
        if total >= valid_seconds or digest >= MAX_HELD_OUT_HASH:
            break
        held.add(name)
        total += seconds[name]
    return held


def split_records(
    records: Sequence[SourceRecord], valid_seconds: float, root: str | os.PathLike
) -> tuple[list[SourceRecord], list[SourceRecord], list[StreamSplit]]:
    """(training records, held-out records, one `StreamSplit` per stream in sorted order).

    `records` should carry durations (`sharding.writer.with_durations`); a missing one counts as 0.
    """
    streams: dict[tuple[str, str], list[SourceRecord]] = defaultdict(list)
    for record in records:
        streams[(record.corpus, record.language)].append(record)
    train: list[SourceRecord] = []
    valid: list[SourceRecord] = []
    report = []
    for (corpus, language), stream in sorted(streams.items()):
        group_of, seconds = _groups(stream, root)
        held = held_out_groups(seconds, valid_seconds)
        for record in stream:
            (valid if group_of[record.name] in held else train).append(record)
        held_seconds = sum(seconds[name] for name in held)
        report.append(
            StreamSplit(corpus, language, len(seconds), len(held), sum(seconds.values()), held_seconds)
        )
    return train, valid, report


def _groups(stream: list[SourceRecord], root: str | os.PathLike) -> tuple[dict[str, str], dict[str, float]]:
    """(path -> group name, group name -> seconds). Sorted as the writer sorts a stream, so a path
    listed twice belongs to the group of the listing the writer keeps."""
    group_of: dict[str, str] = {}
    seconds: dict[str, float] = defaultdict(float)
    for record in sorted(stream, key=lambda r: (r.name, r.speaker or "", r.duration or 0.0)):
        if record.name in group_of:
            continue
        name = group_name(record, root)
        group_of[record.name] = name
        seconds[name] += max(record.duration or 0.0, 0.0)
    return group_of, dict(seconds)
