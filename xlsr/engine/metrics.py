"""Console, progress and Weights & Biases logging — rank 0 only, by construction."""

from __future__ import annotations

import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any

from xlsr.config import TrainConfig, atomic_write_text, to_dict

log = logging.getLogger("xlsr.train")

BITS = 1 / math.log(2)


def wandb_run_id(cfg: TrainConfig) -> str:
    """A run id that survives requeues: env override, else the one stored in the run directory."""
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    path = Path(cfg.run_dir) / "wandb_run_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = f"{Path(cfg.run_dir).name}-{secrets.token_hex(4)}"
    atomic_write_text(path, run_id)
    return run_id


class MetricsLogger:
    def __init__(self, cfg: TrainConfig, enabled: bool, run_id: str | None):
        self.cfg, self.enabled = cfg, enabled
        self.run = None
        if enabled and cfg.logging.wandb_mode != "disabled" and run_id:
            import wandb

            self.run = wandb.init(
                project=cfg.logging.wandb_project,
                entity=cfg.logging.wandb_entity,
                name=cfg.logging.run_name or Path(cfg.run_dir).name,
                id=run_id,
                resume="allow",
                dir=cfg.run_dir,
                mode=cfg.logging.wandb_mode,
                config=to_dict(cfg),
            )

    @property
    def wandb_dir(self) -> str | None:
        """The run's directory (what `wandb sync` takes), not its ``files/`` subfolder."""
        return str(Path(self.run.dir).parent) if self.run is not None else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self._guarded("log", lambda: self.run.log(metrics, step=step))

    def log_probability_table(self, hours: dict, probs: dict) -> None:
        if self.run is None:
            return
        import wandb

        rows = [[c, lang, hours[(c, lang)], probs[(c, lang)]] for (c, lang) in sorted(hours)]
        table = wandb.Table(columns=["corpus", "language", "hours", "sampling_probability"], data=rows)
        self._guarded("log", lambda: self.run.log({"data/upsampling": table}, step=0))

    def close(self) -> None:
        if self.run is not None:
            self._guarded("finish", self.run.finish)

    def _guarded(self, what: str, call) -> None:
        """W&B is an observer: if its service dies (SLURM signals every process of a job, and
        wandb-core exits on SIGTERM), training, checkpoints and metrics.jsonl go on without it."""
        try:
            call()
        except Exception as exc:  # wandb raises many types; none may cost a checkpoint
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("W&B %s failed (%s); W&B logging is off for the rest of this run", what, reason)
            self.run = None


def format_console_line(step: int, total: int, metrics: dict[str, float]) -> str:
    parts = [f"update {step}/{total}"]
    if "eta_s" in metrics:
        minutes, seconds = divmod(int(metrics["eta_s"]), 60)
        parts.append(f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}")
    for key, fmt in (
        ("loss", ".3f"),
        ("loss_contrastive", ".3f"),
        ("accuracy", ".3f"),
        ("code_perplexity", ".1f"),
        ("prob_perplexity", ".1f"),
        ("temperature", ".3f"),
        ("lr", ".2e"),
        ("grad_norm", ".2f"),
        ("audio_s_per_s", ".0f"),
        ("mfu", ".1%"),
        ("data_wait", ".0%"),
    ):
        if key in metrics:
            parts.append(f"{key.replace('loss_contrastive', 'contrast')} {metrics[key]:{fmt}}")
    return " | ".join(parts)


def collapse_alarms(
    metrics: dict[str, Any], num_negatives: int, num_codes: int, past_warmup: bool
) -> list[str]:
    """Known failure signatures of wav2vec 2.0 pretraining (reference spec §2.7, §6, §7.11).

    Uniform logits are normal at the start, so that alarm waits until ``past_warmup``.
    """
    alarms = []
    uniform = math.log2(num_negatives + 1)
    if past_warmup and abs(metrics.get("loss_contrastive", 0.0) - uniform) < 0.01:
        alarms.append(
            f"contrastive loss {metrics['loss_contrastive']:.3f} bits = log2(K+1): logits are uniform "
            "(stuck run; lower the LR or raise the effective batch)"
        )
    if metrics.get("code_perplexity", num_codes) < 0.05 * num_codes and metrics.get("accuracy", 0.0) > 0.99:
        alarms.append(
            f"code perplexity {metrics['code_perplexity']:.1f} with accuracy {metrics['accuracy']:.3f}: "
            "codebook collapse (all negatives equal the positive)"
        )
    if metrics.get("diversity", 0.0) > 0.95:
        alarms.append(f"diversity term {metrics['diversity']:.3f} near 1: the codebook is barely used")
    return alarms
