"""The `xlsr` command: shard, stats, train, launch, export, import, demo.

These subcommands and their flags are a contract with users' scripts: extend them, never rename.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from xlsr.config import ConfigError, load_config
from xlsr.data.shards import ShardIndexError


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/xlsr_300m.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 data.max_tokens=1400000"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from xlsr.engine.distributed import init_distributed, shutdown
    from xlsr.engine.trainer import PREEMPTED_EXIT_CODE, run_training

    cfg = load_config(args.config, args.overrides)
    env = init_distributed(cfg.distributed.timeout_s)
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run_training(cfg, env)
    finally:
        shutdown()
    return PREEMPTED_EXIT_CODE if result.status == "preempted" else 0


def cmd_launch(args: argparse.Namespace) -> int:
    from launchers.local import launch_local

    load_config(args.config, args.overrides)  # fail here, not in N processes
    return launch_local(args.nproc, ["--config", args.config, *args.overrides])


def cmd_export(args: argparse.Namespace) -> int:
    from xlsr.pretrained import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, target=args.to)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from xlsr.pretrained import import_checkpoint

    out = import_checkpoint(args.source, args.out, source_format=getattr(args, "from"))
    print(f"wrote {out}; continue pretraining with checkpoint.init_from={out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xlsr.demo import run_demo

    return run_demo(
        Path(args.out), nproc=args.nproc, overrides=args.overrides, corpus_scale=args.corpus_scale
    )


def build_parser() -> argparse.ArgumentParser:
    from sharding.cli import add_shard_arguments, add_stats_arguments, run_shard, run_stats

    parser = argparse.ArgumentParser(prog="xlsr", description="wav2vec 2.0 / XLS-R pretraining")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    shard = commands.add_parser("shard", help="turn a raw corpus into 16 kHz WebDataset shards")
    add_shard_arguments(shard)
    shard.set_defaults(func=run_shard)

    stats = commands.add_parser("stats", help="hours per language before/after upsampling, with a plot")
    add_stats_arguments(stats)
    stats.set_defaults(func=run_stats)

    train = commands.add_parser("train", help="pretrain in this process (reads RANK/WORLD_SIZE if set)")
    _add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    launch = commands.add_parser("launch", help="start a multi-process training job")
    where = launch.add_subparsers(dest="where", required=True, metavar="WHERE")
    local = where.add_parser("local", help="N processes on this machine")
    local.add_argument("--nproc", type=int, default=1, help="processes (one per GPU, or CPU workers)")
    _add_train_arguments(local)
    local.set_defaults(func=cmd_launch)
    from launchers.slurm import add_slurm_arguments, add_status_arguments, launch_slurm, launch_status

    slurm = where.add_parser("slurm", help="submit to SLURM (submitit): one task per GPU, requeue, resume")
    add_slurm_arguments(slurm)
    slurm.set_defaults(func=launch_slurm)
    status = where.add_parser("status", help="state, last metrics and log paths of a SLURM run directory")
    add_status_arguments(status)
    status.set_defaults(func=launch_status)

    export = commands.add_parser("export", help="write a training checkpoint in another framework's format")
    export.add_argument("--to", choices=["hf"], required=True)
    export.add_argument(
        "checkpoint", help="a checkpoint directory (step-N) or a file written by `xlsr import`"
    )
    export.add_argument("out_dir")
    export.set_defaults(func=cmd_export)

    imp = commands.add_parser("import", help="convert a published checkpoint to continue pretraining from it")
    imp.add_argument("--from", choices=["hf", "fairseq"], required=True)
    imp.add_argument("source", help="HF model directory or fairseq .pt file")
    imp.add_argument("out", help="output .pt file for checkpoint.init_from")
    imp.set_defaults(func=cmd_import)

    demo = commands.add_parser(
        "demo", help="generate a corpus, shard it, pretrain a tiny model on 2 processes"
    )
    demo.add_argument("--out", default="demo_out", help="working directory (reused by later runs)")
    demo.add_argument("--nproc", type=int, default=2)
    demo.add_argument("--corpus-scale", type=float, default=1.0, help="size of the generated corpus")
    demo.add_argument("overrides", nargs="*", help="overrides for configs/tiny.yaml")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("XLSR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ShardIndexError) as exc:
        print(f"xlsr {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
