"""The config dataclasses: every field, its default and its meaning.

Field defaults are the wav2vec 2.0 BASE values: fairseq's ``Wav2Vec2Config`` in
``fairseq/models/wav2vec/wav2vec2.py`` and its ``wav2vec2_base_librispeech.yaml`` recipe
(arXiv 2006.11477). Named architectures are in :mod:`xlsr.config.presets`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xlsr.process import UserError

# Audio samples per second the model consumes; shards are resampled to it (wav2vec 2.0 and XLS-R use 16 kHz).
SAMPLE_RATE = 16_000


class ConfigError(UserError, ValueError):
    """A config file or override does not match the schema or breaks a rule (exit code 2, one line)."""


@dataclass
class ModelConfig:
    """The speech encoder every objective trains (fairseq names): conv feature extractor and
    Transformer. What it is trained with is the ``objective`` section."""

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
    encoder_layerdrop: float = 0.05
    feature_grad_mult: float = 0.1

    @property
    def frame_rate_hz(self) -> float:
        """Encoder frames per second of audio: SAMPLE_RATE over the product of the conv strides (50)."""
        return SAMPLE_RATE / math.prod(stride for _, _, stride in self.conv_feature_layers)

    def conv_output_lengths(self, num_samples: int) -> list[int]:
        """Length after each conv block: floor((L - kernel) / stride) + 1 (no padding); 0 once too short."""
        lengths, length = [], num_samples
        for _, kernel, stride in self.conv_feature_layers:
            length = (length - kernel) // stride + 1 if length >= kernel else 0
            lengths.append(length)
        return lengths

    def num_frames(self, num_samples: int) -> int:
        """Encoder frames for ``num_samples`` audio samples (32,000 → 99 for the standard encoder)."""
        return self.conv_output_lengths(num_samples)[-1] if self.conv_feature_layers else num_samples


@dataclass
class Wav2Vec2Config:
    """wav2vec 2.0's quantizer, negatives, masks and loss weights (fairseq names; ``objective.wav2vec2``)."""

    dropout_features: float = 0.1
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
    # Weights of the extra losses, multiplied by the number of masked frames (fairseq loss_weights).
    diversity_weight: float = 0.1
    feature_penalty_weight: float = 10.0

    def output_dim(self, encoder_dim: int) -> int:
        """Size of the contrastive space (final_proj, project_q): final_dim, or the model dim if 0."""
        return self.final_dim if self.final_dim > 0 else encoder_dim

    def codevector_dim(self, encoder_dim: int) -> int:
        """Size of a concatenated codebook vector: latent_dim, or output_dim if 0."""
        return self.latent_dim if self.latent_dim > 0 else self.output_dim(encoder_dim)


# BEST-RQ's log-mel hop (10 ms): its targets stack these frames to the encoder's frame rate.
MEL_HOP_SAMPLES = 160


@dataclass
class BestRQConfig:
    """BEST-RQ targets and masks (Chiu et al., arXiv 2202.01855; docs/model.md, "BEST-RQ").

    Targets: log-mel frames stacked to the encoder's frame rate, normalised per utterance, projected
    by a frozen random matrix and matched to the nearest entry of each frozen random codebook.
    """

    num_codebooks: int = 1
    codebook_size: int = 8192
    codebook_dim: int = 16
    num_mel_bins: int = 80
    # Masks with fairseq's semantics (xlsr.model.masking): about mask_prob × frames / mask_length
    # spans of mask_length frames. The paper's 1 % chance per frame of starting a 400 ms span is, at
    # the encoder's 50 frames per second, mask_prob 0.2 with mask_length 20.
    mask_prob: float = 0.2
    mask_length: int = 20
    mask_min_masks: int = 2


@dataclass
class ObjectiveConfig:
    """Which pretraining objective trains the encoder (xlsr.objectives; docs/architecture.md), and
    each objective's section (only the named one is read)."""

    name: Literal["wav2vec2", "best_rq"] = "wav2vec2"
    wav2vec2: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    best_rq: BestRQConfig = field(default_factory=BestRQConfig)


