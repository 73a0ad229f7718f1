"""The worked examples of docs/planning.md: `xlsr plan` for the XLS-R recipes on the paper's data mix.

    .venv/bin/python benchmarks/plan_examples.py [--gpus 128 512] [--gpu h100]

The XLS-R paper (Babu et al., arXiv 2111.09296, Table 1) pretrains on 436K hours from five corpora:
VoxPopuli 372K h, MLS 50K h, CommonVoice 7K h, VoxLingua107 6.6K h, BABEL 1K h. Their per-language
hours are not all published, so the index written here holds one stream per corpus (the passes are
per corpus; within a corpus, the smallest languages repeat more) and every utterance is taken as one
full 20 s crop. The index lists shards that do not exist: `xlsr plan` reads only the index (the
loader's decode rate falls back to its default).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xlsr.config import load_config  # noqa: E402
from xlsr.data.shard_format import INDEX_VERSION  # noqa: E402
from xlsr.plan import PlanRequest, make_plan, plan_json  # noqa: E402

PAPER_HOURS = {
    "voxpopuli": 372_000,
    "mls": 50_000,
    "commonvoice": 7_000,
    "voxlingua107": 6_600,
    "babel": 1_000,
}
UTTERANCE_SECONDS = 20.0
SHARDS_PER_CORPUS = 4
RECIPES = ("xlsr_300m", "xlsr_1b", "xlsr_2b")


def write_paper_mix_index(directory: Path) -> Path:
    shards = []
    for corpus, hours in PAPER_HOURS.items():
        seconds = hours * 3600 / SHARDS_PER_CORPUS
        for part in range(SHARDS_PER_CORPUS):
            shards.append(
                {
                    "path": f"{corpus}-{part:03d}.tar",
                    "corpus": corpus,
                    "language": "all",
                    "samples": round(seconds / UTTERANCE_SECONDS),
                    "seconds": seconds,
                }
            )
    index = directory / "index.json"
    index.write_text(json.dumps({"version": INDEX_VERSION, "sample_rate": 16_000, "shards": shards}))
    return index


def rows(gpus: list[int], gpu: str, index: Path) -> list[dict]:
    out = []
    for recipe in RECIPES:
        for world in gpus:
            cfg = load_config(str(REPO / "configs" / f"{recipe}.yaml"), [f"data.train=[{index}]"])
            out.append(
                {"recipe": recipe, **plan_json(make_plan(cfg, PlanRequest(world, gpu=gpu, decode_seconds=0)))}
            )
    return out


def markdown(results: list[dict]) -> str:
    lines = [
        "| recipe | GPUs | update_freq | h of audio / update | memory / GPU (GiB) "
        "| largest micro-batch (crops) | s / update | wall-clock | GPU-hours "
        "| passes: VP / MLS / CV / VL107 / BABEL |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        passes = {row["corpus"]: row["passes"] for row in r["languages"]}
        wall = r["wall_clock_hours"]
        lines.append(
            f"| {r['recipe']} | {r['gpus']} | {r['config']['update_freq']} "
            f"| {r['audio_hours_per_update']:.2f} | {r['memory_per_gpu_gib']:.1f} "
            f"| {r['largest_micro_batch_crops']} | {r['time_per_update_seconds']:.3f} "
            f"| {wall:.1f} h ({wall / 24:.1f} d) | {r['gpu_hours']:,.0f} "
            f"| {' / '.join(f'{passes[c]:.1f}' for c in PAPER_HOURS)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--gpu", default="h100")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        print(markdown(rows(args.gpus, args.gpu, write_paper_mix_index(Path(directory)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
