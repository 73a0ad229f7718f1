"""Probing a run's checkpoints: phone (or character) recognition and language ID, each once.

`RunProber` reads the run's recipe from ``<run_dir>/config.yaml``, loads the probe set once
(`xlsr.evaluation.probe_set`), and for a checkpoint step extracts every layer's hidden states of
every probe utterance, fits the probes of `xlsr.evaluation.layer_probes` and appends one line per
probe to ``probes.jsonl`` (`xlsr.run_dir.ProbeLog`). Step 0 is the randomly initialised model (the
run's own init, or its ``checkpoint.init_from``): every probe's baseline. Work is serialised per
run by a lock, and a step already recorded is skipped inside it, so the trainer, side processes,
SLURM probe jobs and `xlsr evaluate` can all call `probe_step` without a step ever being probed
twice. Each line also goes to the run's W&B group (`xlsr.evaluation.probe_wandb`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from xlsr.checkpoint_files import complete_checkpoints, verify_slice
from xlsr.config import TrainConfig, effective_batch_hours, for_world_size, load_config
from xlsr.evaluation.features import layer_states
from xlsr.evaluation.layer_probes import ProbeUtterance, ScoredProbe, lid_probe, phone_probe
from xlsr.evaluation.probe_set import ProbeAudio, load_probe_set
from xlsr.fileio import locked_file
from xlsr.objectives import build_objective
from xlsr.process import UserError
from xlsr.run_dir import (
    CHECKPOINTS_NAME,
    CONFIG_NAME,
    META_NAME,
    PROBE_KINDS,
    PROBES_DIR,
    ProbeLog,
    read_json_object,
)
from xlsr.weights import read_weights

log = logging.getLogger("xlsr.probes")


class ProbeError(UserError):
    pass


class RunProber:
    def __init__(self, run_dir: str | os.PathLike, valid: list[str] | None = None, device: str | None = None):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / CONFIG_NAME).is_file():
            raise ProbeError(f"{self.run_dir}: no {CONFIG_NAME}: not a run directory")
        self.cfg: TrainConfig = load_config(self.run_dir / CONFIG_NAME)
        self.valid = list(valid or self.cfg.data.valid)
        if not self.valid:
            raise ProbeError(f"{self.run_dir}: the run has no data.valid to probe on (pass --valid INDEX)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.log = ProbeLog(self.run_dir)
        self._audio: list[ProbeAudio] | None = None

    @property
    def audio(self) -> list[ProbeAudio]:
        if self._audio is None:
            v = self.cfg.validation
            self._audio = load_probe_set(
                self.valid, v.max_seconds_per_language, v.probe_max_utterance_seconds, self.cfg.data.normalize
            )
            if not self._audio:
                raise ProbeError(f"{', '.join(self.valid)}: no utterances to probe on")
        return self._audio

    @property
    def fingerprint(self) -> str:
        keys = "\n".join(sorted(a.key for a in self.audio))
        return hashlib.sha256(keys.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    def probes(self) -> list[str]:
        """The probes this probe set allows: phones (or characters) where labelled; LID with 2+ languages."""
        names = []
        if any(a.phones for a in self.audio):
            names.append("phones")
        elif any(a.chars for a in self.audio):
            names.append("chars")
        if len({a.language for a in self.audio}) > 1:
            names.append("lid")
        return names

    def checkpoints(self, every: int = 1) -> list[tuple[int, Path | None]]:
        """Step 0 (the baseline) and every complete checkpoint whose step is a multiple of ``every``."""
        # A copied run directory brings its checkpoints; a separate checkpoint.dir stays where it was.
        root = Path(self.cfg.checkpoint.dir) if self.cfg.checkpoint.dir else self.run_dir / CHECKPOINTS_NAME
        found = complete_checkpoints(root)
        return [(0, None)] + [(step, path) for step, path in found if step > 0 and step % every == 0]

    def missing(self, every: int = 1) -> list[tuple[int, Path | None]]:
        records = {(r["step"], r["probe"]) for r in self.log.records()}
        return [
            (s, p) for s, p in self.checkpoints(every) if any((s, n) not in records for n in self.probes())
        ]

    def probe_step(self, step: int, path: Path | None) -> list[dict[str, Any]]:
        """Probe checkpoint ``path`` (None at step 0: the initial model); the lines written (none if
        another prober got there first, or the checkpoint is damaged)."""
        with self.working():
            todo = [name for name in self.probes() if not self.log.done(step, name)]
            if not todo:
                return []
            damage = verify_slice(path, 0, 1) if path is not None else None
            if damage:
                log.warning("%s is damaged (%s): not probed", path, damage)
                return []
            started = time.perf_counter()
            scored = self._score(self._model(path), todo)
            records = [self._record(step, path, name, result, started) for name, result in scored.items()]
            with self.log.locked():
                records = [r for r in records if not self.log.done(step, r["probe"])]
                for record in records:
                    record.update(self._baseline(record["probe"]))
                    self.log.append(record)
                self.log.merge_into_summary()
            if records:  # inside the work lock: W&B lets one process at a time write the probes' run
                from xlsr.evaluation.probe_wandb import log_probes

                log_probes(self.cfg, self.run_dir, records)
        return records

    def working(self) -> contextlib.AbstractContextManager[None]:
        """One prober at a time per run."""
        return locked_file(self.run_dir / PROBES_DIR / "work.lock")

    def _model(self, path: Path | None) -> torch.nn.Module:
        if path is not None:
            model = read_weights(path).build(encoder_only=True)
        elif self.cfg.checkpoint.init_from:
            model = read_weights(self.cfg.checkpoint.init_from).build(encoder_only=True)
        else:
            model = build_objective(self.cfg).build_model(init_seed=self.cfg.seed)
        return model.to(self.device).eval()

    def _score(self, model: torch.nn.Module, todo: list[str]) -> dict[str, ScoredProbe]:
        utterances = [
            ProbeUtterance(
                a.key,
                a.language,
                a.speaker,
                layer_states(model, torch.from_numpy(a.audio).to(self.device)).half().cpu(),
                a.phones if "phones" in todo else a.chars,
            )
            for a in self.audio
        ]
        scored = {}
        for name in todo:
            if name == "lid":
                scored[name] = lid_probe(utterances, seed=self.cfg.seed)
            else:
                scored[name] = phone_probe([u for u in utterances if u.labels], seed=self.cfg.seed)
        return scored

    def _record(
        self, step: int, path: Path | None, name: str, result: ScoredProbe, started: float
    ) -> dict[str, Any]:
        return {
            "step": step,
            "probe": name,
            "metric": PROBE_KINDS[name].metric,
            "value": result.metric,
            "interval": [result.interval.low, result.interval.high],
            "per_language": {
                language: {"value": value, "interval": [interval.low, interval.high]}
                for language, (value, interval) in sorted(result.per_language.items())
            },
            "layer_weights": result.layer_weights,
            "train_utterances": result.train_utterances,
            "test_utterances": result.test_utterances,
            "train_speakers": result.train_speakers,
            "test_speakers": result.test_speakers,
            "checkpoint": path.name if path is not None else None,
            "probe_set": self.fingerprint,  # which utterances: values compare only within one
            "audio_hours": self._audio_hours(step, path),  # at most: padding included
            "seconds": time.perf_counter() - started,
            "time": time.time(),
        }

    def _baseline(self, name: str) -> dict[str, Any]:
        first = next((r for r in self.log.records() if r["step"] == 0 and r["probe"] == name), None)
        return {
            "baseline": first["value"] if first else None,
            "baseline_interval": first["interval"] if first else None,
        }

    def _audio_hours(self, step: int, path: Path | None) -> float:
        """Audio seen by ``step``, at the effective batch of the world size that wrote the checkpoint."""
        world = (read_json_object(path / META_NAME) or {}).get("world_size", 1) if path else 1
        return step * effective_batch_hours(for_world_size(self.cfg, world), world)


def describe(record: dict[str, Any]) -> str:
    """One line: the probe's value at a step, its interval, and the baseline's."""
    low, high = record["interval"]
    text = (
        f"update {record['step']}: {PROBE_KINDS[record['probe']].title} {100 * record['value']:.1f}% "
        f"[{100 * low:.1f}, {100 * high:.1f}]"
    )
    if record["step"] == 0:
        return text + " (random init: the baseline)"
    if record.get("baseline") is not None:
        b_low, b_high = record["baseline_interval"]
        text += (
            f", random-init baseline {100 * record['baseline']:.1f}% [{100 * b_low:.1f}, {100 * b_high:.1f}]"
        )
    return text
