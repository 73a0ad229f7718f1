"""Guards on the shard sets a run reads, checked before any process group starts.

A shell glob that picks up `OUT/valid/index.json` into `data.train`, the same set listed twice (hours
doubled, keys repeated), or a copy of the held-out set trained on: each is silent in the loader and
spoils the run. They are found here from the indexes alone, without reading a tar:

- by path: an index listed twice in `data.train`, or in both `data.train` and `data.valid`;
- by content: every shard entry carries `keys_digest`, a hash of its utterance keys (keys name a
  file relative to its corpus root, so they are the same wherever the corpus is sharded from); two
  indexes listing a shard with the same digest list the same utterances, whatever their paths.
"""

from __future__ import annotations

from pathlib import Path

from xlsr.config.schema import DataConfig
from xlsr.data.shard_format import escape_path, index_file, read_index
from xlsr.process import UserError


class DataSourceError(UserError, ValueError):
    """The configured shard sets cannot be trained on as listed; the message names them."""


def check_data_sources(data: DataConfig) -> None:
    """Raise `DataSourceError` (one line) for an empty `data.train` or overlapping indexes."""
    if not data.train:
        raise DataSourceError(
            "data.train is empty: list one or more index.json files written by `xlsr shard` "
            "(e.g. data.train=[shards/index.json])"
        )
    train = _resolved(data.train, "data.train")
    valid = _resolved(data.valid, "data.valid")
    for path in set(train) & set(valid):
        raise DataSourceError(
            f"data.train and data.valid both list {escape_path(train[path])}: the held-out audio would "
            "be trained on; remove it from data.train"
        )
    _check_shared_utterances(train, valid)


def _resolved(paths: list[str], key: str) -> dict[Path, str]:
    """Resolved index file -> the path as listed; an index listed twice is an error."""
    resolved: dict[Path, str] = {}
    for listed in paths:
        path = index_file(listed).resolve()
        if path in resolved:
            raise DataSourceError(
                f"{key} lists {escape_path(path)} twice ({escape_path(resolved[path])} and "
                f"{escape_path(listed)}): its hours would count double"
            )
        resolved[path] = listed
    return resolved


def _check_shared_utterances(train: dict[Path, str], valid: dict[Path, str]) -> None:
    owner: dict[str, tuple[str, str, str]] = {}  # keys digest -> (role, listed index, shard path)
    for role, indexes in (("data.train", train), ("data.valid", valid)):
        for path, listed in indexes.items():
            for shard in read_index(path).shards:
                if shard.keys_digest is None:
                    continue
                first = owner.setdefault(shard.keys_digest, (role, listed, shard.url))
                if first[1] != listed:
                    raise DataSourceError(_shared_message(first, (role, listed, shard.url)))


def _shared_message(first: tuple[str, str, str], second: tuple[str, str, str]) -> str:
    (role_a, index_a, shard_a), (role_b, index_b, shard_b) = first, second
    what = (
        "held-out utterances would be trained on"
        if "data.valid" in (role_a, role_b)
        else "the same utterances would be drawn twice as often"
    )
    return (
        f"{role_a} {escape_path(index_a)} and {role_b} {escape_path(index_b)} hold the same utterances "
        f"({escape_path(shard_a)} and {escape_path(shard_b)} have identical keys): {what}; "
        "list each shard set once, and never the held-out set in data.train"
    )
