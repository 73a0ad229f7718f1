"""The `xlsr` command: shard, stats, plan, train, launch, export, import, probe, evaluate, plot, demo.

These subcommands and their flags are a contract with users' scripts: extend them, never rename.
This module only parses arguments, calls the typed entry points (`xlsr.train`, `sharding.shard`,
`launchers`...) and maps errors to exit codes; nothing imports it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from xlsr.process import USER_ERROR_EXIT_CODE, UserError


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/xlsr_300m.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 data.max_tokens=1400000"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from xlsr.process import PREEMPTED_EXIT_CODE, StopRequest

    stop = StopRequest()
    stop.install(ctrl_c=True)  # before torch is even imported: a stop during start-up still exits 75
    from xlsr.config import load_config
    from xlsr.faults import read_faults

    read_faults()  # a malformed XLSR_FAULT is one line here, not an error in every rank
    cfg = load_config(args.config, args.overrides)
    if stop.requested:
        return PREEMPTED_EXIT_CODE
    from xlsr.engine.run import train

    return train(cfg, stop=stop).exit_code


def cmd_launch_local(args: argparse.Namespace) -> int:
    from launchers.local import launch_local
    from xlsr.config import load_config
    from xlsr.data.sources import check_data_sources
    from xlsr.faults import read_faults
    from xlsr.process import ABORTED_EXIT_CODE

    read_faults()
    try:
        check_data_sources(load_config(args.config, args.overrides).data)  # fail here, not in N processes
    except KeyboardInterrupt:  # Ctrl-C before any process started: nothing to save
        print("interrupted before training started", file=sys.stderr)
        return ABORTED_EXIT_CODE
    return launch_local(args.nproc, ["--config", args.config, *args.overrides])


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from xlsr.config import load_config
    from xlsr.data.sources import check_data_sources
    from xlsr.plan import PlanRequest, make_plan, plan_json, plan_text

    cfg = load_config(args.config, args.overrides)
    if cfg.data.train:  # an index listed twice, or shared with data.valid, is refused as by `train`
        check_data_sources(cfg.data)
    request = PlanRequest(
        gpus=args.gpus, nodes=args.nodes, gpu=args.gpu, measured=args.measured, mfu=args.mfu,
        decode_seconds=args.decode_seconds, storage_gbps=args.storage_gbps, max_passes=args.max_passes,
    )  # fmt: skip
    plan = make_plan(cfg, request)
    print(json.dumps(plan_json(plan), indent=2) if args.json else plan_text(plan))
    return 0


def _add_plan_command(commands: argparse._SubParsersAction) -> None:
    from xlsr.hardware import GPU_KEYS
    from xlsr.plan.request import DEFAULT_GPU, DEFAULT_MFU, PlanRequest

    defaults = PlanRequest(gpus=1)

    plan = commands.add_parser(
        "plan", help="memory, speed, cost, data passes and loader cores of a run, before launching it"
    )
    _add_train_arguments(plan)
    plan.add_argument("--gpus", type=int, required=True, help="GPUs in the job (the world size)")
    plan.add_argument("--nodes", type=int, help="nodes (default: GPUs / launcher.gpus_per_node)")
    plan.add_argument(
        "--gpu",
        type=str.lower,
        choices=GPU_KEYS,
        help=f"the card (default: launcher.gpu, else {DEFAULT_GPU})",
    )
    plan.add_argument("--measured", help="gpu_check.json of `make gpu-check`: use its measured MFU")
    plan.add_argument("--mfu", type=float, help=f"model FLOPs utilisation to assume (default {DEFAULT_MFU})")
    plan.add_argument(
        "--decode-seconds", type=float, default=defaults.decode_seconds,
        help="CPU seconds of decoding the shards to measure the loader's speed (0: a default rate)",
    )  # fmt: skip
    plan.add_argument(
        "--storage-gbps", type=float, default=defaults.storage_gbps, help="checkpoint write rate, GB/s"
    )
    plan.add_argument(
        "--max-passes", type=float, default=defaults.max_passes,
        help="flag (corpus, language) streams repeated more often than this over the run",
    )  # fmt: skip
    plan.add_argument("--json", action="store_true", help="print one JSON object (keys name their units)")
    plan.set_defaults(func=cmd_plan)


def cmd_export(args: argparse.Namespace) -> int:
    from xlsr.pretrained import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, target=args.to, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from xlsr.pretrained import import_checkpoint

    out = import_checkpoint(
        args.source, args.out, source_format=getattr(args, "from"), overwrite=args.overwrite
    )
    print(f"wrote {out}; continue pretraining with checkpoint.init_from={out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xlsr.demo import run_demo

    return run_demo(
        Path(args.out), nproc=args.nproc, overrides=args.overrides, corpus_scale=args.corpus_scale
    )


def cmd_probe(args: argparse.Namespace) -> int:
    import json

    from xlsr.evaluation.offline import probe_checkpoint
    from xlsr.fileio import atomic_write_text

    probe = probe_checkpoint(
        args.checkpoint, args.data, layer=args.layer, max_seconds_per_language=args.max_seconds_per_language,
        crop_seconds=args.crop_seconds, device=args.device,
    )  # fmt: skip
    report = probe.as_dict()
    accuracy, held_out, fitted = (
        report[k] for k in ("probe_lid_accuracy", "test_utterances", "train_utterances")
    )
    layer = args.layer or "last"
    print(
        f"LID probe, layer {layer}: accuracy {accuracy:.3f} on {held_out} held-out utterances "
        f"({fitted} to train)"
    )
    for language, language_accuracy in report["per_language"].items():
        print(f"  {language:<12} {language_accuracy:.3f}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from xlsr.evaluation.evaluate import evaluate_run, trend_lines

    if args.every < 1:
        raise UserError(f"--every must be at least 1, got {args.every}")
    written = evaluate_run(
        args.run_dir, every=args.every, valid=args.valid, device=args.device, follow_pid=args.follow
    )
    print(f"{len(written)} probe result(s) written to {Path(args.run_dir) / 'probes.jsonl'}")
    for line in trend_lines(args.run_dir):
        print(line)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from xlsr.evaluation.plot import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out or Path(args.run_dir) / 'curves.png')}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from sharding.cli import run_shard

    if not args.slurm:
        return run_shard(args)
    from launchers.slurm.cli import run_shard_array
    from sharding.cli import shard_job_from_args

    return run_shard_array(shard_job_from_args(args), args)


def _add_shard_command(commands: argparse._SubParsersAction) -> None:
    from launchers.slurm.cli import add_shard_slurm_arguments
    from sharding.cli import add_shard_arguments

    shard = commands.add_parser("shard", help="turn a raw corpus into 16 kHz WebDataset shards")
    add_shard_arguments(shard)
    add_shard_slurm_arguments(shard)  # --slurm --array N [--partition ...] [--dry-run]
    shard.set_defaults(func=cmd_shard)


def _add_launch_command(commands: argparse._SubParsersAction) -> None:
    from launchers.slurm.cli import (
        add_slurm_arguments,
        add_status_arguments,
        run_launch_slurm,
        run_launch_status,
    )

    launch = commands.add_parser("launch", help="start a multi-process training job")
    where = launch.add_subparsers(dest="where", required=True, metavar="WHERE")
    local = where.add_parser("local", help="N processes on this machine")
    local.add_argument("--nproc", type=int, default=1, help="processes (one per GPU, or CPU workers)")
    _add_train_arguments(local)
    local.set_defaults(func=cmd_launch_local)
    slurm = where.add_parser("slurm", help="submit to SLURM (submitit): one task per GPU, requeue, resume")
    add_slurm_arguments(slurm)
    slurm.set_defaults(func=run_launch_slurm)
    status = where.add_parser("status", help="state, last metrics and log paths of a SLURM run directory")
    add_status_arguments(status)
    status.set_defaults(func=run_launch_status)


def build_parser() -> argparse.ArgumentParser:
    from sharding.cli import add_stats_arguments, run_stats

    parser = argparse.ArgumentParser(prog="xlsr", description="wav2vec 2.0 / XLS-R pretraining")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks of user errors (or XLSR_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shard_command(commands)

    stats = commands.add_parser("stats", help="hours per language before/after upsampling, with a plot")
    add_stats_arguments(stats)
    stats.set_defaults(func=run_stats)

    _add_plan_command(commands)

    train = commands.add_parser("train", help="pretrain in this process (reads RANK/WORLD_SIZE if set)")
    _add_train_arguments(train)
    train.set_defaults(func=cmd_train)
    _add_launch_command(commands)
    _add_weights_commands(commands)
    _add_evaluation_commands(commands)

    demo = commands.add_parser(
        "demo", help="generate a corpus, shard it, pretrain a tiny model on 2 processes"
    )
    demo.add_argument("--out", default="demo_out", help="working directory (reused by later runs)")
    demo.add_argument("--nproc", type=int, default=2)
    demo.add_argument(
        "--corpus-scale",
        type=float,
        default=2.0,
        help="size of the generated speech corpus (1.0 = about 14 minutes)",
    )
    demo.add_argument("overrides", nargs="*", help="overrides for configs/tiny.yaml")
    demo.set_defaults(func=cmd_demo)
    return parser


def _add_weights_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a training checkpoint in another framework's format")
    export.add_argument("--to", choices=["hf"], required=True)
    export.add_argument(
        "checkpoint", help="a step-N checkpoint, an `xlsr import` file, an HF directory or a fairseq .pt"
    )
    export.add_argument("out_dir")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT_DIR")
    export.set_defaults(func=cmd_export)

    imp = commands.add_parser("import", help="convert a published checkpoint to continue pretraining from it")
    imp.add_argument("--from", choices=["hf", "fairseq"], required=True)
    imp.add_argument("source", help="HF model directory or fairseq .pt file")
    imp.add_argument("out", help="output .pt file for checkpoint.init_from")
    imp.add_argument("--overwrite", action="store_true", help="replace an earlier `xlsr import` file")
    imp.set_defaults(func=cmd_import)


def _add_evaluation_commands(commands: argparse._SubParsersAction) -> None:
    probe = commands.add_parser("probe", help="language-ID probe on a checkpoint (ours, fairseq, HF export)")
    probe.add_argument(
        "checkpoint", help="step-N/ checkpoint, `xlsr import` file, HF directory or fairseq .pt"
    )
    probe.add_argument(
        "--data", nargs="+", required=True, help="index.json of held-out shards (or its directory)"
    )
    probe.add_argument("--layer", type=int, default=0, help="transformer layer to read (1 = first; 0 = last)")
    probe.add_argument("--max-seconds-per-language", type=float, default=300.0)
    probe.add_argument("--crop-seconds", type=float, default=20.0, help="longer utterances are cropped")
    probe.add_argument("--device", default="cpu")
    probe.add_argument("--json", help="also write the result as JSON")
    probe.set_defaults(func=cmd_probe)

    evaluate = commands.add_parser(
        "evaluate", help="probe every checkpoint of a run that has no probe results yet (probes.jsonl)"
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--every", type=int, default=1, help="only checkpoints of every N-th update")
    evaluate.add_argument(
        "--valid", nargs="+", help="held-out index.json to probe on (default: the run's data.valid)"
    )
    evaluate.add_argument("--device", help="default: cuda when available, else cpu")
    evaluate.add_argument("--follow", type=int, metavar="PID", help=argparse.SUPPRESS)
    evaluate.set_defaults(func=cmd_evaluate)

    plot = commands.add_parser(
        "plot", help="loss, validation, probe, schedule and throughput curves of a run"
    )
    plot.add_argument("run_dir")
    plot.add_argument("-o", "--out", help="PNG to write (default RUN_DIR/curves.png)")
    plot.set_defaults(func=cmd_plot)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("XLSR_LOG_LEVEL", "INFO"), format="%(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, OSError) as exc:
        if args.debug or os.environ.get("XLSR_DEBUG") == "1":
            traceback.print_exc()
        print(f"xlsr {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    text = str(exc).strip()
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the worker's message
        text = text.splitlines()[-1].partition(": ")[2] or text.splitlines()[-1]
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
