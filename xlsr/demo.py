"""`xlsr demo`: the whole path once, on a laptop-sized problem.

1. generate a small multilingual corpus (xlsr never downloads anything here);
2. shard it as `xlsr shard` does (per-language hours table; the corrupt and too-short files are skipped);
3. pretrain the tiny wav2vec 2.0 on `--nproc` processes with upsampling, warmup + polynomial decay,
   W&B offline and checkpoints;
4. print where everything is and how the loss moved.
Every step reuses finished work, so a second run returns quickly.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from launchers.local import launch_local
from sharding import ShardJob, shard
from sharding.synthetic import generate_demo_corpus

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _shard(corpus: Path, shards: Path) -> Path:
    """Shard the demo corpus (reusing finished shards); print what `xlsr shard` prints. Returns the index."""
    result = shard(ShardJob(input=corpus, out_dir=shards, corpus="demo", workers=2, progress=False))
    print(result.sources_line(), file=sys.stderr)
    print(result.summary())
    return result.index_path


def run_demo(out: Path, nproc: int = 2, overrides: Sequence[str] = (), corpus_scale: float = 1.0) -> int:
    out = out.resolve()
    print(f"== 1/4 corpus: {out / 'corpus'}")
    generate_demo_corpus(out / "corpus", scale=corpus_scale)
    print(f"== 2/4 shards: {out / 'shards'}")
    index = _shard(out / "corpus", out / "shards")
    run_dir = out / "run"
    print(f"== 3/4 pretraining the tiny model on {nproc} processes: {run_dir}")
    train_args = [
        "--config",
        str(TINY_CONFIG),
        f"run_dir={run_dir}",
        f"data.train=[{index}]",
        *overrides,
    ]
    code = launch_local(nproc, train_args, env={"WANDB_SILENT": "true"})
    if code != 0:
        print(f"training failed with exit code {code}")
        return code
    summary = json.loads((run_dir / "summary.json").read_text())
    print("== 4/4 summary")
    first, last = summary["first"], summary["last"]
    print(
        f"contrastive loss {first['loss_contrastive']:.3f} -> {last['loss_contrastive']:.3f} bits "
        f"(update {first['step']} -> {last['step']}); "
        f"accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f}"
    )
    print(f"checkpoint:      {summary['checkpoint']}")
    print(f"W&B offline run: {summary['wandb_dir']}  (upload with `wandb sync`)")
    print(f"metrics:         {run_dir / 'metrics.jsonl'}")
    print(f"summary:         {run_dir / 'summary.json'}")
    return 0
