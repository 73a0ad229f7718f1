"""`xlsr plot RUN_DIR`: the curves a person wants to see, from ``metrics.jsonl`` and ``config.yaml``.

Six panels, named by the run's objective (`xlsr.objectives`, its `MetricSpec`): train and valid
loss against its chance level (a run that never leaves it is stuck); valid loss per language; the
language-ID probe against its update-0 baseline; LR and the objective's schedules (wav2vec 2.0's
Gumbel temperature); codebook usage against the codebook size (a collapse drops it); throughput.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlsr.config import load_config
from xlsr.fileio import atomic_write_with
from xlsr.objectives import MetricSpec, build_objective
from xlsr.process import UserError
from xlsr.run_dir import CONFIG_NAME, HISTORY_NAME, VALID_KIND, RunHistory


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
        raise PlotError(f"{run_dir / HISTORY_NAME}: no metrics yet (is {run_dir} a run directory?)")
    cfg = load_config(run_dir / CONFIG_NAME)
    spec = build_objective(cfg).spec
    train = [r for r in records if r.get("kind") != VALID_KIND]
    valid = [r for r in records if r.get("kind") == VALID_KIND]
    figure, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    _losses(axes[0][0], train, valid, spec)
    _per_language(axes[0][1], valid, spec.loss_key)
    _probe(axes[0][2], valid)
    _schedule(axes[1][0], train, spec.schedule_keys)
    _codes(axes[1][1], train, valid, spec)
    _throughput(axes[1][2], train)
    figure.suptitle(f"{run_dir.name}: update {records[-1]['step']} of {cfg.last_update}")
    path = atomic_write_with(Path(out), lambda handle: figure.savefig(handle, format="png", dpi=90))
    plt.close(figure)
    return path


def _losses(ax, train, valid, spec: MetricSpec) -> None:
    ax.plot(*_series(train, spec.loss_key), label="train")
    ax.plot(*_series(valid, f"valid_{spec.loss_key}"), "o-", label="valid")
    ax.axhline(spec.chance_bits, color="grey", linestyle="--", label=f"chance = {spec.chance_bits:.2f}")
    ax.set(title=f"{spec.loss_key} (bits)", xlabel="update")
    ax.legend()


def _per_language(ax, valid, loss_key: str) -> None:
    keys = sorted(
        {k for line in valid for k in line if k.startswith("valid/") and k.endswith(f"/{loss_key}")}
    )
    for key in keys:  # valid/<corpus>/<language>/<loss>: one language can come from several corpora
        _, corpus, language = key.split("/")[:3]
        ax.plot(*_series(valid, key), "o-", label=f"{language} ({corpus})")
    ax.set(title=f"valid {loss_key} per language (bits)", xlabel="update")
    if keys:
        ax.legend(fontsize=7, ncol=2)


def _probe(ax, valid) -> None:
    steps, accuracy = _series(valid, "probe_lid_accuracy")
    ax.plot(steps, accuracy, "o-", label="LID probe accuracy")
    if steps and steps[0] == 0:
        ax.axhline(accuracy[0], color="grey", linestyle="--", label="random-init baseline")
    ax.set(title="language-ID probe (held-out half)", xlabel="update", ylim=(0, 1))
    ax.legend()


def _schedule(ax, train, schedule_keys: tuple[str, ...]) -> None:
    ax.plot(*_series(train, "lr"), color="tab:blue")
    ax.set(title=" and ".join(("learning rate", *schedule_keys)), xlabel="update")
    ax.set_ylabel("lr", color="tab:blue")
    if schedule_keys:
        twin = ax.twinx()
        for key in schedule_keys:
            twin.plot(*_series(train, key), color="tab:orange")
        twin.set_ylabel(", ".join(schedule_keys), color="tab:orange")


def _codes(ax, train, valid, spec: MetricSpec) -> None:
    ax.plot(*_series(train, spec.usage_key), label="train")
    ax.plot(*_series(valid, f"valid_{spec.usage_key}"), "o-", label="valid")
    ax.axhline(
        spec.codebook_size, color="grey", linestyle="--", label=f"codebook size = {spec.codebook_size}"
    )
    ax.set(title=spec.usage_key.replace("_", " "), xlabel="update", yscale="log")
    ax.legend()


def _throughput(ax, train) -> None:
    ax.plot(*_series(train, "audio_s_per_s"))
    ax.set(title="throughput (audio s per s per rank)", xlabel="update")
