"""Shared fixtures: a real multilingual shard set, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sharding.manifest import scan_directory
from sharding.synthetic import generate_demo_corpus
from sharding.writer import ShardWriterConfig, write_shards

os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def demo_index(tmp_path_factory) -> Path:
    """index.json of the demo corpus at 30% size, cut into several shards per large language."""
    root = tmp_path_factory.mktemp("demo_data")
    corpus = generate_demo_corpus(root / "corpus", scale=0.3)
    config = ShardWriterConfig(out_dir=root / "shards", shard_size_bytes=400_000, workers=2)
    write_shards(scan_directory(corpus, "demo"), config, progress=False)
    return root / "shards" / "index.json"
