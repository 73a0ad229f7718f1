"""`xlsr evaluate RUN_DIR`: probe every checkpoint that has no results yet, and say when to stop.

Back-fills ``probes.jsonl`` (the initial model first: the baseline), also on another machine from a
copied run directory (``--valid`` when the held-out shards live elsewhere). ``--follow PID`` is the
local side process of `xlsr.engine.probing`: it keeps probing new checkpoints while process
PID (the trainer) lives, then does a last sweep and exits.

"When do I stop?": `trend_lines` compares each probe's newest value with its value 10 % and 25 % of
the updates ago and says whether the change exceeds the newest value's 95 % interval.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from xlsr.evaluation.probes import RunProber, describe
from xlsr.run_dir import PROBE_KINDS, ProbeLog

log = logging.getLogger("xlsr.probes")

FOLLOW_POLL_S = 2.0
TREND_SPANS = (0.10, 0.25)


def evaluate_run(
    run_dir: str | os.PathLike,
    every: int = 1,
    valid: list[str] | None = None,
    device: str | None = None,
    follow_pid: int | None = None,
) -> list[dict[str, Any]]:
    """Probe what is missing (every ``every``-th update's checkpoint); returns the lines written."""
    prober = RunProber(run_dir, valid, device)
    written: list[dict[str, Any]] = []
    failed: set[int] = set()  # following: a step that failed once is left to a later `xlsr evaluate`
    while True:
        following = follow_pid is not None and _alive(follow_pid)
        for step, path in prober.missing(every):
            if step in failed:
                continue
            try:
                records = prober.probe_step(step, path)
            except Exception as exc:
                if follow_pid is None:
                    raise
                failed.add(step)
                log.warning("update %d not probed (%s: %s)", step, type(exc).__name__, exc)
                continue
            for record in records:
                print(describe(record), flush=True)
            written += records
        if not following:
            return written
        time.sleep(FOLLOW_POLL_S)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trend_lines(run_dir: str | Path) -> list[str]:
    """Per probe: the change over the last 10 % and 25 % of the updates probed so far."""
    records = ProbeLog(run_dir).records()
    lines = []
    for probe in PROBE_KINDS:
        series = sorted((r for r in records if r["probe"] == probe), key=lambda r: r["step"])
        if len(series) < 2:
            continue
        lines.append(_trend(probe, series))
    return lines


def _trend(probe: str, series: list[dict[str, Any]]) -> str:
    last = series[-1]
    half_width = (last["interval"][1] - last["interval"][0]) / 2
    sign = -1.0 if PROBE_KINDS[probe].lower_is_better else 1.0
    parts, compared = [], set()
    for span in TREND_SPANS:
        since = last["step"] * (1 - span)
        earlier = [r for r in series if r["step"] <= since]
        if not earlier or earlier[-1]["step"] in compared:
            continue
        before = earlier[-1]
        compared.add(before["step"])
        gain = sign * (last["value"] - before["value"])
        verdict = "more than" if gain > half_width else "within"
        parts.append(
            f"last {span:.0%} (since update {before['step']}): {100 * gain:+.1f} points, "
            f"{verdict} its interval (±{100 * half_width:.1f})"
        )
    if not parts:
        return f"{PROBE_KINDS[probe].title}: too few probed checkpoints for a trend"
    return f"{PROBE_KINDS[probe].title} at update {last['step']}, change over the " + "; ".join(parts)
