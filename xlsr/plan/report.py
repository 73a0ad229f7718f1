"""A plan as text (`xlsr plan`), as one paragraph (`xlsr launch slurm`) and as JSON (``--json``).

JSON keys name their units (``_gib``, ``_hours``, ``_seconds``, ``_per_second``); the key set is a
contract with users' scripts: add keys, never rename them.
"""

from __future__ import annotations

import math
from typing import Any

from xlsr.config import SAMPLE_RATE, effective_batch_hours
from xlsr.hardware import GIB
from xlsr.plan.build import Plan


def _h(hours: float) -> str:
    return f"{hours:,.1f} h" if hours < 48 else f"{hours / 24:,.1f} days"


def _fit_text(plan: Plan) -> str:
    m, card = plan.memory, plan.gpu.memory_bytes / GIB
    crop_s = plan.cfg.data.max_sample_size / SAMPLE_RATE
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    return (
        f"{m.device_total / GIB:.1f} of {card:.1f} GiB per GPU ({verdict}; up to {plan.largest_crops} "
        f"crops of {crop_s:g} s per micro-batch; the config's fullest has {m.batch.crops} of "
        f"{m.batch.crop_samples / SAMPLE_RATE:g} s)"
    )


def summary_paragraph(plan: Plan) -> str:
    """The few numbers that decide whether to launch, in one paragraph."""
    s, loader = plan.speed, plan.loader
    text = (
        f"plan: {plan.counts.total / 1e6:,.1f}M parameters on {plan.world_size} × {plan.gpu.key} "
        f"({plan.nodes} node(s)): {_fit_text(plan)}. {s.updates:,} updates × "
        f"{s.audio_seconds_per_update / 3600:.2f} h of audio at MFU {s.mfu.value:.0%} ({s.mfu.source}) → "
        f"{s.time_per_update_s:.2f} s per update, {_h(s.wall_clock_hours)} wall-clock, "
        f"{s.wall_clock_hours * plan.world_size:,.0f} GPU-hours. Loader: {loader.cores_per_gpu:.1f} cores "
        f"per GPU ({loader.workers_per_gpu} workers configured)."
    )
    if plan.data.streams:
        seen = sum(x.hours_seen for x in plan.data.streams)
        visible = sum(x.visible_hours for x in plan.data.streams)
        text += f" Data: {visible:,.1f} h, {seen / visible:,.1f} passes on average"
        repeated = plan.repeated_streams
        text += f"; {len(repeated)} stream(s) over {plan.request.max_passes:g} passes." if repeated else "."
    if not plan.fits and plan.suggestions:
        text += " Would fit with: " + "; ".join(plan.suggestions) + "."
    return text


def plan_text(plan: Plan) -> str:
    """The whole plan, section by section, assumptions last."""
    sections = [_model_lines, _memory_lines, _speed_lines, _data_lines, _loader_lines, _checkpoint_lines]
    lines = [line for section in sections for line in [*section(plan), ""]]
    return "\n".join([*lines, "assumptions:", *(f"  - {line}" for line in plan.assumptions)])


def _model_lines(plan: Plan) -> list[str]:
    cfg, s = plan.cfg, plan.speed
    crop_s = cfg.data.max_sample_size / SAMPLE_RATE
    return [
        f"model: {cfg.objective.name}, {plan.counts.total / 1e6:,.1f}M parameters, "
        f"{cfg.model.encoder_layers} layers × {cfg.model.encoder_embed_dim}",
        f"  training FLOPs per audio second at {crop_s:g} s crops: "
        f"{s.flops_per_audio_second / 1e9:,.1f} GFLOP",
        f"  FLOPs per update: {s.flops_per_update / 1e15:,.2f} PFLOP",
    ]


def _memory_lines(plan: Plan) -> list[str]:
    d, gib = plan.cfg.distributed, plan.memory.as_gib()
    lines = [
        f"memory per GPU ({d.backend}, {d.precision}, activation checkpointing "
        f"{d.activation_checkpointing}, {plan.world_size} ranks; peak at the "
        f"{plan.memory.peak_phase}): {_fit_text(plan)}",
        "  " + ", ".join(f"{key.replace('_', ' ')} {value:.2f}" for key, value in gib.items()) + " (GiB)",
    ]
    modes = ", ".join(f"{mode} {total / GIB:.1f}" for mode, total in plan.memory_by_checkpointing.items())
    lines.append(f"  per GPU by activation checkpointing: {modes} (GiB)")
    lines += [f"  would fit with: {line}" for line in plan.suggestions]
    return lines


def _speed_lines(plan: Plan) -> list[str]:
    s, cfg = plan.speed, plan.cfg
    bound = effective_batch_hours(cfg, plan.world_size)
    return [
        f"speed at MFU {s.mfu.value:.0%} ({s.mfu.source}) of {s.peak_flops_per_gpu / 1e12:,.1f} "
        "TFLOP/s per GPU:",
        f"  {s.audio_seconds_per_update / 3600:.3f} h of audio per update (at most {bound:.3f} h "
        f"with padding; update_freq {cfg.optim.update_freq})",
        f"  {s.time_per_update_s:.3f} s per update; {s.updates:,} updates: {_h(s.training_hours)} training + "
        f"{_h(s.checkpoint_hours)} saving = {_h(s.wall_clock_hours)} wall-clock, "
        f"{s.wall_clock_hours * plan.world_size:,.0f} GPU-hours",
    ]


