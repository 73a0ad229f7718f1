"""Small helpers shared by the sharding tests: synthetic audio, writer configs, reading tars back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sharding.corpora import ImportOptions, read_corpus
from sharding.manifest import SourceRecord
from sharding.writer import ShardWriterConfig
from xlsr.config import DataConfig

# Five corpora, 111 (corpus, language) streams, 2 to 1,000 utterances each (hours 1,000x apart), a few
# milliseconds of int16 noise per utterance: XLS-R's shape, small enough to build in about two seconds
# (the `skewed_index` fixture: sharding.layouts.write_skewed_shard_set).
SKEWED_CORPORA = {"voxpopuli": 23, "mls": 8, "commonvoice": 40, "voxlingua107": 30, "babel": 10}


def shard_config(out_dir: Path, **overrides) -> ShardWriterConfig:
    return ShardWriterConfig(out_dir=out_dir, **{"shard_size_bytes": 400_000, **overrides})


def dir_records(root: Path, corpus: str) -> list[SourceRecord]:
    """The records of `root` read with the `dir` layout (ROOT/<language>/...)."""
    return read_corpus(root, "dir", ImportOptions(corpus=corpus)).records


def tars_of(out: Path) -> list[Path]:
    return sorted(out.glob("*/*/shard-*.tar"))


def read_samples(out: Path) -> list[dict]:
    import webdataset as wds

    urls = [str(p) for p in tars_of(out)]
    return list(wds.WebDataset(urls, shardshuffle=False))


def sine(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()])


def loader_config(index, defaults: dict, **changes) -> DataConfig:
    """A loader config for one index, with ``defaults`` and then ``changes`` applied (0 workers)."""
    # Until DataConfig has the field, the loader reads it with getattr (default 16).
    cap = changes.pop("max_open_shards", None)
    cfg = DataConfig(train=[str(index)], **{"num_workers": 0, **defaults, **changes})
    if cap is not None:
        cfg.max_open_shards = cap
    return cfg


def skewed_config(index, **changes) -> DataConfig:
    """Loader settings for the `skewed_index` shard set (utterances of 160-320 samples)."""
    defaults = dict(min_sample_size=100, max_sample_size=320, max_tokens=3200, shuffle_buffer=16)
    return loader_config(index, {**defaults, "bucket_buffer": 16, "num_buckets": 2}, **changes)
