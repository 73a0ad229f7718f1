"""`xlsr demo`: the whole path once, on a laptop-sized problem.

1. generate a small multilingual corpus (xlsr never downloads anything here);
2. shard it as `xlsr shard` does, holding out a validation set per language (per-language hours
   table; the corrupt and too-short files are skipped);
3. pretrain the tiny wav2vec 2.0 on `--nproc` processes with upsampling, warmup + polynomial decay,
   validation and the language-ID probe, W&B offline and checkpoints;
4. print how the held-out loss and the probe moved, draw the curves, and say where everything is.
Every step reuses finished work, so a second run returns quickly.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from launchers.local import launch_local
from sharding import ShardJob, shard
from sharding.speech import MANIFEST_NAME, generate_speech_corpus
from xlsr.config import load_config
from xlsr.evaluation.evaluate import trend_lines
from xlsr.evaluation.plot import plot_run
from xlsr.objectives import build_objective
from xlsr.run_dir import CONFIG_NAME, HISTORY_NAME, PROBE_KINDS, SUMMARY_NAME, read_json_object

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_best_rq.yaml"
# Held out per language by `xlsr shard --valid-seconds` (scaled with --corpus-scale), by speaker: the
# validation loss and the probes' set (whose speakers the probes split again).
VALID_SECONDS = 30.0
# configs/tiny_best_rq.yaml sized for minutes on 2 cores. BEST-RQ, not wav2vec 2.0: on this speech
# corpus the tiny wav2vec 2.0 stays at chance level for the few hundred small updates a demo affords
# (docs/evaluation.md, "The demo"); BEST-RQ's fixed random targets learn from the first updates.
DEMO_OVERRIDES = (
    "optim.warmup_updates=50",
    "optim.max_update=500",
    "logging.interval=50",
    "checkpoint.interval_updates=250",
    "validation.interval_updates=250",
    "validation.max_seconds_per_language=60",
)


def _shard(corpus: Path, shards: Path, valid_seconds: float) -> Path:
    """Shard the demo corpus (reusing finished shards); print what `xlsr shard` prints. Returns the index."""
    job = ShardJob(
        input=corpus, out_dir=shards, corpus="demo", workers=2, progress=False, valid_seconds=valid_seconds
    )
    result = shard(job)
    print(result.sources_line(), file=sys.stderr)
    print(result.summary())
    return result.index_path


def run_demo(out: Path, nproc: int = 2, overrides: Sequence[str] = (), corpus_scale: float = 1.0) -> int:
    out = out.resolve()
    print(f"== 1/4 corpus: {out / 'corpus'}")
    corpus = generate_speech_corpus(out / "corpus", scale=corpus_scale)
    print(f"== 2/4 shards: {out / 'shards'} (held out: {out / 'shards' / 'valid'})")
    index = _shard(corpus / MANIFEST_NAME, out / "shards", VALID_SECONDS * corpus_scale)
    run_dir = out / "run"
    print(f"== 3/4 pretraining the tiny model on {nproc} processes: {run_dir}")
    train_args = [
        "--config",
        str(DEMO_CONFIG),
        f"run_dir={run_dir}",
        f"data.train=[{index}]",
        f"data.valid=[{index.parent / 'valid' / 'index.json'}]",
        *DEMO_OVERRIDES,
        *overrides,
    ]
    code = launch_local(nproc, train_args, env={"WANDB_SILENT": "true"})
    if code != 0:
        print(f"training failed with exit code {code}")
        return code
    print("== 4/4 summary")
    print_summary(run_dir)
    return 0


def print_summary(run_dir: Path) -> None:
    summary = read_json_object(run_dir / SUMMARY_NAME)
    spec = build_objective(load_config(run_dir / CONFIG_NAME)).spec
    first, last, loss, name = (
        summary["first"],
        summary["last"],
        spec.loss_key,
        spec.loss_key.replace("_", " "),
    )
    print(
        f"train {name} {first[loss]:.3f} -> {last[loss]:.3f} bits "
        f"(update {first['step']} -> {last['step']}); "
        f"accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f}"
    )
    if spec.best_key in summary:
        start, end = summary.get(f"{spec.best_key}_update_0"), summary[spec.best_key]
        print(
            f"valid {name} {start:.3f} -> {end:.3f} bits at update {summary['valid_step']} "
            f"({spec.chance_bits - end:.3f} bits below chance, {spec.chance_bits:.3f})"
        )
    for line in probe_lines(summary):
        print(line)
    for line in trend_lines(run_dir):
        print(line)
    if "best" in summary:
        best = summary["best"]
        print(f"best checkpoint: {best['checkpoint']} (valid {best[spec.best_key]:.3f} bits)")
    print(f"curves:          {plot_run(run_dir, run_dir / 'curves.png')}")
    print(f"checkpoint:      {summary['checkpoint']}")
    print(f"W&B offline run: {summary['wandb_dir']}  (upload with `wandb sync`)")
    print(f"metrics:         {run_dir / HISTORY_NAME}")
    print(f"summary:         {run_dir / SUMMARY_NAME}")


def probe_lines(summary: dict) -> list[str]:
    """The probes of the newest checkpoint against the random-init baseline, with 95 % intervals."""
    lines = []
    for kind in PROBE_KINDS.values():
        key, name = f"probe_{kind.metric}", kind.title
        if key not in summary or f"{key}_baseline" not in summary:
            continue
        value, (low, high) = summary[key], summary[f"{key}_interval"]
        base, (b_low, b_high) = summary[f"{key}_baseline"], summary[f"{key}_baseline_interval"]
        separate, step = high < b_low or b_high < low, summary[f"{key}_step"]
        lines.append(
            f"{name} {100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] at update {step}; "
            f"random-init baseline {100 * base:.1f}% [{100 * b_low:.1f}, {100 * b_high:.1f}]: "
            f"{100 * (value - base):+.1f} points, intervals {'apart' if separate else 'overlap'}"
        )
    return lines
