"""What the trainer measures: device-side sums per logging interval, reduced once per interval
into the logged metrics (losses in bits, accuracy, perplexities, throughput, MFU, memory), plus the
console line and the collapse alarms.

Nothing here syncs the device per micro-batch: the sums stay in one device tensor until ``reduce``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from xlsr.config import SAMPLE_RATE, TrainConfig
from xlsr.data.loader import SKIP_COUNTERS as DATA_SKIP_REASONS
from xlsr.engine.distributed import DistEnv
from xlsr.engine.flops import peak_flops, train_flops_per_crop

BITS = 1 / math.log(2)
# Per-micro-batch sums that pretraining_loss returns in its metrics.
LOSS_METRICS = (
    "loss_contrastive",
    "loss_diversity",
    "loss_feature_penalty",
    "correct",
    "sample_size",
    "prob_perplexity",
    "code_perplexity",
)
# Device-side sums kept between logging intervals, in this order.
SUM_KEYS = (
    "loss",
    *LOSS_METRICS,
    "micro_batches",
    "audio_samples",
    "crops",
    "updates",
    "grad_norm",
    "skipped",
)


class IntervalMeter:
    """Sums over one logging interval on this rank; ``reduce`` all-reduces them and starts anew.

    A stateful part of the checkpoint: a run stopped in the middle of an interval resumes its sums
    and clock, so the first line after a resume equals the uninterrupted run's (timings aside).
    """

    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.sums = torch.zeros(len(SUM_KEYS), device=env.device)
        self.data_wait = 0.0
        self._elapsed_before = 0.0  # seconds of this interval spent before the last restart
        self._started = time.perf_counter()

    def restart_clock(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def _add(self, key: str, value: torch.Tensor | float) -> None:
        # Host-side counts stay Python numbers: a new device tensor from a host value would sync.
        self.sums[SUM_KEYS.index(key)] += value.float() if torch.is_tensor(value) else value

    def add_micro_batch(
        self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], samples: int, crops: int
    ) -> None:
        self._add("loss", loss)
        for key in LOSS_METRICS:
            self._add(key, metrics[key])
        self._add("micro_batches", 1.0)
        self._add("audio_samples", float(samples))
        self._add("crops", float(crops))

    def add_update(self, skipped: torch.Tensor, grad_norm: torch.Tensor, data_wait: float) -> None:
        self._add("updates", 1.0)
        self._add("grad_norm", torch.where(skipped, 0.0, grad_norm))
        self._add("skipped", skipped.float())
        self.data_wait += data_wait

    def reduce(self, step: int, data_skips: dict[str, int]) -> dict[str, float]:
        """The interval's metrics (equal on every rank); starts the next interval."""
        elapsed = self.elapsed()
        sums = self.sums.clone()
        dist.all_reduce(sums)
        self.sums.zero_()
        skips = torch.tensor([float(data_skips.get(reason, 0)) for reason in DATA_SKIP_REASONS])
        if self.env.world_size > 1:
            dist.all_reduce(skips, group=self.env.cpu_group)
        totals = dict(zip(SUM_KEYS, sums.tolist(), strict=True))
        metrics = interval_metrics(totals, self.cfg, self.env.world_size, elapsed)
        metrics["data_wait"] = self.data_wait / elapsed
        metrics["eta_s"] = (
            elapsed / max(totals["updates"] / self.env.world_size, 1) * (self.cfg.last_update - step)
        )
        metrics.update(
            {f"data_skipped_{r}": n for r, n in zip(DATA_SKIP_REASONS, skips.tolist(), strict=True)}
        )
        metrics.update(hardware_metrics(self.cfg, self.env.device, metrics["audio_s_per_s"], totals))
        self.data_wait, self._elapsed_before = 0.0, 0.0
        self.restart_clock()
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "data_wait": self.data_wait, "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums.copy_(state["sums"])
        self.data_wait, self._elapsed_before = state["data_wait"], state["elapsed"]


def interval_metrics(s: dict[str, float], cfg: TrainConfig, world: int, elapsed: float) -> dict[str, float]:
    """Per-update averages from sums over all ranks (every rank counts each update once).

    Averages divide by the updates actually summed, so an interval cut short by a stop or a resume
    is as correct as a full one.
    """
    updates = max(s["updates"] / world, 1)
    applied = max(updates - s["skipped"] / world, 1)
    masked = max(s["sample_size"], 1)
    micro = max(s["micro_batches"], 1)
    audio_seconds = s["audio_samples"] / SAMPLE_RATE
    loss_diversity = s["loss_diversity"] / masked * BITS
    return {
        "loss": s["loss"] / masked * BITS,
        "loss_contrastive": s["loss_contrastive"] / masked * BITS,
        "loss_diversity": loss_diversity,
        "loss_feature_penalty": s["loss_feature_penalty"] / masked * BITS,
        "accuracy": s["correct"] / masked,
        "prob_perplexity": s["prob_perplexity"] / micro,
        "code_perplexity": s["code_perplexity"] / micro,
        "grad_norm": s["grad_norm"] / applied / world,  # each rank adds the global norm
        "audio_s_per_s": audio_seconds / elapsed / world,
        "frames_per_s": audio_seconds * cfg.model.frame_rate_hz / elapsed / world,
        "masked_frames_per_update": s["sample_size"] / updates,
        "crops_per_update": s["crops"] / updates,
        "diversity": loss_diversity / BITS / max(cfg.loss.diversity_weight, 1e-12),
    }


def hardware_metrics(
    cfg: TrainConfig, device: torch.device, audio_s_per_s: float, totals: dict[str, float]
) -> dict[str, float]:
    """Model FLOP/s per rank (analytic count at the interval's mean crop), MFU on a known GPU, memory."""
    mean_crop = int(totals["audio_samples"] / max(totals["crops"], 1))
    metrics = {"peak_memory_gb": peak_memory_gb(device)}
    if mean_crop > 0:
        flops_per_audio_s = train_flops_per_crop(cfg.model, mean_crop) / (mean_crop / SAMPLE_RATE)
        metrics["tflops_per_s"] = flops_per_audio_s * audio_s_per_s / 1e12
        peak = peak_flops(device)
        if peak:
            metrics["mfu"] = metrics["tflops_per_s"] * 1e12 / peak
    return metrics


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes / 2**20 if sys.platform != "darwin" else kilobytes / 2**30


def stream_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per (corpus, language) telemetry as flat metrics: realised share of the sampled audio (against
    ``target_share``), hours drawn, passes over the stream's data."""
    metrics = {}
    for row in rows:
        prefix = f"data/{row['corpus']}/{row['language']}/"
        for key in ("realised_share", "target_share", "hours_drawn", "passes"):
            metrics[prefix + key] = row[key]
    return metrics


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
    """Known failure signatures of wav2vec 2.0 pretraining (described in docs/training.md).

    - uniform logits: the contrastive loss sits at log2(K+1) bits, chance level for K negatives;
      normal right after the start, so it waits until ``past_warmup``;
    - codebook collapse: few codes in use yet near-perfect accuracy (the negatives equal the
      positive, so the task is trivial);
    - an unused codebook: the diversity term (1 - prob_perplexity / codes) near 1.
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
