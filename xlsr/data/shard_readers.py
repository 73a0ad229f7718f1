"""How training reads a shard, by format: the `ShardReader` protocol and its registry.

A shard format is one reader: ``samples(url, start, stop, resume_byte)`` yields
``(index, first_byte, next_byte, RawSample | None)`` for the samples ``start <= index < stop`` in
stored order, and can reopen after ``index`` at ``next_byte`` (a seek where the format allows). The
loader (`xlsr.data.units`) and the held-out set read every shard through `shard_reader(url)`; the
samples' audio is decoded by `xlsr.data.shards.decode_sample` whatever the container.

Adding a format: a module with a class that has ``suffixes`` and ``samples``, and one entry in
`SHARD_READERS` (docs/architecture.md, "Adding a shard format").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from xlsr.data.shards import RawSample, iter_samples

# One sample as a reader yields it: (index in the shard, its first byte, the next sample's first
# byte, the sample or None for an entry without audio or readable metadata).
ReadSample = tuple[int, int, int, RawSample | None]


class ShardReader(Protocol):
    suffixes: tuple[str, ...]  # shard file names (or `pipe:` commands) ending so are this format's

    def samples(
        self,
        url: str,
        start: int = 0,
        stop: int | None = None,
        resume_byte: int | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[ReadSample]: ...


class TarShardReader:
    """WebDataset tars (what `xlsr shard` writes): files, or any ``pipe:`` command."""

    suffixes = (".tar",)

    def samples(
        self,
        url: str,
        start: int = 0,
        stop: int | None = None,
        resume_byte: int | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[ReadSample]:
        return iter_samples(url, start, stop, resume_byte, keep)


# Tried in order by suffix; the first is the default (a `pipe:` URL names no suffix reliably).
SHARD_READERS: list[ShardReader] = [TarShardReader()]


def shard_reader(url: str) -> ShardReader:
    for reader in SHARD_READERS:
        if url.endswith(reader.suffixes):
            return reader
    return SHARD_READERS[0]


def iter_shard(url: str, part: int = 0, parts: int = 1) -> Iterator[RawSample]:
    """Samples of one shard in stored order (every ``parts``-th from ``part``); metadata-less or
    audio-less entries are skipped."""
    keep = (lambda index: index % parts == part) if parts > 1 else None
    for _, _, _, sample in shard_reader(url).samples(url, keep=keep):
        if sample is not None:
            yield sample
