"""`xlsr plot RUN_DIR`: the curves a person wants to see, from ``metrics.jsonl`` and ``config.yaml``.

Panels named by the run's objective (`xlsr.objectives`, its `MetricSpec`): train and valid loss
against its chance level (a run that never leaves it is stuck); valid loss per language; LR and the
objective's schedules (wav2vec 2.0's Gumbel temperature); codebook usage against the codebook size
(a collapse drops it); throughput. And from ``probes.jsonl``, the probes of every checkpoint
(docs/evaluation.md): phone (or character) error rate and language-ID accuracy, overall with their
95 % intervals and per language, against updates (bottom axis) and audio hours seen (top axis), with
the random-init baseline and its interval drawn as a band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlsr.config import load_config
from xlsr.fileio import atomic_write_with
from xlsr.objectives import MetricSpec, build_objective
from xlsr.process import UserError
from xlsr.run_dir import CONFIG_NAME, HISTORY_NAME, PROBE_KINDS, VALID_KIND, ProbeLog, RunHistory


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
    figure, axes = plt.subplots(3, 3, figsize=(16, 12.5), constrained_layout=True)
    _losses(axes[0][0], train, valid, spec)
    _per_language(axes[0][1], valid, spec.loss_key)
    _schedule(axes[0][2], train, spec.schedule_keys)
    _codes(axes[1][0], train, valid, spec)
    _throughput(axes[1][1], train)
    probes = ProbeLog(run_dir).records()
    _probe(axes[1][2], probes, ("phones", "chars"))
    _probe(axes[2][0], probes, ("lid",))
    _probe_per_language(axes[2][1], probes, ("phones", "chars"))
    _probe_per_language(axes[2][2], probes, ("lid",))
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


def _probe_series(probes: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
    for name in names:
        series = sorted((r for r in probes if r["probe"] == name), key=lambda r: r["step"])
        if series:
            return series
    return []


def _probe(ax, probes: list[dict[str, Any]], names: tuple[str, ...]) -> None:
    series = _probe_series(probes, names)
    title = PROBE_KINDS[series[0]["probe"] if series else names[0]].title
    ax.set(title=f"probe: {title} (held-out speakers)", xlabel="update")
    trained = [r for r in series if r["step"] > 0]
    if series and series[0]["step"] == 0:
        base = series[0]
        ax.axhline(base["value"], color="grey", linestyle="--", label="random-init baseline")
        ax.axhspan(*base["interval"], color="grey", alpha=0.2)
    if trained:
        steps = [r["step"] for r in trained]
        low, high = ([r["interval"][i] for r in trained] for i in (0, 1))
        ax.plot(steps, [r["value"] for r in trained], "o-", label="probe (95% interval)")
        ax.fill_between(steps, low, high, alpha=0.3)
        _hours_axis(ax, trained[-1])
    ax.legend(fontsize=8)


def _probe_per_language(ax, probes: list[dict[str, Any]], names: tuple[str, ...]) -> None:
    series = [r for r in _probe_series(probes, names) if r["step"] > 0]
    title = PROBE_KINDS[series[0]["probe"] if series else names[0]].title
    ax.set(title=f"probe: {title} per language", xlabel="update")
    languages = sorted({language for r in series for language in r["per_language"]})
    for language in languages:
        points = [
            (r["step"], r["per_language"][language]["value"]) for r in series if language in r["per_language"]
        ]
        ax.plot(*zip(*points, strict=True), "o-", label=language)
    if languages:
        ax.legend(fontsize=7, ncol=2)


def _hours_axis(ax, last: dict[str, Any]) -> None:
    """Audio hours seen on a top axis (at most: the effective batch includes padding)."""
    per_update = last["audio_hours"] / last["step"]
    if per_update > 0:
        top = ax.secondary_xaxis("top", functions=(lambda u: u * per_update, lambda h: h / per_update))
        top.set_xlabel("audio hours seen (at most)")


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
