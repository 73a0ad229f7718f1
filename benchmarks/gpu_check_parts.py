"""The measuring parts of the GPU check (`benchmarks/gpu_check.py` runs this file as its worker).

    python benchmarks/gpu_check_parts.py --out DIR --index INDEX [--parts a,b] [--cpu-dry-run]

Each part writes ``DIR/part-<name>.json`` when it ends ({"status", "reason", "rows", "seconds"}), so a
worker that dies (an out-of-memory kill, a CUDA error) loses only the part it was in: the
orchestrator starts a new worker for the rest. Parts, in the order they run:

- ``model_speed``: xlsr vs HF ``Wav2Vec2ForPreTraining`` (SDPA), BASE and 0.3B, bf16, 8 × 20 s crops
  (`benchmarks/model_speed.py`, fewer iterations);
- ``training``: 0.3B FSDP2 bf16 on one GPU without and with activation checkpointing, 1B with it,
  through the real `Trainer` and `DataStream` (the shards given by ``--index``);
- ``host_overhead``: the tiny model's update on a repeated pinned batch: wall time, GPU kernel time,
  the time not covered by kernels, kernel launches and host syncs per update;
- ``max_batch``: the largest micro-batch of 20 s crops that one update (FSDP2, bf16, activation
  checkpointing) fits in 80 GB, for 0.3B / 1B / 2B.

With ``--cpu-dry-run`` every part runs at tiny sizes on the CPU; what needs CUDA is skipped and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xlsr.config import SAMPLE_RATE, load_config  # noqa: E402
from xlsr.data.source import FixedSource  # noqa: E402
from xlsr.data.stages import Batch  # noqa: E402
from xlsr.engine.distributed import DistEnv, init_distributed, shutdown  # noqa: E402
from xlsr.engine.trainer import Trainer  # noqa: E402
from xlsr.fileio import atomic_write_text  # noqa: E402
from xlsr.hardware import gpu_spec  # noqa: E402
from xlsr.objectives import build_objective  # noqa: E402
from xlsr.plan.memory import (  # noqa: E402
    ParameterCounts,
    Ranks,
    estimate_memory,
    full_crops,
    largest_fitting_crops,
)
from xlsr.process import StopRequest  # noqa: E402

PARTS = ("model_speed", "training", "host_overhead", "max_batch")
CROP = 20 * SAMPLE_RATE  # XLS-R's 20 s crops
# An 80 GB H100 as `nvidia-smi` reports it; the allocator gets this minus the context.
H100_80GB_BYTES = gpu_spec("h100").memory_bytes


@dataclasses.dataclass
class Context:
    out: Path
    index: str
    dry_run: bool
    deadline: float  # time.time() after which parts stop starting new runs
    env: DistEnv | None = None

    @property
    def cuda(self) -> bool:
        return not self.dry_run

    def time_left(self) -> float:
        return self.deadline - time.time()


class OutOfTime(RuntimeError):
    pass


def check_time(ctx: Context, needed_s: float, what: str) -> None:
    if ctx.time_left() < needed_s:
        raise OutOfTime(f"{ctx.time_left():.0f} s left, {what} needs about {needed_s:.0f} s")


# --------------------------------------------------------------------------------------------------
# Shared helpers


def train_config(ctx: Context, config: str, run_dir: Path, *overrides: str):
    """A recipe with the check's settings: one rank, one micro-batch per update, no W&B, no saves."""
    return load_config(
        str(REPO / "configs" / config),
        [
            f"run_dir={run_dir}",
            f"data.train=[{ctx.index}]",
            "optim.batch_tokens=0",
            "optim.update_freq=1",
            "optim.max_update=1000000",
            "logging.wandb_mode=disabled",
            "logging.progress=false",
            "checkpoint.interval_updates=1000000",
            *overrides,
        ],
    )


def dry_run_model(ctx: Context, config: str) -> str:
    return "tiny.yaml" if ctx.dry_run else config


