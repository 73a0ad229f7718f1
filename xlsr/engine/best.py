"""The best checkpoint of a run by the objective's validation metric: one stateful part.

Lower is better; update 0 (the randomly initialised model) never counts. The value and step travel
in every checkpoint (``trainer.pt``, part ``best``); ``<checkpoint_dir>/best.json`` names the
checkpoint for people and for pruning, which never deletes it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xlsr.checkpoint_files import step_dir_name
from xlsr.fileio import atomic_write_text
from xlsr.run_dir import BEST_NAME, read_json_object


class BestCheckpoint:
    def __init__(self, metric: str, checkpoint_dir: Path, is_main: bool):
        self.metric, self.checkpoint_dir, self.is_main = metric, checkpoint_dir, is_main
        self.value = math.inf
        self.step: int | None = None

    def offer(self, step: int, metrics: dict[str, float]) -> bool:
        """Take the validation ``metrics`` of ``step``; True if they are the best so far."""
        value = metrics[self.metric]
        if step == 0 or not value < self.value:
            return False
        self.value, self.step = value, step
        return True

    def record(self) -> None:
        """Write ``best.json`` (rank 0), once the best step's checkpoint exists."""
        if self.is_main and self.step is not None:
            atomic_write_text(self.checkpoint_dir / BEST_NAME, json.dumps(self.summary(), indent=2))

    def rewound(self, step: int) -> None:
        """After a health rollback to ``step`` (this part restored from its checkpoint): ``best.json``
        must not name a checkpoint the rollback set aside."""
        recorded = recorded_best_step(self.checkpoint_dir)
        if not self.is_main or recorded is None or recorded <= step:
            return
        if self.step is None:
            (self.checkpoint_dir / BEST_NAME).unlink(missing_ok=True)
        else:
            self.record()

    def summary(self) -> dict[str, Any] | None:
        if self.step is None:
            return None
        checkpoint = str(self.checkpoint_dir / step_dir_name(self.step))
        return {"step": self.step, self.metric: self.value, "checkpoint": checkpoint}

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        same_metric = state["metric"] == self.metric  # a run resumed under another objective starts anew
        self.value, self.step = (state["value"], state["step"]) if same_metric else (math.inf, None)


def recorded_best_step(checkpoint_dir: Path) -> int | None:
    """The step ``best.json`` names (what pruning keeps), or None."""
    step = (read_json_object(checkpoint_dir / BEST_NAME) or {}).get("step")
    return step if isinstance(step, int) else None
