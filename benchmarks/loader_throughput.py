"""End-to-end loader throughput against the pure FLAC decode rate of the same samples (issue 4).

Two contenders, measured in the same run on the same shards, their repeats interleaved:

- **decode only**: read the tars with ``xlsr.data.shard_readers.iter_shard`` and decode every whole
  sample with ``xlsr.data.shards.decode_sample_into`` (the loader's decoder) into one reused buffer,
  timing only the decode calls. This is the ceiling: FLAC decoding and nothing else.
- **loader**: ``xlsr.data.loader.DataStream`` with ``num_workers=0`` (one in-process slot, so one core):
  tar reading, upsampled mixing, shuffle buffer, buckets, decode, normalize, crop, pad, collate.
  The rate counts the full length of every utterance that entered a batch, so it is comparable with the
  decode rate; without ``data.normalize`` the loader decodes only the crop, so when crops cut audio
  ("audio delivered / decoded" < 100%) the ratio credits it with audio it never decoded.

Rates are in × real time per CPU core: audio seconds ÷ process CPU seconds (torch and BLAS held to one
thread). CPU time rather than wall time, because other processes on the machine slow the wall clock of
both contenders unevenly; wall-clock figures are printed as well. The figure of merit is the ratio
loader / decode-only (target ≥ 85%), not the absolute rates, which depend on the CPU.

With ``--workers N`` the loader is also run with N DataLoader worker processes (wall clock only, as their
CPU time is not visible to this process).

    .venv/bin/python benchmarks/loader_throughput.py                      # base.yaml data settings
    .venv/bin/python benchmarks/loader_throughput.py --config configs/xlsr_300m.yaml   # normalize=True
    .venv/bin/python benchmarks/loader_throughput.py --index shards/cv/index.json --workers 4 --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: no BLAS/OpenMP helper threads (set before numpy loads)

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
import torch  # noqa: E402

from xlsr.config import load_config  # noqa: E402
from xlsr.data.loader import DataStream  # noqa: E402
from xlsr.data.shard_format import INDEX_NAME, read_index  # noqa: E402
from xlsr.data.shard_readers import iter_shard  # noqa: E402
from xlsr.data.shards import decode_sample_into  # noqa: E402
from xlsr.fileio import atomic_write_text  # noqa: E402

SAMPLE_RATE = 16_000
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "base.yaml"), help="recipe whose data to use")
    p.add_argument("--index", default=None, help="an existing index.json (default: build a demo shard set)")
    p.add_argument("--scale", type=float, default=1.0, help="demo corpus scale (1.0 = 12.5 min of audio)")
    p.add_argument(
        "--utterance-seconds",
        type=float,
        nargs=2,
        default=(1.5, 8.0),
        metavar=("MIN", "MAX"),
        help="demo utterance durations, uniform (default 1.5 8; CV is ~5 s, MLS/VoxPopuli 10-20 s)",
    )
    p.add_argument("--data-dir", default=None, help="where to build the demo shards (default: a temp dir)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved repeats of each contender")
    p.add_argument(
        "--seconds", type=float, default=None, help="audio seconds per loader round (default: ≈ corpus)"
    )
    p.add_argument("--workers", type=int, default=0, help="also time the loader with N worker processes")
    p.add_argument("--profile", action="store_true", help="cProfile one loader round and print the top")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("overrides", nargs="*", help="data config overrides, e.g. data.normalize=true")
    return p.parse_args(argv)


def build_demo_shards(directory: Path, scale: float, utterance_seconds: tuple[float, float]) -> Path:
    from sharding import ShardJob, shard
    from sharding.synthetic import generate_demo_corpus

    corpus = generate_demo_corpus(directory / "corpus", scale=scale, utterance_seconds=utterance_seconds)
    out = directory / "shards"
    if not (out / INDEX_NAME).is_file():
        # Small shards, so the bigger languages have several (as a real shard set does).
        workers = min(2, os.cpu_count() or 1)
        shard(
            ShardJob(corpus, out, corpus="demo", shard_size_bytes=2_000_000, workers=workers, progress=False)
        )
    return out / INDEX_NAME


def decode_round(urls: list[str], passes: int = 1) -> tuple[float, float, float, dict[str, int]]:
    """(audio seconds, CPU seconds, wall seconds) spent decoding only, and key → samples."""
    audio, cpu, wall, lengths = 0, 0.0, 0.0, {}
    buffer = np.empty(0, dtype=np.float32)  # reused: the ceiling pays no allocation per file
    for url in urls * passes:
        for sample in iter_shard(url):
            if len(buffer) < sample.num_samples:
                buffer = np.empty(sample.num_samples, dtype=np.float32)
            w0, c0 = time.perf_counter(), time.process_time()
            decoded = decode_sample_into(sample, buffer[: sample.num_samples])
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            audio += decoded
            lengths[sample.key] = decoded
    return audio / SAMPLE_RATE, cpu, wall, lengths


def loader_round(stream: DataStream, lengths: dict[str, int], seconds: float) -> dict[str, float]:
    """Consume batches until ``seconds`` of decoded audio went into batches."""
    decoded = delivered = batches = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while decoded < seconds * SAMPLE_RATE:
        batch = next(stream)
        decoded += sum(lengths[key] for key in batch.keys)
        delivered += batch.num_samples
        batches += 1
    return {
        "cpu": time.process_time() - c0,
        "wall": time.perf_counter() - w0,
        "decoded_s": decoded / SAMPLE_RATE,
        "delivered_s": delivered / SAMPLE_RATE,
        "batches": batches,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="xlsr-loader-bench-") as tmp:
        directory = Path(args.data_dir or tmp)
        index = (
            Path(args.index)
            if args.index
            else build_demo_shards(directory, args.scale, tuple(args.utterance_seconds))
        )
        return run(args, index)


def run(args: argparse.Namespace, index: Path) -> int:
    cfg = load_config(args.config, [f"data.train=[{index}]", "data.num_workers=0", *args.overrides])
    shards = read_index(index).shards
    urls = [s.url for s in shards]
    corpus_seconds = sum(s.seconds for s in shards)
    seconds = args.seconds or max(corpus_seconds, 1800.0)
    passes = max(1, round(seconds / corpus_seconds))  # decode-only rounds read the shards this often

    # Warm-up: page cache, imports, and the loader's shuffle buffer (filled before the first batch).
    _, _, _, lengths = decode_round(urls)
    stream = DataStream(cfg.data, seed=cfg.seed)
    loader_round(stream, lengths, min(seconds, 60.0))
    rounds = measure_rounds(args.rounds, urls, passes, stream, lengths, seconds)
    result = {
        "index": str(index),
        "config": args.config,
        "overrides": args.overrides,
        "data": dataclasses.asdict(cfg.data),
        "shards": len(shards),
        "corpus_seconds": corpus_seconds,
        "seconds_per_round": seconds,
        "rounds": args.rounds,
        "machine": machine(),
        **summarise(rounds),
    }
    print_result(args, result)
    if args.workers > 0:
        result["workers"] = time_workers(args, cfg, lengths, seconds)
    if args.profile:
        profile_loader(stream, lengths, seconds)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def measure_rounds(
    rounds: int, urls: list[str], passes: int, stream: DataStream, lengths: dict[str, int], seconds: float
) -> dict[str, list[float]]:
    """Decode-only and loader rounds, interleaved (alternating which goes first)."""
    measured: dict[str, list[float]] = {
        key: [] for key in ("decode", "decode_wall", "loader", "loader_wall", "delivered", "batches")
    }
    for r in range(rounds):
        for contender in ("decode", "loader") if r % 2 == 0 else ("loader", "decode"):
            if contender == "decode":
                audio_s, cpu, wall, _ = decode_round(urls, passes)
                measured["decode"].append(audio_s / cpu)
                measured["decode_wall"].append(audio_s / wall)
            else:
                res = loader_round(stream, lengths, seconds)
                measured["loader"].append(res["decoded_s"] / res["cpu"])
                measured["loader_wall"].append(res["decoded_s"] / res["wall"])
                measured["delivered"].append(res["delivered_s"] / res["decoded_s"])
                measured["batches"].append(res["batches"])
    return measured


def summarise(measured: dict[str, list[float]]) -> dict:
    median = {key: statistics.median(values) for key, values in measured.items()}
    return {
        "decode_only_x_realtime_per_core": median["decode"],
        "loader_x_realtime_per_core": median["loader"],
        "ratio": median["loader"] / median["decode"],
        "decode_only_x_realtime_wall": median["decode_wall"],
        "loader_x_realtime_wall": median["loader_wall"],
        "ratio_wall": median["loader_wall"] / median["decode_wall"],
        "delivered_over_decoded": median["delivered"],
        "batches_per_round": median["batches"],
        "all": {"decode": measured["decode"], "loader": measured["loader"]},
    }


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }


def print_result(args: argparse.Namespace, result: dict) -> None:
    data_cfg = result["data"]
    print(
        f"{result['shards']} shards, {result['corpus_seconds'] / 60:.1f} min of audio ({result['index']}); "
        f"data from {args.config} {' '.join(args.overrides)}: normalize={data_cfg['normalize']}, "
        f"max_sample_size={data_cfg['max_sample_size']}, max_tokens={data_cfg['max_tokens']}, "
        f"shuffle_buffer={data_cfg['shuffle_buffer']}"
    )
    print(
        f"median of {args.rounds} interleaved rounds; × real time = audio seconds / CPU seconds, one core "
        f"(wall clock in brackets)"
    )
    decode_rate, loader_rate = result["decode_only_x_realtime_per_core"], result["loader_x_realtime_per_core"]
    print(f"  decode only : {decode_rate:>8.0f}× real time  ({result['decode_only_x_realtime_wall']:.0f}×)")
    print(f"  loader      : {loader_rate:>8.0f}× real time  ({result['loader_x_realtime_wall']:.0f}×)")
    verdict = "meets" if result["ratio"] >= 0.85 else "BELOW"
    print(
        f"  ratio       : {100 * result['ratio']:>8.1f}%  ({100 * result['ratio_wall']:.1f}%)  "
        f"{verdict} the 85% target"
    )
    print(f"  audio delivered / decoded (crops): {100 * result['delivered_over_decoded']:.1f}%")


def profile_loader(stream: DataStream, lengths: dict[str, int], seconds: float) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    loader_round(stream, lengths, seconds)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


def time_workers(args: argparse.Namespace, cfg, lengths: dict[str, int], seconds: float) -> dict[str, float]:
    data_cfg = dataclasses.replace(cfg.data, num_workers=args.workers)
    stream = DataStream(data_cfg, seed=cfg.seed)
    loader_round(stream, lengths, min(seconds, 60.0) * args.workers)  # start workers, fill their buffers
    walls = []
    for _ in range(args.rounds):
        res = loader_round(stream, lengths, seconds * args.workers)
        walls.append(res["decoded_s"] / res["wall"])
    rate = statistics.median(walls)
    print(
        f"  loader, {args.workers} worker processes: {rate:.0f}× real time wall clock "
        f"({rate / args.workers:.0f}× per worker; {os.cpu_count()} cores on this machine)"
    )
    return {
        "workers": args.workers,
        "x_realtime_wall": rate,
        "x_realtime_wall_per_worker": rate / args.workers,
    }


if __name__ == "__main__":
    sys.exit(main())
