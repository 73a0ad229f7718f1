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
from xlsr.objectives.base import BITS, Alarm, MetricSpec, Objective, Prepared
from xlsr.objectives.best_rq import BestRQObjective
from xlsr.objectives.wav2vec2 import Wav2Vec2Objective

# objective.name -> the objective, built from the whole config.
OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {
    "wav2vec2": Wav2Vec2Objective,
    "best_rq": BestRQObjective,
}


def build_objective(cfg: TrainConfig) -> Objective:
    return OBJECTIVES[cfg.objective.name](cfg)


__all__ = ["BITS", "OBJECTIVES", "Alarm", "MetricSpec", "Objective", "Prepared", "build_objective"]