def _data_lines(plan: Plan) -> list[str]:
    streams = plan.data.streams
    if not streams:
        return ["data: no data.train given (add 'data.train=[INDEX]' for hours and passes per language)"]
    width = max([12, *(len(s.corpus) + 2 for s in streams)])
    header = (
        f"  {'corpus':<{width}}{'language':<10}{'visible h':>12}{'natural':>9}{'sampled':>9}"
        f"{'seen h':>14}{'passes':>14}"
    )
    lines = [f"data ({len(streams)} streams; passes = hours drawn / hours the model can see):", header]
    for s in sorted(streams, key=lambda s: -s.passes):
        flag = "  <- over " + f"{plan.request.max_passes:g}" if s.passes > plan.request.max_passes else ""
        lines.append(
            f"  {s.corpus:<{width}}{s.language:<10}{s.visible_hours:>12,.2f}{s.natural_share:>9.1%}"
            f"{s.sampled_share:>9.1%}{s.hours_seen:>14,.1f}{s.passes:>14,.1f}{flag}"
        )
    return lines


def _loader_lines(plan: Plan) -> list[str]:
    loader, cpus = plan.loader, plan.cfg.launcher.cpus_per_task
    lines = [
        f"loader: {loader.audio_s_per_s_per_gpu:,.0f} audio s/s per GPU at "
        f"{loader.decode.x_realtime:,.0f}× real time per core ({loader.decode.source})",
        f"  {loader.cores_per_gpu:.2f} cores per GPU (data.num_workers {loader.workers_per_gpu}, "
        f"launcher.cpus_per_task {cpus}); storage read {loader.read_mb_per_s_per_node:,.0f} MB/s per node",
    ]
    if loader.cores_per_gpu > loader.workers_per_gpu:
        lines.append(f"  warning: raise data.num_workers to at least {math.ceil(loader.cores_per_gpu)}")
    return lines


def _checkpoint_lines(plan: Plan) -> list[str]:
    c = plan.checkpoint
    return [
        f"checkpoints: {c.size_bytes / GIB:,.2f} GiB each, {c.save_seconds:,.0f} s to write at "
        f"{plan.request.storage_gbps:g} GB/s; {c.saves:,} in the run"
    ]


def plan_json(plan: Plan) -> dict[str, Any]:
    s, m, loader, cfg = plan.speed, plan.memory, plan.loader, plan.cfg
    return {
        "config": {
            "backend": cfg.distributed.backend,
            "precision": cfg.distributed.precision,
            "activation_checkpointing": cfg.distributed.activation_checkpointing,
            "update_freq": cfg.optim.update_freq,
            "max_tokens": cfg.data.max_tokens,
            "max_sample_size": cfg.data.max_sample_size,
        },
        "gpus": plan.world_size,
        "nodes": plan.nodes,
        "gpu": plan.gpu.key,
        "gpu_memory_gib": plan.gpu.memory_bytes / GIB,
        "parameters": plan.counts.total,
        "flops_per_audio_second": s.flops_per_audio_second,
        "flops_per_update": s.flops_per_update,
        "memory_per_gpu_gib": m.device_total / GIB,
        "memory_breakdown_gib": m.as_gib(),
        "memory_peak_phase": m.peak_phase,
        "memory_per_gpu_gib_by_activation_checkpointing": {
            mode: total / GIB for mode, total in plan.memory_by_checkpointing.items()
        },
        "fits": plan.fits,
        "micro_batch_crops": m.batch.crops,
        "micro_batch_crop_seconds": m.batch.crop_samples / SAMPLE_RATE,
        "largest_micro_batch_crops": plan.largest_crops,
        "largest_micro_batch_audio_seconds": plan.largest_crops * cfg.data.max_sample_size / SAMPLE_RATE,
        "suggestions": list(plan.suggestions),
        "mfu": s.mfu.value,
        "mfu_source": s.mfu.source,
        "audio_hours_per_update": s.audio_seconds_per_update / 3600,
        "effective_batch_upper_bound_hours": effective_batch_hours(cfg, plan.world_size),
        "time_per_update_seconds": s.time_per_update_s,
        "updates": s.updates,
        "training_hours": s.training_hours,
        "checkpoint_hours": s.checkpoint_hours,
        "wall_clock_hours": s.wall_clock_hours,
        "gpu_hours": s.wall_clock_hours * plan.world_size,
        "languages": [_stream_json(stream, plan.request.max_passes) for stream in plan.data.streams],
        "max_passes": plan.request.max_passes,
        "loader_audio_seconds_per_second_per_gpu": loader.audio_s_per_s_per_gpu,
        "decode_realtime_factor_per_core": loader.decode.x_realtime,
        "decode_source": loader.decode.source,
        "loader_cores_per_gpu": loader.cores_per_gpu,
        "storage_read_mb_per_second_per_node": loader.read_mb_per_s_per_node,
        "checkpoint_size_gib": plan.checkpoint.size_bytes / GIB,
        "checkpoint_save_seconds": plan.checkpoint.save_seconds,
        "checkpoints": plan.checkpoint.saves,
        "assumptions": list(plan.assumptions),
    }


def _stream_json(stream, max_passes: float) -> dict[str, Any]:
    return {
        "corpus": stream.corpus,
        "language": stream.language,
        "stored_hours": stream.stored_hours,
        "visible_hours": stream.visible_hours,
        "natural_share": stream.natural_share,
        "sampled_share": stream.sampled_share,
        "hours_seen": stream.hours_seen,
        "passes": stream.passes,
        "over_max_passes": stream.passes > max_passes,
    }
