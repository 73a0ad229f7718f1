"""Where metrics go, on rank 0 only: the console (with a progress bar), ``metrics.jsonl``,
``summary.json`` and Weights & Biases.

``metrics.jsonl`` is the run's history across resumes: one line per logging interval, each update
in it once (a resume drops the lines past the update it resumes from, which are trained again).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xlsr.config import TrainConfig, to_dict
from xlsr.engine.health import HealthEvent
from xlsr.engine.metrics import format_console_line
from xlsr.fileio import atomic_write_text
from xlsr.objectives import Objective
from xlsr.run_dir import (
    HEALTH_KIND,
    UPDATE_KEY,
    VALID_KIND,
    WANDB_ID_NAME,
    ProbeLog,
    RunHistory,
    probe_summary,
)

log = logging.getLogger("xlsr.train")


@dataclass
class TrainResult:
    # "finished", "preempted" (stopped by a signal, checkpoint saved), "unhealthy" (stopped by the
    # health sentinel, nothing saved) or "failed"
    status: str
    step: int
    checkpoint: Path | None = None
    wandb_dir: str | None = None

    @property
    def exit_code(self) -> int:
        from xlsr.process import HEALTH_EXIT_CODE, PREEMPTED_EXIT_CODE

        return {"preempted": PREEMPTED_EXIT_CODE, "unhealthy": HEALTH_EXIT_CODE}.get(self.status, 0)


def wandb_run_id(run_dir: Path) -> str:
    """A run id that survives requeues: env override, else the one stored in the run directory."""
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    path = run_dir / WANDB_ID_NAME
    if path.is_file():
        return path.read_text().strip()
    run_id = f"{run_dir.name}-{secrets.token_hex(4)}"
    atomic_write_text(path, run_id)
    return run_id


class WandbLogger:
    """A W&B run (online, offline or none). W&B is an observer: if it fails, training goes on."""

    def __init__(self, cfg: TrainConfig, run_id: str | None, plan: dict[str, Any] | None = None):
        self.run = None
        if cfg.logging.wandb_mode == "disabled" or not run_id:
            return
        import wandb

        self.run = wandb.init(
            project=cfg.logging.wandb_project,
            entity=cfg.logging.wandb_entity,
            name=cfg.logging.run_name or Path(cfg.run_dir).name,
            id=run_id,
            group=run_id,  # with the probes' run (xlsr.evaluation.probe_wandb)
            resume="allow",
            dir=cfg.run_dir,
            mode=cfg.logging.wandb_mode,
            config=to_dict(cfg) | ({"plan": plan} if plan else {}),
        )
        # Charts run over the update, not W&B's own step: a resume or a health rollback logs an
        # update again, which W&B would drop as a step that went backwards.
        self._guarded("define_metric", lambda: self.run.define_metric("*", step_metric=UPDATE_KEY))

    @property
    def directory(self) -> str | None:
        """The run's directory (what `wandb sync` takes), not its ``files/`` subfolder."""
        return str(Path(self.run.dir).parent) if self.run is not None else None

    def log(self, step: int, values: dict[str, Any]) -> None:
        if self.run is not None:
            self._guarded("log", lambda: self.run.log({UPDATE_KEY: step, **values}))

    def alert(self, title: str, text: str) -> None:
        if self.run is not None:
            self._guarded("alert", lambda: self.run.alert(title=title, text=text, level="WARN"))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        if self.run is None:
            return
        import wandb

        self.log(step, {key: wandb.Table(columns=columns, data=rows)})

    def log_streams(self, step: int, streams: list[dict[str, Any]]) -> None:
        """The realised against the target share per (corpus, language): a table and a bar chart."""
        if self.run is None:
            return
        import wandb

        columns = ["stream", "target_share", "realised_share", "hours_drawn", "utterances", "passes"]
        rows = [[f"{r['corpus']}/{r['language']}", *(r[c] for c in columns[1:])] for r in streams]
        table = wandb.Table(columns=columns, data=rows)
        chart = wandb.plot.bar(table, "stream", "realised_share", title="realised share of sampled audio")
        self.log(step, {"data/streams": table, "data/realised_share": chart})

    def close(self) -> None:
        if self.run is not None:
            self._guarded("finish", self.run.finish)

    def _guarded(self, what: str, call: Callable[[], Any]) -> None:
        """SLURM signals every process of a job and wandb-core exits on SIGTERM: a dead W&B service
        must not cost the stop checkpoint, so its errors turn W&B off for the rest of the run."""
        try:
            call()
        except Exception as exc:  # wandb raises many types; none may cost a checkpoint
            log.warning("W&B %s failed (%s: %s); W&B logging is off for the rest of this run",
                        what, type(exc).__name__, exc)  # fmt: skip
            self.run = None


