"""Typed configuration.

Config flows one way: a YAML recipe, then dotted command-line overrides (``optim.lr=5e-4``), are
validated into the dataclasses below, which the components consume. Unknown or mistyped keys are
errors that name the key, the file and the valid choices. Field defaults are the wav2vec 2.0 BASE
values of fairseq's ``Wav2Vec2Config`` (../shared/reference/wav2vec2_xlsr_spec.md §1.2).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override does not match the schema."""


# --------------------------------------------------------------------------------------------------
# Schema


@dataclass
class ModelConfig:
    """wav2vec 2.0 / XLS-R architecture and pretraining objective (fairseq names)."""

    extractor_mode: Literal["group_norm", "layer_norm"] = "group_norm"
    # (channels, kernel, stride) per conv block of the feature encoder.
    conv_feature_layers: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.1
    dropout_features: float = 0.1
    encoder_layerdrop: float = 0.05
    feature_grad_mult: float = 0.1
    final_dim: int = 256
    latent_vars: int = 320
    latent_groups: int = 2
    # Codebook vector size (vq_dim); 0 means final_dim, as in fairseq.
    latent_dim: int = 0
    # Gumbel temperature (start, floor, decay per optimizer update).
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    logit_temp: float = 0.1
    num_negatives: int = 100
    mask_prob: float = 0.65
    mask_length: int = 10
    mask_min_masks: int = 2
    # fairseq's require_same_masks: every utterance of a micro-batch gets the same masked count.
    require_same_masks: bool = True

    @property
    def output_dim(self) -> int:
        """Size of the contrastive space (final_proj, project_q): final_dim, or the model dim if 0."""
        return self.final_dim if self.final_dim > 0 else self.encoder_embed_dim

    @property
    def codevector_dim(self) -> int:
        """Size of a concatenated codebook vector: latent_dim, or output_dim if 0."""
        return self.latent_dim if self.latent_dim > 0 else self.output_dim


@dataclass
class LossConfig:
    """Weights of the extra losses, multiplied by the number of masked frames (fairseq loss_weights)."""

    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0


@dataclass
class DataConfig:
    """Sharded corpora, upsampling and batching."""

    # index.json files written by `xlsr shard` (or directories holding one).
    train: list[str] = field(default_factory=list)
    # p ∝ (n/N)^alpha over languages within a corpus, then over corpora (XLS-R: 0.5 and 0.5).
    language_alpha: float = 0.5
    corpus_alpha: float = 0.5
    # Total audio samples per micro-batch, padding included (fairseq max_tokens).
    max_tokens: int = 1_400_000
    max_sample_size: int = 250_000
    min_sample_size: int = 32_000
    # Zero mean / unit variance per utterance (layer_norm models).
    normalize: bool = False
    num_workers: int = 2
    shuffle_buffer: int = 500
    # Samples held back to form length-homogeneous batches.
    bucket_buffer: int = 200
    num_buckets: int = 8


@dataclass
class OptimConfig:
    """Optimizer, learning-rate schedule and update accounting."""

    # "adam" = fairseq Adam (decoupled decay on all parameters); "adamw" = torch AdamW.
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    clip_norm: float = 0.0
    schedule: Literal["polynomial", "tri_stage"] = "polynomial"
    warmup_updates: int = 32_000
    max_update: int = 400_000
    end_lr: float = 0.0
    power: float = 1.0
    tri_stage_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5)
    tri_stage_init_scale: float = 0.01
    tri_stage_final_scale: float = 0.05
    # Micro-batches accumulated per optimizer update.
    update_freq: int = 1
    # Stop with an error after this many non-finite updates in a row (each one is skipped).
    max_consecutive_nonfinite: int = 10


@dataclass
class DistributedConfig:
    """Parallelism and precision; applied to the plain model by xlsr.engine.parallel."""

    backend: Literal["ddp", "fsdp", "deepspeed"] = "ddp"
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    fsdp_sharding: Literal["full", "hybrid"] = "full"
    # DeepSpeed ZeRO stage: 1 = optimizer state, 2 = + gradients, 3 = + parameters partitioned.
    zero_stage: Literal[1, 2, 3] = 2
    # "none", "layers" (every k-th transformer layer) or "layers+conv" (also the conv encoder).
    activation_checkpointing: Literal["none", "layers", "layers+conv"] = "none"
    activation_checkpointing_every: int = 1
    compile: bool = False
    # Collective timeout: a dead or hung rank fails the job after this long.
    timeout_s: int = 600


@dataclass
class CheckpointConfig:
    """Where and how often to save, and what to keep."""

    # Defaults to <run_dir>/checkpoints.
    dir: str | None = None
    interval_updates: int = 25_000
    keep_last: int = 2
    # Also keep every checkpoint whose step is a multiple of this (0 = none).
    keep_every: int = 0
    # "auto": resume from the newest complete checkpoint; "never"; or a checkpoint path.
    resume: str = "auto"
    # Initialize weights from an imported checkpoint (xlsr import) when not resuming.
    init_from: str | None = None
    # DDP/FSDP: write periodic checkpoints in a background thread after staging them in CPU memory.
    async_save: bool = False


@dataclass
class LoggingConfig:
    """Console, progress and Weights & Biases."""

    interval: int = 100
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    wandb_project: str = "xlsr"
    wandb_entity: str | None = None
    run_name: str | None = None
    progress: bool = True


@dataclass
class LauncherConfig:
    """Cluster resources for `xlsr launch slurm`."""

    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 10
    partition: str | None = None
    time_min: int = 4320
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    mem_gb: int | None = None
    max_requeues: int = 20


@dataclass
class TrainConfig:
    """Everything one pretraining run needs."""

    run_dir: str = "runs/default"
    seed: int = 1
    # Stop after this many updates (defaults to optim.max_update); lets a demo run a short prefix.
    stop_at_update: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.run_dir) / "checkpoints")

    @property
    def last_update(self) -> int:
        return self.stop_at_update if self.stop_at_update is not None else self.optim.max_update


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), cls: type = TrainConfig) -> Any:
    """Read a YAML recipe, apply ``a.b=value`` overrides and validate into ``cls``."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return from_dict(cls, raw, source=source)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def from_dict(cls: type, data: Any, source: str = "<dict>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{hint}; valid keys under '{where}': "
                + ", ".join(fields)
            )
    values = {key: _convert(hints[key], value, source, f"{prefix}{key}") for key, value in data.items()}
    return cls(**values)


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, source, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        if origin is list:
            return [_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, source, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} entries, got {value!r}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in pairs)
    return _convert_scalar(hint, value, source, key)


def _convert_scalar(hint: Any, value: Any, source: str, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Any:
        return value
    raise ConfigError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Saving


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML-safe data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, dump_config(cfg))