class RepeatedBatch(FixedSource):
    """A data source of one synthetic batch of equal-length crops, repeated, so that no loader time
    enters the measurement (pinned on a GPU machine, as the DataLoader pins)."""

    def __init__(self, crops: int, samples: int, pin: bool, seed: int = 0):
        super().__init__()
        source = torch.randn(crops, samples, generator=torch.Generator().manual_seed(seed))
        self.repeated = Batch(source=source, padding_mask=None, num_samples=crops * samples)
        if pin:
            self.repeated.pin_memory()

    def batch(self, index: int) -> Batch:
        return self.repeated


def release(trainer: Trainer | None) -> None:
    """Close a trainer's loader and backend and give its memory back before the next run."""
    if trainer is not None:
        trainer.close()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------
# Part 2: model speed, xlsr vs HF


def part_model_speed(ctx: Context) -> dict:
    import model_speed  # benchmarks/model_speed.py, beside this file

    if ctx.dry_run:
        specs = [("tiny", "tiny.yaml")]
        settings = ["--device", "cpu", "--batch-size", "2", "--crop-seconds", "2", "--iters", "2"]
        settings += ["--warmup", "1", "--threads", "1", "--dtype", "bf16"]
    else:
        specs = [("BASE", "base.yaml"), ("0.3B", "xlsr_300m.yaml")]
        settings = ["--device", "cuda", "--batch-size", "8", "--crop-seconds", "20", "--iters", "10"]
        settings += ["--warmup", "3", "--dtype", "bf16"]
    rows = []
    for name, config in specs:
        check_time(ctx, 40, f"model speed {name}")
        result = model_speed.measure(["--config", str(REPO / "configs" / config), *settings])
        parity = result["parity_rel_diff_contrastive_loss_eval"]
        for contender, r in result["results"].items():
            rows.append(
                {
                    "model": name,
                    "contender": contender,
                    "batch": f"{result['batch_size']} × {result['crop_seconds']:g} s",
                    "step_ms": r["median_ms"],
                    "audio_s_per_s": r["audio_s_per_s"],
                    "tflops": r["tflops"],
                    "mfu": r["mfu"],
                    "peak_memory_gib": r["peak_memory_gib"],
                    "speedup_vs_hf": None if contender == "xlsr" else r["ratio_vs_xlsr"],
                    "parity_rel_diff": parity.get(contender),
                }
            )
        release(None)
    return {"status": "passed", "rows": rows, "device": result["device"]}


# --------------------------------------------------------------------------------------------------
# Part 3: FSDP2 training through the real trainer and loader


TRAINING_RUNS = (("0.3B", "xlsr_300m.yaml", "none"), ("0.3B", "xlsr_300m.yaml", "layers"))
TRAINING_RUNS += (("1B", "xlsr_1b.yaml", "layers"),)