class RunSummary(RunHistory):
    """`RunHistory` plus the writer of ``summary.json``."""

    def write_summary(
        self,
        result: TrainResult,
        best_key: str,
        best: dict[str, Any] | None = None,
        streams: list[dict] | None = None,
    ) -> None:
        """First and last logged metrics of the whole run (across resumes), and where things are."""
        records = self.lines()
        lines = [record for record in records if "kind" not in record]
        if not lines:
            return
        summary = {
            "status": result.status,
            "step": result.step,
            "world_size": lines[-1].get("world_size"),
            "update_freq": lines[-1].get("update_freq"),
            "first": lines[0],
            "last": lines[-1],
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "wandb_dir": result.wandb_dir,
        }
        valid = [r for r in records if r.get("kind") == VALID_KIND]
        summary.update(validation_summary(valid, best, best_key))
        if streams:
            summary["data"] = {"streams": streams}
        health = [record for record in records if record.get("kind") == HEALTH_KIND]
        summary["health"] = {
            "events": health,
            "rollbacks": sum("rolled back" in r["outcome"] for r in health),
        }
        probes = ProbeLog(self.summary_path.parent)
        with probes.locked():  # a probe job may be merging its results into summary.json right now
            summary.update(probe_summary(probes.records()))
            atomic_write_text(self.summary_path, json.dumps(summary, indent=2))


def validation_summary(
    valid: list[dict[str, Any]], best: dict[str, Any] | None, best_key: str
) -> dict[str, Any]:
    """The last validation's values (``valid_*``, per-language ``valid/...``), the loss at update 0
    (the randomly initialised model) and the best checkpoint."""
    if not valid:
        return {}
    last = {k: v for k, v in valid[-1].items() if k not in ("kind", "step")}
    summary: dict[str, Any] = {**last, "valid_step": valid[-1]["step"]}
    if valid[0]["step"] == 0:
        summary[f"{best_key}_update_0"] = valid[0][best_key]
    if best is not None:
        summary["best"] = best
    return summary


class Reporter:
    """Everything the trainer shows or records; a silent no-op on ranks other than 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        objective: Objective,
        is_main: bool,
        first_step: int,
        run_id: str | None,
        plan: dict[str, Any] | None = None,  # `xlsr plan`'s figures, for the W&B run config
    ):
        self.cfg, self.objective, self.enabled = cfg, objective, is_main
        self.history = RunSummary(Path(cfg.run_dir))
        self.wandb = WandbLogger(cfg, run_id, plan) if is_main else None
        self.progress = tqdm(
            total=cfg.last_update,
            initial=first_step,
            disable=not (is_main and cfg.logging.progress) or None,
            desc="pretraining",
            unit="upd",
            dynamic_ncols=True,
        )

    @property
    def wandb_dir(self) -> str | None:
        return self.wandb.directory if self.wandb else None

    def data_mixture(self, table: str, hours: dict, probs: dict) -> None:
        if not self.enabled:
            return
        print("Upsampled data mixture (hours, natural share, sampled share):\n" + table)
        rows = [[c, lang, hours[(c, lang)], probs[(c, lang)]] for (c, lang) in sorted(hours)]
        self.wandb.log_table(
            "data/upsampling", ["corpus", "language", "hours", "sampling_probability"], rows, 0
        )

    def update_done(self) -> None:
        self.progress.update(1)

    def rewind(self, step: int) -> None:
        """The run went back to ``step`` (a health rollback)."""
        self.progress.n = step
        self.progress.refresh()

    def interval(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.progress.write(
            format_console_line(step, self.cfg.last_update, metrics, self.objective.spec.console)
        )
        self.history.append(step, metrics)
        self.wandb.log(step, {f"train/{k}": v for k, v in metrics.items()})

    def health(
        self, event: HealthEvent, updates_drawn: int, outcome: str, window: dict | None = None
    ) -> None:
        """A health event: one console line, a ``kind: health`` line in metrics.jsonl, a W&B alert
        and a marker on the charts (``health/<signal>``)."""
        if not self.enabled:
            return
        line = f"health: {event.signal} (onset update {event.onset}): {event.message}; {outcome}"
        self.progress.write(line)
        record = {k: v for k, v in event.record().items() if k != "step"}
        record |= {"kind": HEALTH_KIND, "updates_drawn": updates_drawn, "outcome": outcome}
        self.history.append(event.step, record | ({"window": window} if window else {}))
        self.wandb.log(event.step, {f"health/{event.signal}": 1.0, "health/events": 1.0})
        self.wandb.alert(f"xlsr health: {event.signal}", line)

    def validation(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.progress.write(format_validation_line(step, self.objective, metrics))
        self.history.append(step, {"kind": VALID_KIND, **metrics})
        self.wandb.log(step, {key if "/" in key else f"valid/{key}": v for key, v in metrics.items()})

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.write(text)

    def close(
        self,
        result: TrainResult | None,
        best: dict[str, Any] | None = None,
        streams: list[dict] | None = None,
    ) -> None:
        self.progress.close()
        if not self.enabled:
            return
        if streams:
            self.wandb.log_streams(result.step if result else 0, streams)
        self.wandb.close()
        if result is not None:
            self.history.write_summary(result, self.objective.spec.best_key, best, streams)


def format_validation_line(step: int, objective: Objective, metrics: dict[str, float]) -> str:
    parts = [f"valid update {step}", *objective.validation_columns(metrics)]
    parts.append(f"{metrics['valid_seconds']:.1f} s")
    return " | ".join(parts)
