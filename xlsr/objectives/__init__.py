"""Pretraining objectives: what the encoder learns from, behind one protocol (`Objective`).

- ``wav2vec2`` (`xlsr.objectives.wav2vec2`): contrastive prediction of Gumbel-quantized latents
  (wav2vec 2.0 / XLS-R; fairseq-exact).
- ``best_rq`` (`xlsr.objectives.best_rq`): masked prediction of random-projection codes of log-mel
  frames (BEST-RQ).

``objective.name`` in the config picks one; `build_objective` is the only place that reads it.
"""

from __future__ import annotations

from collections.abc import Callable

from xlsr.config import TrainConfig
from xlsr.objectives.base import BITS, MetricSpec, Objective, Prepared


def _wav2vec2(cfg: TrainConfig) -> Objective:
    from xlsr.objectives.wav2vec2 import Wav2Vec2Objective

    return Wav2Vec2Objective(cfg)


def _best_rq(cfg: TrainConfig) -> Objective:
    from xlsr.objectives.best_rq import BestRQObjective

    return BestRQObjective(cfg)


OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {"wav2vec2": _wav2vec2, "best_rq": _best_rq}


def build_objective(cfg: TrainConfig) -> Objective:
    return OBJECTIVES[cfg.objective.name](cfg)


__all__ = ["BITS", "OBJECTIVES", "MetricSpec", "Objective", "Prepared", "build_objective"]
