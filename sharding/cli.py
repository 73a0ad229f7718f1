"""`xlsr shard` and `xlsr stats`: argument builders and runners that the main CLI mounts.

    xlsr shard INPUT OUT_DIR [--layout ...] [--workers N] [--shard-size 1GB] [--valid-seconds S] ...
    xlsr stats OUT_DIR/index.json [MORE/index.json ...] [--alpha 0.5] [--corpus-alpha 0.5] [--plot hours.png]
    xlsr stats --run RUN_DIR          # what a finished run drew per language, against the target

Both can also run standalone: `python -m sharding.cli shard ...`. This module only parses flags into
a `ShardJob`, calls `sharding.api`, prints, and turns errors into exit codes (2 for a user error);
`xlsr shard --slurm` is mounted and dispatched by `xlsr.cli`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from sharding.api import ShardError, ShardJob, shard, stats
from sharding.corpora import CORPUS_LAYOUTS, EVALUATION_SPLITS, LAYOUTS, MANIFEST_TREE
from sharding.hours import DEFAULT_CROP_SECONDS
from sharding.segment import DEFAULT_MAX_SECONDS
from xlsr.data.shard_format import AUDIO_FORMATS, INDEX_NAME, ShardIndexError, escape_path, index_file
from xlsr.process import USER_ERROR_EXIT_CODE
from xlsr.run_dir import SUMMARY_NAME
from xlsr.run_stats import RunStatsError, is_run_dir, stats_of_run

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
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = layouts_help()
    parser.add_argument("input", type=Path, help="corpus directory or manifest (.tsv/.jsonl)")
    parser.add_argument("out_dir", type=Path, help=f"output directory for shards, {INDEX_NAME}, skipped.tsv")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="how to read INPUT (default: 'manifest' for a file, else detected; the layouts are below)",
    )
    parser.add_argument("--corpus", help="corpus name (default: 'corpus', or the importer's name)")
    parser.add_argument(
        "--include-splits",
        type=_splits,
        default=frozenset(),
        help=f"comma-separated evaluation splits to import anyway ({', '.join(EVALUATION_SPLITS)}; "
        "default: none, so pretraining never sees test audio)",
    )
    parser.add_argument(
        "--include-unvalidated", action="store_true", help="Common Voice: also read other.tsv (unvalidated)"
    )
    parser.add_argument(
        "--language-map",
        type=Path,
        help="tsv of <corpus's language name><TAB><tag> overriding the BCP-47 mapping",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument(
        "--shard-size", type=parse_size, default="1GB", help="target shard size (default 1GB)"
    )
    parser.add_argument("--format", choices=AUDIO_FORMATS, default="flac", help="audio encoding in the tars")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="cut longer recordings at pauses into segments of at most this many seconds "
        f"(default {DEFAULT_MAX_SECONDS:g}; 0: keep recordings whole)",
    )
    parser.add_argument("--min-seconds", type=float, default=0.25, help="skip shorter files (default 0.25)")
    parser.add_argument("--drop-silent", action="store_true", help="skip files whose peak is below 1e-4")
    parser.add_argument("--seed", type=int, default=0, help="seed of the in-stream shuffle (default 0)")
    parser.add_argument(
        "--valid-seconds",
        type=float,
        default=0.0,
        help="hold out about this many seconds per (corpus, language) for validation, by speaker where "
        "known, else by recording, into OUT_DIR/valid/index.json (default 0: none)",
    )
    parser.add_argument("--task-index", type=int, default=0, help="this task's index in [0, --num-tasks)")
    parser.add_argument("--num-tasks", type=int, default=1, help="split the shards over this many tasks")
    parser.add_argument("--alpha", type=float, default=0.5, help="language upsampling alpha for the table")
    parser.add_argument(
        "--corpus-alpha", type=float, default=0.5, help="corpus upsampling alpha for the table"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def shard_job_from_args(args: argparse.Namespace) -> ShardJob:
    """The `ShardJob` the parsed flags describe; raises `ShardError` for inconsistent values."""
    return ShardJob(
        input=args.input,
        out_dir=args.out_dir,
        layout=args.layout,
        corpus=args.corpus,
        include_splits=args.include_splits,
        include_unvalidated=args.include_unvalidated,
        language_map=args.language_map,
        workers=args.workers,
        shard_size_bytes=args.shard_size,
        audio_format=args.format,
        max_seconds=args.max_seconds,
        min_seconds=args.min_seconds,
        drop_silent=args.drop_silent,
        seed=args.seed,
        task_index=args.task_index,
        num_tasks=args.num_tasks,
        language_alpha=args.alpha,
        corpus_alpha=args.corpus_alpha,
        progress=not args.no_progress,
        valid_seconds=args.valid_seconds,
    )


def layouts_help() -> str:
    """The expected tree of every layout, for `xlsr shard --help`."""
    lines = ["layouts (detected from their marks when --layout is not given):"]
    lines += [f"  {name:<13} {layout.tree}" for name, layout in CORPUS_LAYOUTS.items()]
    lines.append(f"  {'manifest':<13} {MANIFEST_TREE}")
    lines.append(
        "languages are mapped to BCP-47 tags (german, de_de, de-DE -> de); docs/corpora.md has the details"
    )
    return "\n".join(lines)


def _splits(text: str) -> frozenset[str]:
    splits = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(splits - set(EVALUATION_SPLITS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown split(s) {', '.join(unknown)}: choose from {', '.join(EVALUATION_SPLITS)}"
        )
    return splits


def run_shard(args: argparse.Namespace) -> int:
    """Shard INPUT into OUT_DIR; print the hours table and the skipped files. Returns an exit code."""
    try:
        result = shard(shard_job_from_args(args))
    except (ShardError, ShardIndexError, OSError) as exc:
        return _error(str(exc))
    except RuntimeError as exc:  # planned shards missing after a split run: not a usage error
        return _error(str(exc), code=1)
    print(result.sources_line(), file=sys.stderr)
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------------------
# xlsr stats


def add_stats_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = (
        "Hours per (corpus, language) of a shard index, before and after upsampling; or, with --run "
        "(or a run directory), the share of audio a finished run drew per stream against its target."
    )
    parser.add_argument(
        "index",
        type=Path,
        nargs="*",
        help=f"{INDEX_NAME} written by `xlsr shard`, or its directory; several: their mixture, as training "
        "would draw from them",
    )
    parser.add_argument(
        "--run", type=Path, dest="run_dir", help=f"a run directory of `xlsr train` (reads {SUMMARY_NAME})"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="language upsampling alpha (default 0.5)")
    parser.add_argument(
        "--corpus-alpha", type=float, default=0.5, help="corpus upsampling alpha (default 0.5)"
    )
    parser.add_argument(
        "--crop-seconds",
        type=float,
        default=DEFAULT_CROP_SECONDS,
        help="count each utterance at most this long, as training's crop does (data.max_sample_size / "
        f"16000; default {DEFAULT_CROP_SECONDS:g}, XLS-R's)",
    )
    parser.add_argument(
        "--plot", type=Path, help="bar chart path (default: hours.png next to the first index, if writable)"
    )
    return parser


def run_stats(args: argparse.Namespace) -> int:
    """Print the hours table and write the before/after bar chart, or a run's realised shares.
    Returns an exit code."""
    run_dir = args.run_dir
    if run_dir is None and len(args.index) == 1 and _is_run_dir(args.index[0]):
        run_dir = args.index[0]
    if run_dir is not None:
        try:
            print(stats_of_run(run_dir).table)
        except RunStatsError as exc:
            return _error(str(exc))
        return 0
    if not args.index:
        return _error("give an index (xlsr stats OUT_DIR/index.json) or a run (xlsr stats --run RUN_DIR)")
    plot = args.plot
    directory = index_file(args.index[0]).parent
    # A colleague's shard set is often read-only: then the default plot is left out, not an error.
    if plot is None and os.access(directory, os.W_OK | os.X_OK):
        plot = directory / "hours.png"
    try:
        result = stats(args.index, args.alpha, args.corpus_alpha, plot=plot, crop_seconds=args.crop_seconds)
    except (ShardError, ShardIndexError, OSError) as exc:
        return _error(str(exc))
    print(result.table)
    if result.valid_index_path is not None and len(result.index_paths) == 1:
        print(f"\nheld-out set: {escape_path(result.valid_index_path)}")
        print(result.split_table)
    elif result.split_table:
        print("\nheld-out sets:\n" + result.split_table)
    if result.plot is not None:
        print(f"plot: {escape_path(result.plot)}")
    elif plot is None:
        print(f"(no plot: {escape_path(directory)} is not writable; pass --plot PATH)")
    return 0


def _is_run_dir(path: Path) -> bool:
    return is_run_dir(path) and not (path / INDEX_NAME).exists()


def _error(message: str, code: int = USER_ERROR_EXIT_CODE) -> int:
    """One line on stderr (no traceback) and the exit code."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
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
