"""The GPU check: one command that measures everything only a GPU shows (docs/performance.md).

    benchmarks/gpu_check.sh --out runs/gpu_check            # on one H100/H200, about 6-7 minutes
    benchmarks/gpu_check.sh --cpu-dry-run --out /tmp/dry    # every part at tiny sizes on the CPU

Parts, in order: (1) ``pytest -m gpu`` (tests/test_gpu.py); (2) model speed, xlsr vs HF, bf16, 20 s
crops, BASE and 0.3B; (3) 0.3B FSDP2 training on one GPU with and without activation checkpointing,
1B with it, through the real trainer and loader on demo shards; (4) the largest micro-batch that fits
in 80 GB with activation checkpointing, 0.3B / 1B / 2B; (5) host overhead per update, tiny model.
Parts 2-5 run in a worker process (`benchmarks/gpu_check_parts.py`), restarted after a part that
kills it. Writes ``gpu_check.json`` and ``gpu_check.md`` (also printed) to ``--out``; exits 1 when a
test or a part fails, 0 otherwise (goals missed are reported, and fail only with ``--strict-goals``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check_parts import PARTS  # noqa: E402
from gpu_check_report import evaluate_goals, render_markdown  # noqa: E402

from xlsr.fileio import atomic_write_text  # noqa: E402

ALL_PARTS = ("tests", *PARTS)
TESTS_TIMEOUT_S = 150


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_check", help="results and logs")
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU; CUDA-only checks skip")
    p.add_argument("--index", default=None, help="shards for the training part (default: demo shards)")
    p.add_argument("--parts", default=",".join(ALL_PARTS), help=f"comma-separated, of {', '.join(ALL_PARTS)}")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting runs after this many seconds")
    p.add_argument("--demo-scale", type=float, default=None, help="demo corpus size (default 1, dry run 0.1)")
    p.add_argument("--strict-goals", action="store_true", help="also exit 1 when a goal is missed")
    return p.parse_args(argv)


def demo_index(out: Path, scale: float, long_utterances: bool) -> str:
    """Shards of the synthetic demo corpus; 10-30 s utterances on a GPU, so that crops are XLS-R's 20 s."""
    from sharding import ShardJob, shard
    from sharding.synthetic import generate_demo_corpus

    root = out / "work" / ("demo-10-30s" if long_utterances else "demo")
    seconds = (10.0, 30.0) if long_utterances else (1.5, 8.0)
    corpus = generate_demo_corpus(root / "corpus", scale=scale, utterance_seconds=seconds)
    workers = max(1, min(8, os.cpu_count() or 1))
    job = ShardJob(corpus, root / "shards", corpus="demo", workers=workers, progress=False)
    return str(shard(job).index_path)


