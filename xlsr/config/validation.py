"""Every value range and cross-field rule of a ``TrainConfig``, and the knobs a backend would ignore.

``load_config`` calls :func:`validate`, so a bad value stops the run at load time, before any process
group starts, with one line that names the file and the key.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

from xlsr.config.schema import MEL_HOP_SAMPLES, ConfigError, DistributedConfig, TrainConfig
from xlsr.hardware import GPU_KEYS

# A rule: (holds for the value?, what the value must be).
Rule = tuple[Callable[[Any], bool], str]


def at_least(low: float) -> Rule:
    return (lambda v: v >= low), f"must be >= {low:g}"


def above(low: float) -> Rule:
    return (lambda v: v > low), f"must be > {low:g}"


def within(low: float, high: float, include_high: bool = True) -> Rule:
    if include_high:
        return (lambda v: low <= v <= high), f"must be in [{low:g}, {high:g}]"
    return (lambda v: low <= v < high), f"must be in [{low:g}, {high:g})"


PROBABILITY = within(0, 1, include_high=False)
NOT_EMPTY: Rule = (bool, "must not be empty")

# Value ranges by dotted key. Unset optional values (None) are not checked; a list or tuple is
# checked entry by entry.
RANGES: dict[str, Rule] = {
    "run_dir": NOT_EMPTY,
    "seed": at_least(0),
    "stop_at_update": at_least(1),
    "model.conv_feature_layers": at_least(1),
    "model.encoder_layers": at_least(1),
    "model.encoder_embed_dim": at_least(1),
    "model.encoder_ffn_embed_dim": at_least(1),
    "model.encoder_attention_heads": at_least(1),
    "model.conv_pos": at_least(1),
    "model.conv_pos_groups": at_least(1),
    "model.dropout": PROBABILITY,
    "model.attention_dropout": PROBABILITY,
    "model.activation_dropout": PROBABILITY,
    "model.dropout_input": PROBABILITY,
    "objective.wav2vec2.dropout_features": PROBABILITY,
    "model.encoder_layerdrop": PROBABILITY,
    "model.feature_grad_mult": at_least(0),
    "objective.wav2vec2.final_dim": at_least(0),
    "objective.wav2vec2.latent_vars": at_least(1),
    "objective.wav2vec2.latent_groups": at_least(1),
    "objective.wav2vec2.latent_dim": at_least(0),
    "objective.wav2vec2.logit_temp": above(0),
    "objective.wav2vec2.num_negatives": at_least(1),
    "objective.wav2vec2.mask_prob": within(0, 1),
    "objective.wav2vec2.mask_length": at_least(1),
    "objective.wav2vec2.mask_min_masks": at_least(0),
    "objective.best_rq.num_codebooks": at_least(1),
    "objective.best_rq.codebook_size": at_least(2),
    "objective.best_rq.codebook_dim": at_least(1),
    "objective.best_rq.num_mel_bins": at_least(1),
    "objective.best_rq.mask_prob": within(0, 1),
    "objective.best_rq.mask_length": at_least(1),
    "objective.best_rq.mask_min_masks": at_least(0),
    "objective.wav2vec2.diversity_weight": at_least(0),
    "objective.wav2vec2.feature_penalty_weight": at_least(0),
    "data.language_alpha": within(0, 1),
    "data.corpus_alpha": within(0, 1),
    "data.max_tokens": at_least(1),
    "data.max_sample_size": at_least(1),
    "data.min_sample_size": above(0),
    "data.num_workers": at_least(0),
    "data.max_open_shards": at_least(1),
    "data.shuffle_buffer": at_least(0),
    "data.bucket_buffer": at_least(0),
    "data.num_buckets": at_least(1),
    "optim.lr": above(0),
    "optim.betas": PROBABILITY,
    "optim.eps": above(0),
    "optim.weight_decay": at_least(0),
    "optim.clip_norm": at_least(0),
    "optim.warmup_updates": at_least(0),
    "optim.max_update": at_least(1),
    "optim.end_lr": at_least(0),
    "optim.power": at_least(0),
    "optim.tri_stage_ratios": within(0, 1),
    "optim.tri_stage_init_scale": within(0, 1),
    "optim.tri_stage_final_scale": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "optim.update_freq": at_least(1),
    "optim.batch_tokens": at_least(0),
    "optim.max_consecutive_nonfinite": at_least(1),
    "distributed.activation_checkpointing_every": at_least(1),
    "distributed.timeout_s": at_least(1),
    "checkpoint.interval_updates": at_least(1),
    "checkpoint.interval_minutes": at_least(0),
    "checkpoint.keep_last": at_least(1),
    "checkpoint.keep_every": at_least(0),
    "checkpoint.resume": NOT_EMPTY,
    "logging.interval": at_least(1),
    "health.hang_s": at_least(0),
    "health.loss_spike_z": above(0),
    "health.grad_norm_z": above(0),
    "health.window": at_least(8),
    "health.max_rollbacks": at_least(0),
    "health.rollback_window": at_least(1),
    "health.rollback_lr_scale": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "health.rollback_lr_updates": at_least(0),
    "validation.interval_updates": at_least(1),
    "validation.max_seconds_per_language": above(0),
    "validation.probe_max_utterance_seconds": at_least(1),
    "validation.probe_job.gpus": at_least(0),
    "validation.probe_job.cpus": at_least(1),
    "validation.probe_job.mem_gb": at_least(1),
    "validation.probe_job.time_min": at_least(1),
    "validation.probe_job.max_requeues": at_least(0),
    "launcher.nodes": at_least(1),
    "launcher.gpus_per_node": at_least(0),
    "launcher.cpus_per_task": at_least(1),
    "launcher.time_min": at_least(1),
    "launcher.mem_gb": at_least(1),
    "launcher.max_requeues": at_least(0),
    "launcher.gpu": (lambda v: v in GPU_KEYS, f"must be one of {', '.join(GPU_KEYS)}"),
}

# Cross-field orderings: (key, relation, other key).
ORDERINGS: list[tuple[str, str, str]] = [
    ("data.max_sample_size", ">=", "data.min_sample_size"),
    ("data.max_tokens", ">=", "data.max_sample_size"),  # a micro-batch holds at least one full crop
    ("stop_at_update", "<=", "optim.max_update"),
    ("optim.end_lr", "<=", "optim.lr"),
]
_RELATIONS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, "<=": operator.le}

# (key, the key it must be a multiple of): attention heads, grouped positional conv, codebook groups.
MULTIPLES: list[tuple[str, str]] = [
    ("model.encoder_embed_dim", "model.encoder_attention_heads"),
    ("model.encoder_embed_dim", "model.conv_pos_groups"),
]

_DEFAULT_ZERO_STAGE = DistributedConfig().zero_stage

# A violation: (dotted key, what it must be, the value found).
Violation = tuple[str, str, Any]


def validate(cfg: TrainConfig, source: str = "<config>") -> None:
    """Raise ``ConfigError`` for the first broken rule: ``SOURCE: 'key' must be ..., got VALUE``."""
    for key, requirement, value in _violations(cfg):
        raise ConfigError(f"{source}: '{key}' {requirement}, got {_show(value)}")


def _violations(cfg: TrainConfig) -> Iterator[Violation]:
    # Ranges first: the cross-field rules divide by values the ranges guarantee positive.
    yield from _range_violations(cfg)
    yield from _cross_field_violations(cfg)
    yield from _ignored_by_backend(cfg)


def _get(cfg: TrainConfig, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


def _range_violations(cfg: TrainConfig) -> Iterator[Violation]:
    for key, (holds, requirement) in RANGES.items():
        for leaf_key, value in _leaves(key, _get(cfg, key)):
            if value is not None and not holds(value):
                yield leaf_key, requirement, value


def _leaves(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _leaves(f"{key}[{index}]", item)
    else:
        yield key, value


def _cross_field_violations(cfg: TrainConfig) -> Iterator[Violation]:
    for key, relation, other in ORDERINGS:
        value, bound = _get(cfg, key), _get(cfg, other)
        if value is not None and not _RELATIONS[relation](value, bound):
            yield key, f"must be {relation} {other} ({_show(bound)})", value
    for key, other in MULTIPLES:
        value, divisor = _get(cfg, key), _get(cfg, other)
        if value % divisor:
            yield _model_key_of(cfg, key), f"must be a multiple of {other} ({divisor})", value
    optim, model = cfg.optim, cfg.model
    if optim.batch_tokens and optim.update_freq != 1:
        requirement = "must be 1 (the default) when optim.batch_tokens is set, which derives it"
        yield "optim.update_freq", requirement, optim.update_freq
    if not math.isclose(sum(optim.tri_stage_ratios), 1.0):
        yield "optim.tri_stage_ratios", "must add up to 1", list(optim.tri_stage_ratios)
    if cfg.validation.probes_async and not (cfg.validation.probe and cfg.data.valid):
        yield "validation.probes_async", "needs validation.probe and data.valid (the held-out set)", True
    if cfg.health.hang_s is not None and 0 < cfg.health.hang_s >= cfg.distributed.timeout_s:
        requirement = (f"must be < distributed.timeout_s ({cfg.distributed.timeout_s}), so that the watchdog "
                       "speaks before a collective times out (0 = no watchdog)")  # fmt: skip
        yield "health.hang_s", requirement, cfg.health.hang_s
    if not model.conv_feature_layers:
        yield "model.conv_feature_layers", "must list at least one conv block", []
    stride = math.prod(s for _, _, s in model.conv_feature_layers)
    if cfg.objective.name == "best_rq" and stride % MEL_HOP_SAMPLES:
        requirement = f"must have a total stride that is a multiple of {MEL_HOP_SAMPLES} samples for best_rq"
        yield "model.conv_feature_layers", requirement + " (its targets stack 10 ms log-mel frames)", stride
    yield from _wav2vec2_violations(cfg)


def _wav2vec2_violations(cfg: TrainConfig) -> Iterator[Violation]:
    w2v2 = cfg.objective.wav2vec2
    vq_dim = w2v2.codevector_dim(cfg.model.encoder_embed_dim)
    if vq_dim % w2v2.latent_groups:
        requirement = f"must be a multiple of objective.wav2vec2.latent_groups ({w2v2.latent_groups})"
        yield _model_key_of(cfg, "objective.wav2vec2.codevector_dim"), requirement, vq_dim
    latent_temp = w2v2.latent_temp
    start, floor, decay = latent_temp
    if not 0 < floor <= start:
        requirement = "must be (start, floor, decay) with 0 < floor <= start"
        yield "objective.wav2vec2.latent_temp", requirement, list(latent_temp)
    if not 0 < decay <= 1:
        yield "objective.wav2vec2.latent_temp[2]", "must be in (0, 1]", decay


def _model_key_of(cfg: TrainConfig, key: str) -> str:
    """The field a derived size comes from (codevector_dim: latent_dim, else final_dim, else model dim)."""
    if key != "objective.wav2vec2.codevector_dim":
        return key
    candidates = ("objective.wav2vec2.latent_dim", "objective.wav2vec2.final_dim", "model.encoder_embed_dim")
    return next(k for k in candidates if _get(cfg, k))


def _ignored_by_backend(cfg: TrainConfig) -> Iterator[Violation]:
    """Knobs the chosen backend would silently ignore."""
    dist = cfg.distributed
    with_backend = f"with distributed.backend={dist.backend}"
    if dist.backend == "deepspeed" and dist.compile:
        yield "distributed.compile", f"must be false {with_backend}, which runs the model uncompiled", True
    if dist.backend == "deepspeed" and cfg.checkpoint.async_save:
        yield "checkpoint.async_save", f"must be false {with_backend}, which saves synchronously", True
    if dist.backend != "fsdp" and dist.fsdp_sharding != "full":
        yield (
            "distributed.fsdp_sharding",
            f"must be 'full' {with_backend} (only fsdp reads it)",
            dist.fsdp_sharding,
        )
    if dist.backend != "deepspeed" and dist.zero_stage != _DEFAULT_ZERO_STAGE:
        requirement = f"must be {_DEFAULT_ZERO_STAGE} {with_backend} (only deepspeed reads it)"
        yield "distributed.zero_stage", requirement, dist.zero_stage


def _show(value: Any) -> str:
    """The value as it would be written in YAML (true, not True)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)
