"""Does a finished multi-process run exit 0, every time? (issue 10, item 8)

Runs N consecutive tiny training jobs of a few updates through the real CLI,
``python -m xlsr launch local --nproc 2 --config configs/tiny.yaml ...`` (DeepSpeed ZeRO-3 by default,
CPU/gloo on a machine without a GPU), one after the other, each in a fresh run directory, and counts
their exit codes. A run passes when the job exits 0 and its final checkpoint is on disk; a run that
trained to the end but did not exit 0 (e.g. ``terminate called without an active exception`` at exit,
exit 250 = a rank killed by SIGABRT) fails, as it would fail a SLURM job.

Prints one line per run and a summary table; ``--json`` writes the result; exits 1 if any run failed.
The launcher returns a rank's negative return code (-signal) as the job's exit status, so it shows up
as ``256 - signal`` (250 = SIGABRT, 245 = SIGSEGV).

    .venv/bin/python benchmarks/exit_reliability.py                              # 20 x ZeRO-3, 2 ranks
    .venv/bin/python benchmarks/exit_reliability.py --zero-stage 2 --runs 20 --json zero2.json
    .venv/bin/python benchmarks/exit_reliability.py --backend fsdp --runs 5 --index shards/demo/index.json
    .venv/bin/python benchmarks/exit_reliability.py --keep-failed /tmp/failed  # logs (and cores) of failures
    .venv/bin/python benchmarks/exit_reliability.py --cpus 0   # both ranks on one CPU: the race is likelier

Each run writes its stdout/stderr to ``<run>/job.log`` and runs with that directory as its working
directory, so with ``ulimit -c unlimited`` a core dump of an aborting rank lands next to its log.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TERMINATE = "terminate called"
LEAKED = "outlive destroy_process_group"  # xlsr.engine.distributed.shutdown: a group's threads not joined


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="consecutive jobs (default 20)")
    parser.add_argument("--backend", default="deepspeed", choices=("deepspeed", "ddp", "fsdp"))
    parser.add_argument("--zero-stage", type=int, default=3, choices=(1, 2, 3), help="DeepSpeed only")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--updates", type=int, default=6, help="optim.max_update of each job")
    parser.add_argument("--config", default=str(REPO / "configs/tiny.yaml"))
    parser.add_argument("--index", help="shard index to train on (default: demo shards built in a temp dir)")
    parser.add_argument(
        "--scale", type=float, default=0.3, help="size of the demo corpus built without --index"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a job counts as hung")
    parser.add_argument(
        "--cpus", help="pin the job to these CPUs (taskset -c LIST, e.g. 0): more preemption, more exit races"
    )
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--keep-failed", help="copy the run directory (job.log, cores) of each failure here")
    parser.add_argument("overrides", nargs="*", help="extra dotted overrides for every job")
    return parser.parse_args(argv)


def build_demo_shards(directory: Path, scale: float) -> Path:
    from sharding import ShardJob, shard
    from sharding.synthetic import generate_demo_corpus

    corpus = generate_demo_corpus(str(directory / "corpus"), scale=scale)
    job = ShardJob(corpus, str(directory / "shards"), corpus="demo", workers=2, progress=False)
    return Path(shard(job).index_path)


def describe(code: int | None) -> str:
    if code is None:
        return "hung (killed)"
    if code == 0:
        return "ok"
    if 128 < code < 256 and 256 - code < signal.NSIG:  # launcher exit(-signal) as an exit status
        try:
            return f"rank killed by {signal.Signals(256 - code).name}"
        except ValueError:
            pass
    return f"exit {code}"


def one_run(args: argparse.Namespace, index: Path, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    overrides = [
        f"run_dir={run_dir}", f"data.train=[{index}]", f"distributed.backend={args.backend}",
        f"optim.max_update={args.updates}", "optim.warmup_updates=2", "logging.interval=1",
        "logging.wandb_mode=disabled", "logging.progress=false",
    ]  # fmt: skip
    if args.backend == "deepspeed":
        overrides.append(f"distributed.zero_stage={args.zero_stage}")
    pin = ["taskset", "-c", args.cpus] if args.cpus else []
    command = [
        *pin, sys.executable, "-m", "xlsr", "launch", "local", "--nproc", str(args.nproc),
        "--config", str(Path(args.config).resolve()), *overrides, *args.overrides,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    log_path = run_dir / "job.log"
    start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            code: int | None = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    final = run_dir / "checkpoints" / f"step-{args.updates:08d}"
    finished = final.is_dir() and f"update {args.updates}/{args.updates}" in text
    tail = [line for line in text.splitlines() if line.strip()][-8:]
    return {
        "exit_code": code,
        "outcome": describe(code),
        "seconds": round(seconds, 1),
        "trained_to_end": finished,
        "terminate_called": TERMINATE in text,
        "threads_outlived_shutdown": LEAKED in text,
        "cores": sorted(p.name for p in run_dir.glob("core*")),
        "passed": code == 0 and finished,
        "log_tail": [] if code == 0 else tail,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xlsr-exit-bench-") as tmp:
        work = Path(tmp)
        index = Path(args.index).resolve() if args.index else build_demo_shards(work / "demo", args.scale)
        runs = []
        for i in range(args.runs):
            run_dir = work / f"run-{i:03d}"
            result = one_run(args, index, run_dir)
            runs.append(result)
            flags = " ".join(
                f for f, on in (("trained-to-end", result["trained_to_end"]),
                                (TERMINATE, result["terminate_called"]),
                                ("gloo-threads-outlived-shutdown", result["threads_outlived_shutdown"]),
                                (f"cores={result['cores']}", bool(result["cores"]))) if on
            )  # fmt: skip
            print(f"run {i + 1:3d}/{args.runs}: {result['outcome']:28s} {result['seconds']:6.1f} s  {flags}",
                  flush=True)  # fmt: skip
            if not result["passed"]:
                for line in result["log_tail"]:
                    print(f"    | {line}", flush=True)
                if args.keep_failed:
                    target = Path(args.keep_failed) / f"run-{i:03d}"
                    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("checkpoints"))
            shutil.rmtree(run_dir, ignore_errors=True)
    return report(args, runs)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def report(args: argparse.Namespace, runs: list[dict]) -> int:
    failed = [r for r in runs if not r["passed"]]
    outcomes = collections.Counter(r["outcome"] for r in runs)
    what = f"{args.backend}" + (f" ZeRO-{args.zero_stage}" if args.backend == "deepspeed" else "")
    pinned = f", pinned to CPUs {args.cpus}" if args.cpus else ""
    print(f"\n{what}, {args.nproc} processes, {args.updates} updates, {len(runs)} runs{pinned}")
    print(f"{'outcome':30s} {'runs':>5s}")
    print("-" * 36)
    for outcome, count in outcomes.most_common():
        print(f"{outcome:30s} {count:5d}")
    print("-" * 36)
    seconds = sorted(r["seconds"] for r in runs)
    print(f"{'passed':30s} {len(runs) - len(failed):5d}")
    print(f"{'failed':30s} {len(failed):5d}")
    print(f"{'  of which terminate called':30s} {sum(r['terminate_called'] for r in failed):5d}")
    print(f"{'gloo threads outlived shutdown':30s} {sum(r['threads_outlived_shutdown'] for r in runs):5d}")
    if seconds:
        print(f"seconds per run: median {seconds[len(seconds) // 2]:.1f}, max {seconds[-1]:.1f}")
    if args.json:
        result = {
            "backend": args.backend,
            "zero_stage": args.zero_stage if args.backend == "deepspeed" else None,
            "nproc": args.nproc,
            "updates": args.updates,
            "overrides": args.overrides,
            "cpus": args.cpus,
            "runs": len(runs),
            "passed": len(runs) - len(failed),
            "failed": len(failed),
            "outcomes": dict(outcomes),
            "host": platform.node(),
            "python": platform.python_version(),
            "versions": {name: _version(name) for name in ("torch", "deepspeed")},
            "per_run": runs,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