@dataclass
class DataConfig:
    """Sharded corpora, upsampling and batching."""

    # index.json files written by `xlsr shard` (or directories holding one).
    train: list[str] = field(default_factory=list)
    # Shard readers (open files or `pipe:` processes) per loader slot; the least drawn stream's reader
    # is closed first and reopens where it stopped (docs/data.md, "Open shard readers").
    max_open_shards: int = 16
    # Held-out index.json files (`xlsr shard --valid-seconds` writes OUT/valid/index.json); empty = no
    # validation.
    valid: list[str] = field(default_factory=list)
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
    # Audio samples per update summed over all ranks and micro-batches, padding included (fairseq's
    # max_tokens × world size × update_freq). When set (> 0), update_freq is derived from it at
    # start-up for the job's world size, so the effective batch survives any allocation.
    batch_tokens: int = 0
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
    # Also save when this many minutes have passed since the last save (0 = off); whichever of the
    # two comes first. Ranks agree through the stop-flag exchange each update already makes.
    interval_minutes: float = 0.0
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
class ProbeJobConfig:
    """What one SLURM probe job asks for (``validation.probes_async`` under SLURM)."""

    gpus: int = 1
    cpus: int = 8
    mem_gb: int | None = None
    time_min: int = 60
    partition: str | None = None  # None: launcher.partition
    max_requeues: int = 5


@dataclass
class ValidationConfig:
    """Held-out loss every ``interval_updates`` (and at update 0); probes on every checkpoint."""

    interval_updates: int = 5_000
    # At most this much audio per (corpus, language) of the valid set (chosen by key, deterministic);
    # the probes read the same amount, as whole utterances.
    max_seconds_per_language: float = 300.0
    # The probes of docs/evaluation.md on every checkpoint and on the initial model (their baseline):
    # phone (or character) recognition and language ID, on frozen features of every layer.
    probe: bool = True
    # True: probes run beside training (a SLURM job per checkpoint, or one low-priority local
    # process), never blocking it; false: rank 0 probes each checkpoint after saving while the
    # other ranks wait. None: true under SLURM, false otherwise.
    probes_async: bool | None = None
    # Longer held-out utterances are left out of the probes (phone sequences cannot be cropped).
    probe_max_utterance_seconds: float = 20.0
    probe_job: ProbeJobConfig = field(default_factory=ProbeJobConfig)


HealthAction = Literal["warn", "stop", "rollback"]


@dataclass
class HealthConfig:
    """The health sentinel: what each signal of a sick run does (docs/training.md, "Health").

    ``warn`` logs the event; ``stop`` ends the run without saving (exit 78); ``rollback`` restores
    the newest intact checkpoint from before the anomaly, skips the data drawn since then, and goes
    on. Signals are read once per logging interval from values the loop fetches anyway.
    """

    # optim.max_consecutive_nonfinite skipped updates in a row.
    nonfinite: HealthAction = "rollback"
    # An update's loss this many robust standard deviations (1.4826 x MAD) above the median of the
    # last ``window`` healthy updates; judged once ``window // 4`` updates are known.
    loss_spike: HealthAction = "rollback"
    loss_spike_z: float = 12.0
    # The same test on log(gradient norm).
    grad_norm: HealthAction = "warn"
    grad_norm_z: float = 12.0
    window: int = 200
    # The objective's failure signatures, checked every logging interval after 4 x warmup: its loss
    # at chance level, and codebook collapse (see the objective's alarms).
    at_chance: HealthAction = "warn"
    codebook: HealthAction = "warn"
    # At most this many rollbacks within ``rollback_window`` updates; one more stops the run.
    max_rollbacks: int = 3
    rollback_window: int = 10_000
    # After a rollback, the LR times this factor for this many updates (1.0 = unchanged).
    rollback_lr_scale: float = 1.0
    rollback_lr_updates: int = 0
    # A rank that makes no progress (data, update, validation, save) for this many seconds ends the
    # job with every rank's stacks in <run_dir>/hangs/ and exit 76 (0 = no watchdog). Must be below
    # distributed.timeout_s, after which a waiting collective fails on its own; None = 80% of it.
    hang_s: float | None = None

    def hang_seconds(self, timeout_s: float) -> float:
        """``hang_s``, or its default under a collective timeout of ``timeout_s``."""
        return 0.8 * timeout_s if self.hang_s is None else self.hang_s


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
    # The GPU model (a key of xlsr.hardware.GPUS, e.g. h100): `xlsr plan` and the memory check of
    # `xlsr launch slurm` use it; None means h100, said so in the plan.
    gpu: str | None = None


@dataclass
class TrainConfig:
    """Everything one pretraining run needs."""

    run_dir: str = "runs/default"
    seed: int = 1
    # Stop after this many updates (defaults to optim.max_update); lets a demo run a short prefix.
    stop_at_update: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.run_dir) / "checkpoints")

    @property
    def last_update(self) -> int:
        return self.stop_at_update if self.stop_at_update is not None else self.optim.max_update
