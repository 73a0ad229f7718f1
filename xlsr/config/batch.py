"""The effective batch: how many audio samples one optimizer update sees over the whole job.

fairseq's effective batch is ``max_tokens × world size × update_freq`` samples, so every change of
allocation changes it unless ``update_freq`` is recomputed by hand. ``optim.batch_tokens`` states the
batch itself; ``update_freq`` is then derived for the world size a job actually has.
"""

from __future__ import annotations

import dataclasses

from xlsr.config.schema import SAMPLE_RATE, TrainConfig


def for_world_size(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """``cfg`` with ``update_freq`` derived from ``optim.batch_tokens`` (unchanged when it is 0):
    the nearest whole number of micro-batches per rank, at least 1."""
    if cfg.optim.batch_tokens <= 0:
        return cfg
    update_freq = max(1, round(cfg.optim.batch_tokens / (cfg.data.max_tokens * world_size)))
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, update_freq=update_freq))


def effective_batch_samples(cfg: TrainConfig, world_size: int) -> int:
    """Upper bound of audio samples per update (padding included), as fairseq counts it."""
    return cfg.data.max_tokens * world_size * cfg.optim.update_freq


def effective_batch_hours(cfg: TrainConfig, world_size: int) -> float:
    return effective_batch_samples(cfg, world_size) / SAMPLE_RATE / 3600
