"""xlsr: wav2vec 2.0 / XLS-R pretraining.

The programmatic entry point is :func:`train`; `xlsr.config.load_config` builds its config from a
recipe. Importing ``xlsr`` is cheap: torch is loaded only when training starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xlsr.config import TrainConfig
    from xlsr.engine.reporting import TrainResult

__version__ = "0.1.0"


def train(cfg: TrainConfig) -> TrainResult:
    """Run (this process's rank of) pretraining; ``result.exit_code`` is 0, 75 after a stop signal,
    or 78 when the health sentinel stopped the run (docs/training.md, "Health"). A hung job ends its
    processes itself with exit code 76."""
    from xlsr.engine.run import train as run_training

    return run_training(cfg)
