"""Small helpers shared by the sharding tests: synthetic audio, writer configs, reading tars back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sharding.writer import ShardWriterConfig


def shard_config(out_dir: Path, **overrides) -> ShardWriterConfig:
    return ShardWriterConfig(out_dir=out_dir, **{"shard_size_bytes": 400_000, **overrides})


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
