"""What the trainer measures: device-side sums per logging interval (the objective's and the
engine's), reduced once per interval into the logged metrics (the objective's losses and rates,
throughput, MFU, memory), plus the console line.

Nothing here syncs the device per micro-batch: the sums stay in one device tensor until ``reduce``.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from xlsr.config import SAMPLE_RATE, TrainConfig
from xlsr.data.loader import SKIP_COUNTERS as DATA_SKIP_REASONS
from xlsr.engine.distributed import DistEnv
from xlsr.engine.health import UpdateRecord
from xlsr.hardware import peak_flops
from xlsr.objectives import BITS, Objective

# Device-side sums the engine keeps between logging intervals besides the objective's (its
# ``spec.sums``, which sit between "loss" and these).
ENGINE_SUMS = ("micro_batches", "audio_samples", "crops", "updates", "grad_norm", "skipped")
# Per update of the interval, for the health sentinel: loss sum and loss frames (this rank's, summed
# over ranks in ``reduce``), then the global gradient norm and the skipped flag.
TRACE_COLUMNS = 4


class IntervalMeter:
    """Sums over one logging interval on this rank; ``reduce`` all-reduces them and starts anew.

    A stateful part of the checkpoint: a run stopped in the middle of an interval resumes its sums
    and clock, so the first line after a resume equals the uninterrupted run's (timings aside).
    """

    def __init__(self, cfg: TrainConfig, env: DistEnv, objective: Objective):
        self.cfg, self.env, self.objective = cfg, env, objective
        self.keys = ("loss", *objective.spec.sums, *ENGINE_SUMS)
        self.sums = torch.zeros(len(self.keys), device=env.device)
        self.trace = torch.zeros(cfg.logging.interval, TRACE_COLUMNS, device=env.device)
        self.traced = 0  # updates in ``trace`` (host-side: indexing by it needs no sync)
        self.updates: list[UpdateRecord] = []  # the last reduced interval's updates
        self.data_wait = 0.0
        self.sync_wait = 0.0  # host time blocked in collectives that wait for the slowest rank
        self._elapsed_before = 0.0  # seconds of this interval spent before the last restart
        self._started = time.perf_counter()

    def restart_clock(self) -> None:
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def _add(self, key: str, value: torch.Tensor | float) -> None:
        # Host-side counts stay Python numbers: a new device tensor from a host value would sync.
        self.sums[self.keys.index(key)] += value.float() if torch.is_tensor(value) else value

    def add_micro_batch(
        self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], samples: int, crops: int
    ) -> None:
        self._add("loss", loss)
        for key in self.objective.spec.sums:
            self._add(key, metrics[key])
        self._add("micro_batches", 1.0)
        self._add("audio_samples", float(samples))
        self._add("crops", float(crops))
        self.trace[self.traced, 0] += loss.float()
        self.trace[self.traced, 1] += metrics["sample_size"].float()

    def add_update(self, skipped: torch.Tensor, grad_norm: torch.Tensor, data_wait: float) -> None:
        self._add("updates", 1.0)
        self._add("grad_norm", torch.where(skipped, 0.0, grad_norm))
        self._add("skipped", skipped.float())
        self.trace[self.traced, 2] = grad_norm.float()
        self.trace[self.traced, 3] = skipped.float()
        self.traced += 1
        self.data_wait += data_wait

    def add_wait(self, seconds: float) -> None:
        self.sync_wait += seconds

    def reset(self) -> None:
        """Forget the interval so far (after a health rollback: its updates are undone)."""
        self.sums.zero_()
        self.trace.zero_()
        self.traced, self.data_wait, self.sync_wait, self._elapsed_before = 0, 0.0, 0.0, 0.0
        self.restart_clock()

    def reduce(self, step: int, data_skips: dict[str, int]) -> dict[str, float]:
        """The interval's metrics (equal on every rank); starts the next interval."""
        elapsed = self.elapsed()
        traced = self.trace[: self.traced]
        sums = torch.cat([self.sums, traced[:, :2].flatten()])
        dist.all_reduce(sums)  # one collective for the interval's sums and its per-update losses
        self.updates = update_records(step, sums[len(self.keys) :].view(-1, 2), traced[:, 2:])
        sums = sums[: len(self.keys)]
        self.sums.zero_()
        self.trace.zero_()
        self.traced = 0
        skips = torch.tensor([float(data_skips.get(reason, 0)) for reason in DATA_SKIP_REASONS])
        if self.env.world_size > 1:
            dist.all_reduce(skips, group=self.env.cpu_group)
        totals = dict(zip(self.keys, sums.tolist(), strict=True))
        metrics = interval_metrics(totals, self.cfg, self.env.world_size, elapsed)
        metrics.update(self.objective.interval_metrics(totals, totals["micro_batches"]))
        metrics["data_wait"] = self.data_wait / elapsed
        metrics["eta_s"] = (
            elapsed / max(totals["updates"] / self.env.world_size, 1) * (self.cfg.last_update - step)
        )
        metrics.update(
            {f"data_skipped_{r}": n for r, n in zip(DATA_SKIP_REASONS, skips.tolist(), strict=True)}
        )
        flops = self.objective.flops_per_crop
        metrics.update(hardware_metrics(flops, self.env.device, metrics["audio_s_per_s"], totals))
        metrics.update(self._rank_spread(elapsed, max(totals["updates"] / self.env.world_size, 1)))
        self.data_wait, self.sync_wait, self._elapsed_before = 0.0, 0.0, 0.0
        self.restart_clock()
        return metrics

    def _rank_spread(self, elapsed: float, updates: float) -> dict[str, float]:
        """Per update, each rank's own work (its time not spent waiting for other ranks) and data
        wait: min / median / max over ranks, and the rank with the most work (the straggler, whom
        the others wait for)."""
        mine = torch.tensor([(elapsed - self.sync_wait) / updates, self.data_wait / updates])
        ranks = [mine]
        if self.env.world_size > 1:
            ranks = [torch.zeros(2) for _ in range(self.env.world_size)]
            dist.all_gather(ranks, mine, group=self.env.cpu_group)
        table = torch.stack(ranks)
        metrics = {"slowest_rank": float(table[:, 0].argmax())}
        for column, name in enumerate(("rank_work_s", "rank_data_wait_s")):
            values = table[:, column]
            metrics |= {f"{name}_min": values.min().item(), f"{name}_median": values.median().item(),
                        f"{name}_max": values.max().item()}  # fmt: skip
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.cpu(),
            "trace": self.trace[: self.traced].cpu(),
            "data_wait": self.data_wait,
            "elapsed": self.elapsed(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums.copy_(state["sums"])
        trace = state.get("trace", torch.zeros(0, TRACE_COLUMNS))  # absent before the health sentinel
        # Room for the rest of the interval, whatever logging.interval the checkpoint was taken under.
        self.trace = torch.zeros(
            len(trace) + self.cfg.logging.interval, TRACE_COLUMNS, device=self.env.device
        )
        self.trace[: len(trace)] = trace
        self.traced = len(trace)
        self.data_wait, self._elapsed_before = state["data_wait"], state["elapsed"]


def update_records(step: int, losses: torch.Tensor, flags: torch.Tensor) -> list[UpdateRecord]:
    """The interval's updates ending at ``step``: (loss sum, frames) over all ranks per update, and
    (gradient norm, skipped) per update, as the health sentinel reads them."""
    rows = torch.cat([losses, flags], dim=1).tolist()
    first = step - len(rows) + 1
    return [
        UpdateRecord(first + i, loss / max(frames, 1.0) * BITS, grad_norm, skipped > 0)
        for i, (loss, frames, grad_norm, skipped) in enumerate(rows)
    ]


def interval_metrics(s: dict[str, float], cfg: TrainConfig, world: int, elapsed: float) -> dict[str, float]:
    """The engine's per-update averages from sums over all ranks (every rank counts each update once);
    the objective adds its own.

    Averages divide by the updates actually summed, so an interval cut short by a stop or a resume
    is as correct as a full one.
    """
    updates = max(s["updates"] / world, 1)
    applied = max(updates - s["skipped"] / world, 1)
    audio_seconds = s["audio_samples"] / SAMPLE_RATE
    return {
        "loss": s["loss"] / max(s["sample_size"], 1) * BITS,
        "grad_norm": s["grad_norm"] / applied / world,  # each rank adds the global norm
        "audio_s_per_s": audio_seconds / elapsed / world,
        "frames_per_s": audio_seconds * cfg.model.frame_rate_hz / elapsed / world,
        "masked_frames_per_update": s["sample_size"] / updates,
        "crops_per_update": s["crops"] / updates,
        "seconds_per_update": elapsed / updates,  # beside `xlsr plan`'s time_per_update_seconds
    }


def hardware_metrics(
    flops_per_crop: Callable[[int], float],
    device: torch.device,
    audio_s_per_s: float,
    totals: dict[str, float],
) -> dict[str, float]:
    """Model FLOP/s per rank (the objective's analytic count at the interval's mean crop), MFU on a
    known GPU, memory."""
    mean_crop = int(totals["audio_samples"] / max(totals["crops"], 1))
    metrics = {"peak_memory_gb": peak_memory_gb(device)}
    if mean_crop > 0:
        flops_per_audio_s = flops_per_crop(mean_crop) / (mean_crop / SAMPLE_RATE)
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


def format_console_line(
    step: int, total: int, metrics: dict[str, float], columns: tuple[tuple[str, str, str], ...]
) -> str:
    """``update s/total | eta | loss | <the objective's columns> | lr | grad_norm | speed | ...``."""
    parts = [f"update {step}/{total}"]
    if "eta_s" in metrics:
        minutes, seconds = divmod(int(metrics["eta_s"]), 60)
        parts.append(f"eta {minutes // 60}:{minutes % 60:02d}:{seconds:02d}")
    for key, fmt, label in (
        ("loss", ".3f", "loss"),
        *columns,
        ("lr", ".2e", "lr"),
        ("grad_norm", ".2f", "grad_norm"),
        ("audio_s_per_s", ".0f", "audio_s_per_s"),
        ("mfu", ".1%", "mfu"),
        ("data_wait", ".0%", "data_wait"),
    ):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:{fmt}}")
    return " | ".join(parts)
