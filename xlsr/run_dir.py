"""The run directory: the one place that names and reads the files a training run writes.

```
<run_dir>/
  config.yaml        the recipe as given (every field), written at start
  metrics.jsonl      one JSON line per logging interval and per validation ("kind": "valid")
  summary.json       first/last metrics, validation, best checkpoint, data streams; written at exit
  wandb_run_id       the W&B run id, kept across requeues
  wandb/             the W&B run (offline mode: `wandb sync` it)
  checkpoints/       the checkpoints (xlsr.engine.checkpoint writes them)
    step-NNNNNNNN/     one checkpoint: the backend's files (DCP .metadata + shards, or DeepSpeed's),
                       trainer.pt, rank-RRRRR.pt, config.yaml, meta.json, manifest.json
    best.json          the best checkpoint by the objective's validation metric
```

Torch-free: the launchers, `xlsr stats --run`, `xlsr plot` and the demo read runs through it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from xlsr.fileio import atomic_write_text

log = logging.getLogger("xlsr.train")

CONFIG_NAME = "config.yaml"
HISTORY_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
WANDB_ID_NAME = "wandb_run_id"
CHECKPOINTS_NAME = "checkpoints"
VALID_KIND = "valid"  # the "kind" of a validation line in metrics.jsonl (training lines have none)
HEALTH_KIND = "health"  # a health sentinel event (xlsr.engine.health), with its "updates_drawn"
HEALTH_DIR = "health"  # <run_dir>/health/rollback-N.json: the utterances each rollback skipped

# Inside a checkpoint directory.
TRAINER_STATE_NAME = "trainer.pt"
META_NAME = "meta.json"  # {"step", "backend", ...}: which reader its weights need
MANIFEST_NAME = "manifest.json"
BEST_NAME = "best.json"  # beside the step directories


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file of a run (summary, meta, manifest, best), or None when it is absent,
    unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class RunHistory:
    """``metrics.jsonl`` and ``summary.json`` of a run directory."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / HISTORY_NAME
        self.summary_path = run_dir / SUMMARY_NAME

    def lines(self) -> list[dict[str, Any]]:
        """The logged lines; a torn or blank line (disk full, a kill mid-write) is dropped, with a warning."""
        if not self.path.is_file():
            return []
        records = []
        for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            try:
                record = json.loads(line)
                records.append(record if isinstance(record, dict) and "step" in record else None)
            except json.JSONDecodeError:
                records.append(None)
            if records[-1] is None:
                log.warning("%s:%d is damaged (%r); the line is dropped", self.path, number, line[:80])
                records.pop()
        return records

    def keep_until(self, step: int, updates_drawn: int | None = None) -> None:
        """Drop lines past ``step`` (and damaged ones), so a resumed run logs each update once.

        Health events are dropped by their data position instead (``updates_drawn``, default
        ``step``): a rollback goes back in steps but not in data, so its own events stay.
        """
        if not self.path.is_file():
            return
        drawn = step if updates_drawn is None else updates_drawn
        raw = self.path.read_text(errors="replace").splitlines()

        def kept_line(record: dict[str, Any]) -> bool:
            if record.get("kind") == HEALTH_KIND:
                return record.get("updates_drawn", record["step"]) <= drawn
            return record["step"] <= step

        kept = [record for record in self.lines() if kept_line(record)]
        if len(kept) < len(raw):
            log.warning("%s: dropped %d line(s) after update %d (retrained)", self.path.name,
                        len(raw) - len(kept), step)  # fmt: skip
            atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as history:
            history.write(json.dumps({"step": step, **metrics}) + "\n")
