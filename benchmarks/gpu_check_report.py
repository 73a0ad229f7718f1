"""The GPU check's goals and its markdown report (from the dict that ``gpu_check.json`` holds)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Report = dict[str, Any]


def _rows(report: Report, part: str) -> list[dict]:
    result = report["parts"].get(part)
    return result.get("rows", []) if result and result["status"] == "passed" else []


def _best(rows: Iterable[dict], key: str, **match: Any) -> float | None:
    values = [r[key] for r in rows if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None]
    return max(values, default=None)


def _goal(goal: str, value: float | None, target: float, fmt: Callable[[float], str], higher=True) -> dict:
    met = None if value is None else (value >= target if higher else value <= target)
    return {"goal": goal, "measured": "–" if value is None else fmt(value), "met": met}


def evaluate_goals(report: Report) -> list[dict]:
    """The issue's goals (bf16, 20 s crops, one H100/H200); ``met`` is None where nothing was measured
    (a dry run, a failed part)."""
    if report["dry_run"]:
        return []
    training, speed = _rows(report, "training"), _rows(report, "model_speed")
    max_batch, host = _rows(report, "max_batch"), _rows(report, "host_overhead")
    percent, rate = (lambda v: f"{100 * v:.1f} %"), (lambda v: f"{v:,.0f} s/s")
    two_b = next((r for r in max_batch if r["model"] == "2B"), {})
    host_ms = [r["not_covered_ms"] for r in host if r.get("not_covered_ms") is not None]
    return [
        _goal("0.3B FSDP2 training: MFU ≥ 45 %", _best(training, "mfu", model="0.3B"), 0.45, percent),
        _goal(
            "0.3B FSDP2 training: ≥ 3,600 audio s/s",
            _best(training, "audio_s_per_s", model="0.3B"),
            3600,
            rate,
        ),
        _goal("1B FSDP2 training (AC): MFU ≥ 50 %", _best(training, "mfu", model="1B"), 0.50, percent),
        *(
            _goal(
                f"{model} model step: ≥ 3× HF's throughput",
                _best(speed, "speedup_vs_hf", model=model, contender="hf_sdpa"),
                3.0,
                lambda v: f"{v:.2f}×",
            )
            for model in ("BASE", "0.3B")
        ),
        _goal(
            "2B with AC fits ≥ 700 s of audio per micro-batch on 80 GB",
            two_b.get("largest_fitting_audio_s"),
            700,
            lambda v: f"{v:,.0f} s",
        ),
        _goal(
            "host overhead ≪ 5 ms per update (≤ 1 ms not covered by GPU kernels)",
            max(host_ms, default=None),
            1.0,
            lambda v: f"{v:.2f} ms",
            higher=False,
        ),
    ]


def _num(fmt: str) -> Callable[[Any], str]:
    return lambda value: "–" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _text(value: Any) -> str:
    return "–" if value is None else str(value)


# Per part: its title, then (column header, row key, formatter) for its table.
Column = tuple[str, str, Callable[[Any], str]]
SECTIONS: dict[str, tuple[str, list[Column]]] = {
    "tests": (
        "1. `pytest -m gpu` (tests/test_gpu.py)",
        [("test", "test", _text), ("outcome", "outcome", _text), ("s", "seconds", _num(".1f")),
         ("note", "message", _text)],
    ),
    "model_speed": (
        "2. Model step, xlsr vs HF: bf16, forward + loss + backward",
        [("model", "model", _text), ("contender", "contender", _text), ("batch", "batch", _text),
         ("step ms", "step_ms", _num(".1f")), ("audio s/s", "audio_s_per_s", _num(",.0f")),
         ("TFLOP/s", "tflops", _num(".1f")), ("MFU", "mfu", _pct),
         ("peak GiB", "peak_memory_gib", _num(".1f")), ("xlsr speed-up", "speedup_vs_hf", _num(".2f")),
         ("fp32 loss rel. diff", "parity_rel_diff", _num(".1e"))],
    ),
    "training": (
        "3. FSDP2 bf16 training on one GPU, real trainer and loader",
        [("model", "model", _text), ("AC", "activation_checkpointing", _text), ("updates", "updates", _text),
         ("audio s/s", "audio_s_per_s", _num(",.0f")), ("MFU", "mfu", _pct),
         ("TFLOP/s", "tflops", _num(".1f")), ("peak GiB", "peak_memory_gb", _num(".1f")),
         ("data wait", "data_wait", _pct),
         ("crops/update", "crops_per_update", _num(".1f")), ("loader workers", "data_workers", _text)],
    ),
    "max_batch": (
        "4. Largest micro-batch of 20 s crops, FSDP2 bf16 + activation checkpointing, 80 GB",
        [("model", "model", _text), ("largest fitting, s of audio", "largest_fitting_audio_s", _text),
         ("crops", "largest_fitting_crops", _text), ("peak GiB", "peak_at_largest_gib", _num(".1f")),
         ("first failing crops", "smallest_failing_crops", _text),
         ("predicted for the whole card, s", "predicted_full_card_audio_s", _text),
         ("xlsr plan's peak GiB", "model_peak_at_largest_gib", _num(".1f")),
         ("plan / measured", "model_vs_measured", _num(".2f"))],
    ),
    "host_overhead": (
        "5. Host overhead per update: tiny model, one repeated pinned batch",
        [("backend", "backend", _text), ("precision", "precision", _text),
         ("wall ms", "wall_ms", _num(".2f")), ("CPU ms", "cpu_ms", _num(".2f")),
         ("GPU busy ms", "gpu_busy_ms", _num(".2f")),
         ("not covered ms", "not_covered_ms", _num(".2f")), ("GPU ops", "gpu_ops_per_update", _num(".0f")),
         ("optimizer host ms", "optimizer_host_ms", _num(".2f")), ("syncs", "syncs_per_update", _num(".1f"))],
    ),
}  # fmt: skip


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _section(name: str, result: dict) -> list[str]:
    title, columns = SECTIONS[name]
    status = result["status"] + (f": {result['reason']}" if result.get("reason") else "")
    lines = ["", f"### {title}", "", f"Status: **{status}** ({result.get('seconds', 0):.0f} s)", ""]
    if result.get("note"):
        lines[-1:-1] = ["", result["note"]]
    rows = [[fmt(row.get(key)) for _, key, fmt in columns] for row in result.get("rows", [])]
    lines += _table([header for header, _, _ in columns], rows)
    lines += [f"- {finding['what']}: {finding['value']}" for finding in result.get("findings", [])]
    return lines


def render_markdown(report: Report) -> str:
    env, parts = report["environment"], report["parts"]
    dry = " (CPU dry run: tiny sizes, not figures)" if report["dry_run"] else ""
    lines = [
        f"## GPU check: {env['device']}",
        "",
        f"{env['date']}, torch {env['torch']}, transformers {env.get('transformers')}, {env['cpus']} CPUs, "
        f"{report['seconds']:.0f} s{dry}",
        "",
        *_table(["part", "status"], [[name, part["status"]] for name, part in parts.items()]),
    ]
    if report["goals"]:
        verdicts = {True: "met", False: "**not met**", None: "not measured"}
        rows = [[g["goal"], g["measured"], verdicts[g["met"]]] for g in report["goals"]]
        lines += ["", "### Goals", "", *_table(["goal", "measured", "verdict"], rows)]
    for name in SECTIONS:
        if name in parts:
            lines += _section(name, parts[name])
    if report.get("failed_parts"):
        lines += ["", f"**FAILED: {', '.join(report['failed_parts'])}**"]
    return "\n".join(lines) + "\n"
