"""The run directory: the one place that names and reads the files a training run writes.

```
<run_dir>/
  config.yaml        the recipe as given (every field), written at start
  metrics.jsonl      one JSON line per logging interval and per validation ("kind": "valid")
  summary.json       first/last metrics, validation, best checkpoint, data streams; written at exit
  wandb_run_id       the W&B run id, kept across requeues
  wandb/             the W&B run (offline mode: `wandb sync` it)
  probes.jsonl       one JSON line per (checkpoint, probe): phone error rate, language ID (`ProbeLog`)
  probes/            the probe side jobs' logs and claims (xlsr.engine.probing)
  checkpoints/       the checkpoints (xlsr.engine.checkpoint writes them)
    step-NNNNNNNN/     one checkpoint: the backend's files (DCP .metadata + shards, or DeepSpeed's),
                       trainer.pt, rank-RRRRR.pt, config.yaml, meta.json, manifest.json
    best.json          the best checkpoint by the objective's validation metric
```

Torch-free: the launchers, `xlsr stats --run`, `xlsr plot` and the demo read runs through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr.fileio import atomic_write_text, locked_file

log = logging.getLogger("xlsr.train")

CONFIG_NAME = "config.yaml"
HISTORY_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
WANDB_ID_NAME = "wandb_run_id"
CHECKPOINTS_NAME = "checkpoints"
VALID_KIND = "valid"  # the "kind" of a validation line in metrics.jsonl (training lines have none)
HEALTH_KIND = "health"  # a health sentinel event (xlsr.engine.health), with its "updates_drawn"
HEALTH_DIR = "health"  # <run_dir>/health/rollback-N.json: the utterances each rollback skipped
PROBES_NAME = "probes.jsonl"
PROBES_DIR = "probes"  # the probe side jobs' logs, claims and locks

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


class ProbeLog:
    """``probes.jsonl``: one line per (checkpoint step, probe), each written once.

    Whoever probes (the trainer, a side process, a SLURM probe job, `xlsr evaluate`) appends under
    `locked` and checks `done` inside the same lock, so a checkpoint is never recorded twice; step 0
    is the randomly initialised model, every probe's baseline. Lines of checkpoints that pruning
    deleted later stay. The probe fields of ``summary.json`` are merged in under the same lock.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / PROBES_NAME
        self.lock_path = self.run_dir / PROBES_DIR / "probes.jsonl.lock"

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive for appending, setting aside and summary merges."""
        return locked_file(self.lock_path)

    def records(self) -> list[dict[str, Any]]:
        """The first line of every (step, probe); torn lines (a kill mid-write) are dropped."""
        if not self.path.is_file():
            return []
        seen, records = set(), []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or not {"step", "probe"} <= record.keys():
                continue
            if (record["step"], record["probe"]) not in seen:
                seen.add((record["step"], record["probe"]))
                records.append(record)
        return records

    def done(self, step: int, probe: str) -> bool:
        return any(r["step"] == step and r["probe"] == probe for r in self.records())

    def append(self, record: dict[str, Any]) -> None:
        """One line, synced; call under `locked`. A torn earlier line is ended first."""
        with open(self.path, "a+b") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write((json.dumps(record) + "\n").encode())
            handle.flush()
            os.fsync(handle.fileno())

    def set_aside_after(self, step: int, label: str) -> None:
        """A fresh start (``step`` -1), a resume or a rollback to ``step``: later lines describe
        updates that will be trained again. They move to ``probes/set-aside-<label>.jsonl``, and the
        SLURM claims of their steps are renamed, so the new checkpoints get probed."""
        claims = self.lock_path.parent / "claims"
        if not self.path.exists() and not claims.is_dir():
            return  # a run without probes: nothing to create
        with self.locked():
            records = self.records()
            later = [r for r in records if r["step"] > step]
            if later:
                aside = self.lock_path.parent / f"set-aside-{label}.jsonl"
                with open(aside, "a") as handle:
                    handle.write("".join(json.dumps(r) + "\n" for r in later))
                kept = [r for r in records if r["step"] <= step]
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            for claim in claims.glob("step-????????"):
                if int(claim.name[5:]) > step:
                    claim.rename(claim.with_name(f"{claim.name}.set-aside-{label}"))

    def merge_into_summary(self) -> None:
        """Refresh the probe fields of ``summary.json``, if the run wrote one; call under `locked`."""
        path = self.run_dir / SUMMARY_NAME
        summary = read_json_object(path)
        if summary is not None:
            summary = {k: v for k, v in summary.items() if not k.startswith("probe_")}
            atomic_write_text(path, json.dumps({**summary, **probe_summary(self.records())}, indent=2))


@dataclass(frozen=True)
class ProbeKind:
    metric: str  # the metric's name in probes.jsonl, W&B (probe/<metric>) and summary.json (probe_<metric>)
    title: str
    lower_is_better: bool


PROBE_KINDS = {
    "phones": ProbeKind("phone_error_rate", "phone error rate", True),
    "chars": ProbeKind("char_error_rate", "character error rate", True),
    "lid": ProbeKind("lid_accuracy", "LID accuracy", False),
}
UPDATE_KEY = "update"  # the x axis of every W&B chart (training's and the probes')


def probe_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest checkpoint's value of every probe, its interval, and the update-0 baseline's."""
    summary: dict[str, Any] = {}
    for probe, kind in PROBE_KINDS.items():
        name = f"probe_{kind.metric}"
        mine = sorted((r for r in records if r["probe"] == probe), key=lambda r: r["step"])
        if not mine:
            continue
        last, first = mine[-1], mine[0]
        if last["step"] > 0:
            summary[name] = last["value"]
            summary[f"{name}_interval"] = last["interval"]
            summary[f"{name}_step"] = last["step"]
            summary[f"{name}_per_language"] = {k: v["value"] for k, v in last["per_language"].items()}
        if first["step"] == 0:
            summary[f"{name}_baseline"] = first["value"]
            summary[f"{name}_baseline_interval"] = first["interval"]
    return summary
