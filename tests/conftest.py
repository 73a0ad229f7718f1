"""Shared fixtures: a real multilingual shard set, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from shard_helpers import SKEWED_CORPORA

from sharding import ShardJob, shard
from sharding.layouts import skewed_layout, write_skewed_shard_set
from sharding.speech import MANIFEST_NAME, generate_speech_corpus
from sharding.synthetic import generate_demo_corpus

os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory) -> Path:
    """index.json of the demo corpus at 30% size, cut into several shards per large language."""
    root = tmp_path_factory.mktemp("demo_data")
    corpus = generate_demo_corpus(root / "corpus", scale=0.3)
    job = ShardJob(
        corpus, root / "shards", corpus="demo", shard_size_bytes=400_000, workers=2, progress=False
    )
    return shard(job).index_path


@pytest.fixture(scope="session")
def demo_valid_index(tmp_path_factory) -> Path:
    """Held-out audio: another draw of the demo corpus (other speakers' seeds, same six languages).
    Training on `demo_index` and validating on the same index is refused (data.train overlaps
    data.valid), as it would be for a user."""
    root = tmp_path_factory.mktemp("valid")
    corpus = generate_demo_corpus(root / "corpus", seed=5, scale=0.15)
    return shard(ShardJob(corpus, root / "shards", corpus="demo", workers=2, progress=False)).index_path


@pytest.fixture(scope="session")
def speech_shards(tmp_path_factory) -> tuple[Path, Path]:
    """(train, held-out) index.json of the eSpeak speech corpus at half size, with phones and
    speakers; about 20 s per language held out, by speaker."""
    root = tmp_path_factory.mktemp("speech_data")
    corpus = generate_speech_corpus(root / "corpus", scale=0.5)
    job = ShardJob(corpus / MANIFEST_NAME, root / "shards", corpus="speech", workers=2, progress=False,
                   valid_seconds=20)  # fmt: skip
    index = shard(job).index_path
    return index, index.parent / "valid" / "index.json"


@pytest.fixture(scope="session")
def skewed_index(tmp_path_factory) -> Path:
    """index.json of an XLS-R-shaped shard set (sharding.layouts.write_skewed_shard_set)."""
    return write_skewed_shard_set(tmp_path_factory.mktemp("skewed_data"), skewed_layout(SKEWED_CORPORA))
