"""`xlsr shard` and `xlsr stats`, as argument builders plus runners that the main CLI mounts.

    xlsr shard INPUT OUT_DIR [--layout ...] [--workers N] [--shard-size 1GB] ...
    xlsr stats OUT_DIR/index.json [--alpha 0.5] [--corpus-alpha 0.5] [--plot hours.png]

Both can also run standalone: `python -m sharding.cli shard ...`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from sharding.manifest import LAYOUTS, load_records
from sharding.stats import format_hours_table, load_index, plot_hours
from sharding.writer import SKIPPED_NAME, ShardWriterConfig, read_skipped, write_shards

MAX_LISTED_SKIPS = 20
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '500MB', '2G', '1GiB' -> 2**30, '123' -> bytes. For argparse `type=`."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 500MB, 1GB, 2GiB or a number of bytes")
    number, prefix, suffix = float(match[1]), match[2].upper(), (match[3] or "").upper()
    unit = 1024 ** " KMGT".index(prefix) if suffix == "IB" and prefix else _UNITS[prefix]
    size = int(number * unit)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


# --------------------------------------------------------------------------------------------------
# xlsr shard


def add_shard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = "Convert raw audio to 16 kHz mono WebDataset shards per (corpus, language)."
    parser.add_argument("input", type=Path, help="corpus directory or manifest (.tsv/.jsonl)")
    parser.add_argument("out_dir", type=Path, help="output directory for shards, index.json, skipped.tsv")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="how to read INPUT (default: 'manifest' for a file, 'dir' = INPUT/<language>/**/*.wav|flac|...)",
    )
    parser.add_argument("--corpus", help="corpus name (default: 'corpus', or the importer's name)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument(
        "--shard-size", type=parse_size, default="1GB", help="target shard size (default 1GB)"
    )
    parser.add_argument(
        "--format", choices=("flac", "int16"), default="flac", help="audio encoding in the tars"
    )
    parser.add_argument("--max-seconds", type=float, help="split longer recordings into segments of <= this")
    parser.add_argument("--min-seconds", type=float, default=0.25, help="skip shorter files (default 0.25)")
    parser.add_argument("--drop-silent", action="store_true", help="skip files whose peak is below 1e-4")
    parser.add_argument("--seed", type=int, default=0, help="seed of the in-stream shuffle (default 0)")
    parser.add_argument("--task-index", type=int, default=0, help="this task's index in [0, --num-tasks)")
    parser.add_argument("--num-tasks", type=int, default=1, help="split the shards over this many tasks")
    parser.add_argument("--alpha", type=float, default=0.5, help="language upsampling alpha for the table")
    parser.add_argument(
        "--corpus-alpha", type=float, default=0.5, help="corpus upsampling alpha for the table"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from launchers.slurm import add_shard_slurm_arguments

    add_shard_slurm_arguments(parser)  # --slurm --array N [--partition ...] [--dry-run]
    return parser


def run_shard(args: argparse.Namespace) -> int:
    """Shard INPUT into OUT_DIR; print the hours table and the skipped files. Returns an exit code."""
    if not args.input.exists():
        return _error(f"input not found: {args.input}")
    if not 0 <= args.task_index < args.num_tasks:
        return _error(f"--task-index must lie in [0, {args.num_tasks}), got {args.task_index}")
    if getattr(args, "slurm", False):
        from launchers.slurm import submit_shard_array

        return submit_shard_array(args)
    layout = args.layout or ("manifest" if args.input.is_file() else "dir")
    try:
        records = load_records(args.input, layout, args.corpus)
        cfg = ShardWriterConfig(
            out_dir=args.out_dir,
            shard_size_bytes=args.shard_size,
            audio_format=args.format,
            max_seconds=args.max_seconds,
            min_seconds=args.min_seconds,
            drop_silent=args.drop_silent,
            workers=args.workers,
            seed=args.seed,
        )
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    if not records:
        return _error(f"no audio files found in {args.input} with --layout {layout}")
    print(f"{len(records)} source files from {args.input} (layout {layout})", file=sys.stderr)
    try:
        result = write_shards(records, cfg, args.task_index, args.num_tasks, progress=not args.no_progress)
    except (RuntimeError, ValueError) as exc:
        return _error(str(exc), code=1)
    if args.num_tasks > 1:
        print(
            f"task {args.task_index}/{args.num_tasks}: {len(result['assigned'])} shard(s) "
            f"({result['written']} written, {result['already_complete']} already complete); "
            "index.json is written after all tasks (by the --slurm merge job, or a run without --num-tasks)"
        )
        return 0
    _print_summary(result, args)
    return 0


def _print_summary(index: dict, args: argparse.Namespace) -> None:
    totals = index["totals"]
    print(f"{totals['samples']} samples, {totals['seconds'] / 3600:.3f} h in {len(index['shards'])} shard(s)")
    try:
        print(format_hours_table(index, args.alpha, args.corpus_alpha))
    except ValueError as exc:  # a bad alpha must not hide that the shards were written
        print(f"(no upsampling table: {exc})")
    skipped = index["skipped"]
    reasons = ", ".join(f"{reason}: {count}" for reason, count in skipped["by_reason"].items())
    suffix = f" ({reasons})" if reasons else ""
    print(f"skipped {skipped['count']} files{suffix} -> {args.out_dir / SKIPPED_NAME}")
    rows = read_skipped(args.out_dir)
    for row in rows[:MAX_LISTED_SKIPS]:
        print(f"  {row['path']}\t{row['reason']}")
    if len(rows) > MAX_LISTED_SKIPS:
        print("  ...")
    print(f"index: {args.out_dir / 'index.json'}")


# --------------------------------------------------------------------------------------------------
# xlsr stats


def add_stats_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = "Hours per (corpus, language) of a shard index, before and after upsampling."
    parser.add_argument("index", type=Path, help="index.json written by `xlsr shard`, or its directory")
    parser.add_argument("--alpha", type=float, default=0.5, help="language upsampling alpha (default 0.5)")
    parser.add_argument(
        "--corpus-alpha", type=float, default=0.5, help="corpus upsampling alpha (default 0.5)"
    )
    parser.add_argument("--plot", type=Path, help="bar chart path (default: hours.png next to the index)")
    return parser


def run_stats(args: argparse.Namespace) -> int:
    """Print the hours table and write the before/after bar chart. Returns an exit code."""
    try:
        index = load_index(args.index)
        table = format_hours_table(index, args.alpha, args.corpus_alpha)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    print(table)
    if not index["shards"]:
        return 0
    index_dir = args.index if args.index.is_dir() else args.index.parent
    plot = plot_hours(index, args.plot or index_dir / "hours.png", args.alpha, args.corpus_alpha)
    print(f"plot: {plot}")
    return 0


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point: `python -m sharding.cli {shard,stats} ...`."""
    parser = argparse.ArgumentParser(prog="python -m sharding.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    add_shard_arguments(commands.add_parser("shard")).set_defaults(run=run_shard)
    add_stats_arguments(commands.add_parser("stats")).set_defaults(run=run_stats)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