def environment(dry_run: bool) -> dict:
    """Versions and the device, read without creating a CUDA context in this process (it would take
    memory from the worker's capacity search for the whole run)."""
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "device": "CPU (dry run)",
    }
    if not dry_run:
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        try:
            info["device"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["device"] = "a CUDA GPU (nvidia-smi unavailable)"
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    return info


# A single-process check: a launcher's rendezvous variables around it would point its process groups
# at a port that is taken.
RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> int | None:
    """Run ``cmd`` with its output in ``log``; the exit code, or None when it ran past ``timeout``."""
    env = {k: v for k, v in (env or os.environ).items() if k not in RENDEZVOUS}
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        sink.flush()
        try:
            return subprocess.run(
                cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, timeout=max(timeout, 1), env=env
            ).returncode
        except subprocess.TimeoutExpired:
            return None


def run_tests(args: argparse.Namespace, deadline: float) -> dict:
    """Part 1: ``pytest -m gpu`` on tests/test_gpu.py; per-test outcomes from its JUnit report."""
    junit = args.out / "pytest-gpu.xml"
    env = {**os.environ, "XLSR_GPU_CHECK_OUT": str(args.out), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--junitxml={junit}"]
    started = time.time()
    code = run_logged(cmd, args.out / "logs" / "tests.log", min(TESTS_TIMEOUT_S, deadline - time.time()), env)
    rows = junit_rows(junit) if junit.exists() else []
    failed = [r for r in rows if r["outcome"] in ("failed", "error")]
    if code is None:
        status, reason = "failed", f"pytest ran past {TESTS_TIMEOUT_S} s"
    elif failed or code not in (0, 5):
        status, reason = "failed", f"{len(failed)} failed (pytest exit {code}): see logs/tests.log"
    elif rows and all(r["outcome"] == "skipped" for r in rows):
        status, reason = "skipped", rows[0]["message"]
    else:
        status, reason = "passed", None
    findings_file = args.out / "gpu-findings.jsonl"
    findings = (
        [json.loads(line) for line in findings_file.read_text().splitlines()]
        if findings_file.exists()
        else []
    )
    return {
        "status": status,
        "reason": reason,
        "rows": rows,
        "findings": findings,
        "seconds": time.time() - started,
    }


def junit_rows(path: Path) -> list[dict]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
        rows.append(
            {
                "test": case.get("name"),
                "outcome": outcome,
                "seconds": float(case.get("time", 0)),
                "message": message,
            }
        )
    return rows


def run_worker_parts(
    args: argparse.Namespace, parts: list[str], index: str, deadline: float
) -> dict[str, dict]:
    """Parts 2-5 in worker processes: a part whose worker died is failed, and a new worker goes on."""
    results: dict[str, dict] = {}
    log = args.out / "logs" / "parts.log"
    remaining = list(parts)
    while remaining:
        for part in remaining:
            (args.out / f"part-{part}.json").unlink(missing_ok=True)
        cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check_parts.py"), "--out", str(args.out)]
        cmd += ["--index", index, "--parts", ",".join(remaining), "--deadline", str(deadline)]
        cmd += ["--cpu-dry-run"] if args.cpu_dry_run else []
        code = run_logged(cmd, log, deadline - time.time() + 30)
        done = [p for p in remaining if (args.out / f"part-{p}.json").exists()]
        for part in done:
            results[part] = json.loads((args.out / f"part-{part}.json").read_text())
        pending = [p for p in remaining if p not in done]
        if not pending:
            break
        crashed, remaining = pending[0], pending[1:]
        why = "ran past the time budget" if code is None else f"the worker exited with {code} during it"
        results[crashed] = {"status": "failed", "reason": f"{why}: see logs/parts.log", "rows": []}
        if time.time() > deadline:
            for part in remaining:
                results[part] = {"status": "failed", "reason": "out of time before it started", "rows": []}
            break
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    deadline = started + args.budget_s
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(ALL_PARTS))
    if unknown:
        print(
            f"gpu_check: unknown parts {', '.join(unknown)} (known: {', '.join(ALL_PARTS)})", file=sys.stderr
        )
        return 2
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; on a CPU machine run with --cpu-dry-run", file=sys.stderr)
        return 2
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(args.cpu_dry_run), "dry_run": args.cpu_dry_run, "parts": {}}
    worker_parts = [p for p in parts if p != "tests"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # demo shards are made while the tests run
        index = args.index
        if index is None and worker_parts:
            scale = args.demo_scale or (0.1 if args.cpu_dry_run else 1.0)
            index = pool.submit(demo_index, args.out, scale, not args.cpu_dry_run)
        if "tests" in parts:
            report["parts"]["tests"] = run_tests(args, deadline)
            print(f"[gpu_check] tests: {report['parts']['tests']['status']}", flush=True)
        if worker_parts:
            report["index"] = index = index if isinstance(index, str) else index.result()
            report["parts"].update(run_worker_parts(args, worker_parts, index, deadline))
    report["goals"] = evaluate_goals(report)
    report["seconds"] = time.time() - started
    failed = [name for name, part in report["parts"].items() if part["status"] == "failed"]
    missed = [goal["goal"] for goal in report["goals"] if goal["met"] is False]
    report["failed_parts"] = failed
    markdown = render_markdown(report)
    atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "gpu_check.md", markdown)
    print(markdown)
    if failed:
        print(f"gpu_check: FAILED parts: {', '.join(failed)}", file=sys.stderr)
        return 1
    if missed and args.strict_goals:
        print(f"gpu_check: goals missed: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
