"""Measured peak memory of one real training update against `xlsr plan`'s memory model.

    python benchmarks/memory_check.py --config configs/base.yaml --crops 2 --crop-seconds 4 \
        [overrides...] [--json OUT]

Runs the real `Trainer` (one rank; under `torchrun`/`xlsr launch local`, every rank) on a repeated
synthetic batch of ``crops`` crops: one update to allocate the optimizer state, then the measured
update. On a GPU the peak is ``torch.cuda.max_memory_allocated``; on a CPU it is the peak of the
bytes held by PyTorch's CPU allocator, from the profiler's allocation events (``profile_memory``),
counted from before the trainer is built so that the model and optimizer state are included.
Prints the measured and the predicted peak, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check_parts import RepeatedBatch  # noqa: E402

from xlsr.config import SAMPLE_RATE, load_config  # noqa: E402
from xlsr.engine.distributed import DistEnv, init_distributed, shutdown  # noqa: E402
from xlsr.engine.trainer import Trainer  # noqa: E402
from xlsr.plan.memory import Ranks, estimate_memory, full_crops  # noqa: E402
from xlsr.process import StopRequest  # noqa: E402

MEASURED_UPDATE = "memory-check: measured update"


def measure_peak(cfg, env: DistEnv, crops: int) -> float:
    """Peak bytes allocated on this rank during the second update of ``crops`` crops."""
    data = RepeatedBatch(crops, cfg.data.max_sample_size, pin=env.device.type == "cuda")
    if env.device.type == "cuda":
        trainer = Trainer(cfg, env, StopRequest(), data=data)
        try:
            trainer.step()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            trainer.step()
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        finally:
            trainer.close()
    return _cpu_peak(cfg, env, data)


def _cpu_peak(cfg, env: DistEnv, data: RepeatedBatch) -> float:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Trainer(cfg, env, StopRequest(), data=data)
        try:
            trainer.step()
            with record_function(MEASURED_UPDATE):
                trainer.step()
        finally:
            trainer.close()
    events = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
    window = next(e for e in events if e.name == MEASURED_UPDATE)
    # total_allocated: the bytes the CPU allocator holds, counted from the profiler's start.
    return float(
        max(
            e.typed[1].total_allocated
            for e in events
            if e.typed[0] == _EventType.Allocation
            and window.start_time_ns <= e.start_time_ns <= window.end_time_ns
        )
    )


def _walk(nodes) -> Iterator:
    for node in nodes:
        yield node
        yield from _walk(node.children)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--crops", type=int, default=2)
    p.add_argument("--crop-seconds", type=float, default=4.0)
    p.add_argument("--json", type=Path, help="also write the result here (rank 0)")
    p.add_argument("overrides", nargs="*")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    samples = int(args.crop_seconds * SAMPLE_RATE)
    env = init_distributed(600)
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = load_config(
                args.config,
                [
                    f"run_dir={run_dir}", "data.train=[unused]", "optim.batch_tokens=0",
                    "optim.update_freq=1",
                    "logging.wandb_mode=disabled", "logging.progress=false",
                    "checkpoint.interval_updates=1000000", "validation.probe=false",
                    f"data.max_sample_size={samples}", f"data.max_tokens={args.crops * samples}",
                    *args.overrides,
                ],
            )  # fmt: skip
            measured = measure_peak(cfg, env, args.crops)
        ranks = Ranks(env.world_size, int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size)))
        predicted = estimate_memory(cfg, ranks, env.device.type, batch=full_crops(cfg, args.crops))
    finally:
        shutdown()
    result = {
        "config": args.config,
        "overrides": args.overrides,
        "world_size": env.world_size,
        "device": env.device.type,
        "crops": args.crops,
        "crop_seconds": args.crop_seconds,
        "measured_peak_bytes": measured,
        "predicted_peak_bytes": predicted.allocated,
        "predicted_phase": predicted.peak_phase,
        "ratio": predicted.allocated / measured,
    }
    if env.rank == 0:
        print(json.dumps(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