def part_training(ctx: Context) -> dict:
    # More measured updates than the DataLoader keeps prefetched (4 per worker), so that a loader too
    # slow for the GPU shows as data wait.
    warmup, measured = (2, 2) if ctx.dry_run else (10, 50)
    workers = 1 if ctx.dry_run else max(2, min(8, (os.cpu_count() or 4) // 2))
    precision = "bf16"
    rows = []
    for name, config, checkpointing in TRAINING_RUNS:
        check_time(ctx, 45, f"training {name} AC={checkpointing}")
        run_dir = ctx.out / "work" / f"train-{name}-{checkpointing}"
        cfg = train_config(
            ctx, dry_run_model(ctx, config), run_dir, "distributed.backend=fsdp",
            f"distributed.precision={precision}", f"distributed.activation_checkpointing={checkpointing}",
            f"data.num_workers={workers}",
        )  # fmt: skip
        trainer = Trainer(cfg, ctx.env, StopRequest())
        try:
            trainer.restore()
            for _ in range(warmup):
                trainer.step()
            trainer.interval_metrics()  # starts a fresh interval: start-up and warm-up left out
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            for _ in range(measured):
                trainer.step()
            synchronize()
            metrics = trainer.interval_metrics()
        finally:
            release(trainer)
        rows.append(
            {
                "model": name if not ctx.dry_run else f"tiny (as {name})",
                "activation_checkpointing": checkpointing,
                "updates": measured,
                "audio_s_per_s": metrics["audio_s_per_s"],
                "mfu": metrics.get("mfu"),
                "tflops": metrics.get("tflops_per_s"),
                "peak_memory_gb": metrics["peak_memory_gb"],
                "data_wait": metrics["data_wait"],
                "crops_per_update": metrics["crops_per_update"],
                "loss": metrics["loss"],
                "data_workers": workers,
            }
        )
    return {"status": "passed", "rows": rows, "note": f"Shards: {ctx.index}"}


# --------------------------------------------------------------------------------------------------
# Part 5: host overhead per update (tiny model)


def part_host_overhead(ctx: Context) -> dict:
    rows = []
    backends = ["ddp", "fsdp"]
    if ctx.cuda and importlib.util.find_spec("deepspeed") is not None:
        backends.append("deepspeed")  # its syncs are its own (the sync-free guarantee is the torch backends')
    for backend in backends:
        check_time(ctx, 30, f"host overhead {backend}")
        run_dir = ctx.out / "work" / f"host-{backend}"
        precision = "fp32" if ctx.dry_run and backend == "ddp" else "bf16"
        cfg = train_config(  # DeepSpeed: ZeRO-2, the default stage
            ctx, "tiny.yaml", run_dir, f"distributed.backend={backend}", f"distributed.precision={precision}"
        )
        crops, seconds = (1, 1) if ctx.dry_run else (4, 4)
        data = RepeatedBatch(crops=crops, samples=seconds * SAMPLE_RATE, pin=ctx.cuda)
        trainer = Trainer(cfg, ctx.env, StopRequest(), data=data)
        try:
            rows.append({"backend": backend, "precision": precision, **measure_host_overhead(trainer, ctx)})
        finally:
            release(trainer)
    return {"status": "passed", "rows": rows}


def measure_host_overhead(trainer: Trainer, ctx: Context) -> dict[str, float]:
    """Wall and CPU time per update unprofiled; GPU kernel time, launches and syncs per update from a
    profiled and a sync-counted pass. Not covered = wall − kernel time: what the GPU waited for."""
    updates = 3 if ctx.dry_run else 30
    for _ in range(3 if ctx.dry_run else 10):
        trainer.step()
    synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(updates):
        trainer.step()
    synchronize()
    wall, cpu = (time.perf_counter() - wall) / updates, (time.process_time() - cpu) / updates
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiled = 2 if ctx.dry_run else 10
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(profiled):
            trainer.step()
        synchronize()
    # Kernels, copies and memsets: everything the GPU ran.
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = _union_seconds([(e.time_range.start, e.time_range.end) for e in kernels]) / profiled
    optimizer = sum(
        e.cpu_time_total for e in prof.key_averages() if e.key.startswith("Optimizer.step#")
    )  # microseconds
    result = {
        "wall_ms": 1e3 * wall,
        "cpu_ms": 1e3 * cpu,
        "gpu_busy_ms": 1e3 * busy if ctx.cuda else None,
        "not_covered_ms": 1e3 * max(wall - busy, 0.0) if ctx.cuda else None,
        "gpu_ops_per_update": len(kernels) / profiled if ctx.cuda else None,
        "optimizer_host_ms": optimizer / 1e3 / profiled,
        "syncs_per_update": count_syncs(trainer, 3) if ctx.cuda else None,
    }
    return result


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals given in microseconds, in seconds."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total / 1e6


def count_syncs(trainer: Trainer, updates: int) -> float:
    """Host syncs per update as CUDA's sync debug mode reports them (warnings, counted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(updates):
                trainer.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in caught) / updates


# --------------------------------------------------------------------------------------------------
# Part 4: the largest micro-batch that fits


@dataclasses.dataclass
class SearchResult:
    largest_fitting: int | None  # crops
    smallest_failing: int | None
    peak_at_largest: float | None  # bytes
    predicted_full_card: int | None  # crops, from the linear memory model at the card's capacity
    probes: list[tuple[int, float | None]]


def largest_fitting(
    probe: Callable[[int], float | None],
    first: int,
    second: int,
    capacity: float,
    full_card: float | None = None,
    max_probes: int = 6,
    margin: float = 0.97,
) -> SearchResult:
    """The largest n with ``probe(n)`` (peak bytes, None = out of memory) under ``capacity``.

    Peak memory is linear in the batch once activations dominate: two probes give the line, its
    crossing of ``margin × capacity`` is tried next, and then the gap between the largest fitting
    and the smallest failing size is bisected (with one step up first, to find the bound).
    """
    fits: dict[int, float] = {}
    fails: set[int] = set()
    probes: list[tuple[int, float | None]] = []

    def run(n: int) -> float | None:
        peak = probe(n)
        probes.append((n, peak))
        if peak is None or peak > capacity:
            fails.add(n)
            return None
        fits[n] = peak
        return peak

    n = first
    while run(n) is None and n > 1:  # even the first size failed: go down
        n = max(1, n // 2)
    slope = None
    if fits and run(max(second, n + 1)) is not None:
        (n1, p1), (n2, p2) = sorted(fits.items())[:2]
        slope = (p2 - p1) / (n2 - n1) if n2 != n1 else None
    predicted_full = None
    if slope and slope > 0:
        n1, p1 = min(fits.items())
        if full_card is not None:
            predicted_full = n1 + int((margin * full_card - p1) // slope)
        guess = n1 + int((margin * capacity - p1) // slope)
    else:
        guess = 2 * max(fits, default=1)
    while len(probes) < max_probes and fits:
        lo = max(fits)
        hi = min((f for f in fails if f > lo), default=None)
        if hi is not None and hi <= lo + 1:
            break
        if guess is not None and guess > lo and (hi is None or guess < hi):
            candidate, guess = guess, None
        elif hi is None:
            candidate = lo + max(1, lo // 20)  # one step above the largest fit: is it the bound?
        else:
            candidate = (lo + hi) // 2
        run(candidate)
    lo = max(fits, default=None)
    hi = min((f for f in fails if lo is None or f > lo), default=None)
    return SearchResult(lo, hi, fits.get(lo) if lo else None, predicted_full, probes)


def part_max_batch(ctx: Context) -> dict:
    rows = []
    sizes = (("0.3B", "xlsr_300m.yaml"), ("1B", "xlsr_1b.yaml"), ("2B", "xlsr_2b.yaml"))
    if ctx.dry_run:
        sizes = sizes[:1]
    capacity = full_card = None
    if ctx.cuda:
        free, total = torch.cuda.mem_get_info()
        outside_allocator = total - free - torch.cuda.memory_reserved()
        capacity = float(H100_80GB_BYTES - outside_allocator)
        full_card = float(total - outside_allocator)
        torch.cuda.set_per_process_memory_fraction(min(1.0, capacity / total))
    for name, config in sizes:
        check_time(ctx, 60, f"largest micro-batch {name}")
        rows.append(_search_model(ctx, name, config, capacity, full_card))
    if ctx.dry_run:
        return {
            "status": "skipped",
            "reason": "the capacity search needs CUDA memory statistics: the tiny model's probe steps "
            "ran on the CPU, the search did not",
            "rows": rows,
        }
    return {"status": "passed", "rows": rows, "capacity_bytes": capacity, "full_card_bytes": full_card}


def _search_model(ctx: Context, name: str, config: str, capacity, full_card) -> dict:
    run_dir = ctx.out / "work" / f"max-batch-{name}"
    samples = CROP if ctx.cuda else 2 * SAMPLE_RATE
    cfg = train_config(
        ctx, dry_run_model(ctx, config), run_dir, "distributed.backend=fsdp", "distributed.precision=bf16",
        "distributed.activation_checkpointing=layers", f"data.max_tokens={400 * samples}",
        f"data.max_sample_size={samples}",
    )  # fmt: skip
    holder: dict[str, Trainer | None] = {"trainer": None}

    def build() -> Trainer:
        trainer = Trainer(cfg, ctx.env, StopRequest(), data=RepeatedBatch(1, samples, pin=ctx.cuda))
        trainer.step()  # allocates the optimizer state, part of every later peak
        return trainer

    def probe(crops: int) -> float | None:
        check_time(ctx, 20, f"{name} probe of {crops} crops")
        if holder["trainer"] is None:
            holder["trainer"] = build()
        trainer = holder["trainer"]
        trainer.data = RepeatedBatch(crops, samples, pin=ctx.cuda)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            trainer.step()
            synchronize()
            return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0
        except torch.OutOfMemoryError:
            holder["trainer"] = None  # an update cut short leaves FSDP mid-step: rebuild
        release(trainer)  # outside the handler, whose traceback still holds the update's tensors
        return None

    started = time.perf_counter()
    try:
        if ctx.dry_run:
            probe(1)
            probe(2)
            return {"model": f"tiny (as {name})", "probe_steps": 2, "seconds": time.perf_counter() - started}
        counts = ParameterCounts.of(build_objective(cfg))
        # A first guess from `xlsr plan`'s memory model (which also counts the context the capacity excludes).
        guess = max(2, largest_fitting_crops(cfg, Ranks(1, 1), capacity, counts))
        result = largest_fitting(probe, max(1, guess // 4), max(2, guess // 2), capacity, full_card)
    finally:
        release(holder["trainer"])

    return {"model": name, **_search_row(result, cfg, counts), "seconds": time.perf_counter() - started}


def _search_row(result: SearchResult, cfg, counts: ParameterCounts) -> dict:
    """The search's figures, and `xlsr plan`'s memory model beside every measured peak (to calibrate
    it on a GPU: docs/planning.md)."""

    def model_gib(crops: int) -> float:
        return estimate_memory(cfg, Ranks(1, 1), "cuda", full_crops(cfg, crops), counts).allocated / 2**30

    largest, peak = result.largest_fitting, result.peak_at_largest
    return {
        "largest_fitting_crops": largest,
        "largest_fitting_audio_s": None if largest is None else 20 * largest,
        "smallest_failing_crops": result.smallest_failing,
        "peak_at_largest_gib": None if peak is None else peak / 2**30,
        "predicted_full_card_audio_s": None
        if result.predicted_full_card is None
        else 20 * result.predicted_full_card,
        "model_peak_at_largest_gib": None if largest is None else model_gib(largest),
        "model_vs_measured": None if largest is None or not peak else model_gib(largest) * 2**30 / peak,
        "probes": [[n, None if p is None else p / 2**30, model_gib(n)] for n, p in result.probes],
    }


# --------------------------------------------------------------------------------------------------
# The worker


PART_FUNCTIONS: dict[str, Callable[[Context], dict]] = {
    "model_speed": part_model_speed,
    "training": part_training,
    "host_overhead": part_host_overhead,
    "max_batch": part_max_batch,
}


def run_part(ctx: Context, name: str) -> dict:
    started = time.perf_counter()
    try:
        result = PART_FUNCTIONS[name](ctx)
    except OutOfTime as exc:
        result = {"status": "failed", "reason": f"out of time: {exc}"}
    except Exception as exc:  # a part's failure is a result: report it and go on with the next
        import traceback

        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    result["seconds"] = time.perf_counter() - started
    atomic_write_text(ctx.out / f"part-{name}.json", json.dumps(result, indent=2) + "\n")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--index", required=True, help="index.json of the shards the training part reads")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--cpu-dry-run", action="store_true")
    p.add_argument("--deadline", type=float, default=None, help="time.time() after which no run starts")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"unknown parts: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-dry-run", file=sys.stderr)
        return 2
    if args.cpu_dry_run:
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline or time.time() + 3600
    ctx = Context(args.out, args.index, args.cpu_dry_run, deadline)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)  # one process; DeepSpeed insists on seeing them
    ctx.env = init_distributed(600)
    try:
        for name in parts:
            result = run_part(ctx, name)
            print(f"[gpu_check] {name}: {result['status']} ({result['seconds']:.0f} s)", flush=True)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
