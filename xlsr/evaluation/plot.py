"""`xlsr plot RUN_DIR`: the curves a person wants to see, from ``metrics.jsonl`` and ``config.yaml``.

Six panels: train and valid contrastive loss against chance level log2(K+1) (a run that never leaves
it is stuck); valid loss per language; the language-ID probe against its update-0 baseline; LR and
Gumbel temperature; code perplexity against the codebook size (a collapse drops it); throughput.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from xlsr.config import load_config
from xlsr.engine.reporting import VALID_KIND, RunHistory
from xlsr.fileio import atomic_write_with
from xlsr.process import UserError


class PlotError(UserError):
    pass


def _series(lines: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(line["step"], line[key]) for line in lines if isinstance(line.get(key), int | float)]
    return [step for step, _ in points], [value for _, value in points]


def plot_run(run_dir: str | Path, out: str | Path) -> Path:
    """Write the run's curves to ``out`` (PNG); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = RunHistory(run_dir).lines()
    if not records:
        raise PlotError(f"{run_dir / 'metrics.jsonl'}: no metrics yet (is {run_dir} a run directory?)")
    cfg = load_config(run_dir / "config.yaml")
    train = [r for r in records if r.get("kind") != VALID_KIND]
    valid = [r for r in records if r.get("kind") == VALID_KIND]
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    _losses(axes[0][0], train, valid, math.log2(cfg.model.num_negatives + 1))
    _per_language(axes[0][1], valid)
    _probe(axes[0][2], valid)
    _schedule(axes[1][0], train)
    _codes(axes[1][1], train, valid, cfg.model.latent_groups * cfg.model.latent_vars)
    _throughput(axes[1][2], train)
    figure.suptitle(f"{run_dir.name}: update {records[-1]['step']} of {cfg.last_update}")
    path = atomic_write_with(Path(out), lambda handle: figure.savefig(handle, format="png", dpi=90))
    plt.close(figure)
    return path


def _losses(ax, train, valid, chance: float) -> None:
    ax.plot(*_series(train, "loss_contrastive"), label="train")
    ax.plot(*_series(valid, "valid_loss_contrastive"), "o-", label="valid")
    ax.axhline(chance, color="grey", linestyle="--", label=f"chance log2(K+1) = {chance:.2f}")
    ax.set(title="contrastive loss (bits)", xlabel="update")
    ax.legend()


def _per_language(ax, valid) -> None:
    keys = sorted(
        {k for line in valid for k in line if k.startswith("valid/") and k.endswith("/loss_contrastive")}
    )
    for key in keys:
        ax.plot(*_series(valid, key), "o-", label=key.split("/")[2])
    ax.set(title="valid contrastive loss per language (bits)", xlabel="update")
    if keys:
        ax.legend(fontsize=7, ncol=2)


def _probe(ax, valid) -> None:
    steps, accuracy = _series(valid, "probe_lid_accuracy")
    ax.plot(steps, accuracy, "o-", label="LID probe accuracy")
    if steps and steps[0] == 0:
        ax.axhline(accuracy[0], color="grey", linestyle="--", label="random-init baseline")
    ax.set(title="language-ID probe (held-out half)", xlabel="update", ylim=(0, 1))
    ax.legend()


def _schedule(ax, train) -> None:
    ax.plot(*_series(train, "lr"), color="tab:blue")
    ax.set(title="learning rate and Gumbel temperature", xlabel="update")
    ax.set_ylabel("lr", color="tab:blue")
    twin = ax.twinx()
    twin.plot(*_series(train, "temperature"), color="tab:orange")
    twin.set_ylabel("temperature", color="tab:orange")


def _codes(ax, train, valid, codes: int) -> None:
    ax.plot(*_series(train, "code_perplexity"), label="train")
    ax.plot(*_series(valid, "valid_code_perplexity"), "o-", label="valid")
    ax.axhline(codes, color="grey", linestyle="--", label=f"codebook size G·V = {codes}")
    ax.set(title="code perplexity", xlabel="update", yscale="log")
    ax.legend()


def _throughput(ax, train) -> None:
    ax.plot(*_series(train, "audio_s_per_s"))
    ax.set(title="throughput (audio s per s per rank)", xlabel="update")
