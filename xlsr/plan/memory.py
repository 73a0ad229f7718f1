"""Peak memory of one training rank, from the config alone (docs/planning.md, "Memory").

peak allocated = persistent state + the larger of two phases:

- **start of backward**: the activations autograd keeps (`xlsr.model.activations` and the objective's
  head, for the micro-batch's crops), plus what the backend holds while computing: FSDP's unsharded
  units (the root, which is not resharded, and two layers: the current one and the prefetched one),
  and under DDP with 16-bit autocast its cached 16-bit weight copies;
- **end of backward**: the conv encoder's activations with two gradients of its largest block's size
  and a column buffer, beside the (nearly) complete gradients;
- **optimizer step**: the gradients and the Adam update's temporary (one fp32 value per parameter of
  the shard).

Persistent state per parameter: DDP keeps fp32 parameters (4 B), Adam's two moments (8 B) and its
gradient buckets (4 B); FSDP2 keeps fp32 parameter and Adam shards (12 B / shard size); DeepSpeed
ZeRO keeps 16-bit parameters and gradients (stage 3: sharded; stage 2: gradients sharded) and fp32
master weights, gradients and moments sharded (16 B / world size). A GPU adds the allocator's
headroom (``ALLOCATOR_HEADROOM`` of the allocated peak) and memory outside the allocator
(`xlsr.hardware.CONTEXT_GIB`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from xlsr.config import TrainConfig, for_world_size
from xlsr.data.stages import bucket_edges
from xlsr.hardware import CONTEXT_GIB, GIB
from xlsr.model.activations import encoder_activations
from xlsr.objectives import Objective, build_objective

# Reserved over allocated in PyTorch's caching allocator during training (fragmentation, rounding).
ALLOCATOR_HEADROOM = 0.10
FP32 = 4
# DeepSpeed's default reduce/all-gather bucket: 5e8 elements of the 16-bit gradients.
DEEPSPEED_BUCKET_ELEMENTS = 5e8


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    root: int  # outside the repeated transformer layers (FSDP's root unit)
    largest_layer: int

    @classmethod
    def of(cls, objective: Objective) -> ParameterCounts:
        with torch.device("meta"):
            model = objective.build_model()
        layers = [sum(p.numel() for p in block.parameters()) for block in model.blocks]
        total = sum(p.numel() for p in model.parameters())
        return cls(total, total - sum(layers), max(layers, default=0))


@dataclass(frozen=True)
class Ranks:
    """The ranks of a job: all of them, and those on one node (FSDP's hybrid sharding shards over
    the ranks of a node)."""

    world: int
    per_node: int

    @classmethod
    def single_node(cls, world: int) -> Ranks:
        return cls(world, world)


@dataclass(frozen=True)
class MicroBatch:
    crops: int
    crop_samples: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one rank at the peak of an update, by what holds them."""

    batch: MicroBatch
    parameters: float
    optimizer: float
    gradients: float
    backend_buffers: float  # DDP buckets and autocast copies, FSDP unsharded units, ZeRO buckets
    activations: float
    transient: float  # the optimizer step's temporaries (0 when backward is the peak)
    peak_phase: str  # "start of backward", "end of backward" or "optimizer step"
    on_gpu: bool  # adds the allocator's headroom and the CUDA context

    @property
    def allocated(self) -> float:
        parts = (self.parameters, self.optimizer, self.gradients, self.backend_buffers)
        return sum(parts) + self.activations + self.transient

    @property
    def headroom(self) -> float:
        """The caching allocator's reserve above the allocated peak."""
        return ALLOCATOR_HEADROOM * self.allocated if self.on_gpu else 0.0

    @property
    def context(self) -> float:
        return CONTEXT_GIB * GIB if self.on_gpu else 0.0

    @property
    def device_total(self) -> float:
        """What the card must hold: allocated, the allocator's headroom, and the context."""
        return self.allocated + self.headroom + self.context

    def as_gib(self) -> dict[str, float]:
        fields = ("parameters", "optimizer", "gradients", "backend_buffers", "activations", "transient")
        values = {name: getattr(self, name) for name in fields}
        values |= {"allocated": self.allocated, "allocator_headroom": self.headroom, "context": self.context}
        return {name: value / GIB for name, value in (values | {"total": self.device_total}).items()}


def compute_bytes(cfg: TrainConfig) -> int:
    return FP32 if cfg.distributed.precision == "fp32" else 2


def full_crops(cfg: TrainConfig, crops: int) -> MicroBatch:
    return MicroBatch(crops, cfg.data.max_sample_size)


def bucket_micro_batches(cfg: TrainConfig) -> list[MicroBatch]:
    """The fullest micro-batch of each bucket: ⌊max_tokens / e⌋ crops of its longest length e."""
    return [MicroBatch(max(1, cfg.data.max_tokens // int(e)), int(e)) for e in bucket_edges(cfg.data)]


def checkpointed_layers(cfg: TrainConfig) -> int:
    if cfg.distributed.activation_checkpointing == "none":
        return 0
    return math.ceil(cfg.model.encoder_layers / cfg.distributed.activation_checkpointing_every)


@dataclass(frozen=True)
class BackwardActivations:
    """Activations at the two candidate peaks of backward, for a micro-batch."""

    start: float  # everything kept, as backward begins (plus one recomputed checkpointed layer)
    conv: float  # late in backward: only the conv encoder's, with its gradients and column buffer


def activation_bytes(
    cfg: TrainConfig, objective: Objective, batch: MicroBatch, device_type: str
) -> BackwardActivations:
    """Activations of ``batch`` at the two peaks of backward."""
    samples, b = batch.crop_samples, compute_bytes(cfg)
    acts = encoder_activations(cfg.model, samples, b, device_type)
    ckpt_layers = checkpointed_layers(cfg)
    ckpt_conv = cfg.distributed.activation_checkpointing == "layers+conv"
    kept = acts.total(cfg.model.encoder_layers, ckpt_layers, ckpt_conv)
    kept += objective.head_activation_bytes(samples, b)
    recomputed = acts.layer if ckpt_layers else 0.0  # one checkpointed layer is re-run at a time
    inputs = batch.crops * samples * (FP32 + 1)  # the fp32 batch and its padding mask
    return BackwardActivations(
        start=batch.crops * (kept + recomputed) + acts.per_micro_batch + inputs,
        # A checkpointed conv encoder is recomputed whole for its backward, so this phase is the same.
        conv=batch.crops * (acts.conv + 2 * acts.conv_block_output) + acts.conv_workspace + inputs,
    )


def estimate_memory(
    cfg: TrainConfig,
    ranks: Ranks,
    device_type: str = "cuda",
    batch: MicroBatch | None = None,
    counts: ParameterCounts | None = None,
) -> MemoryEstimate:
    """The peak of one rank training ``cfg`` on ``ranks``, for ``batch`` (default: the fullest
    micro-batch of the bucket that needs the most)."""
    objective = build_objective(cfg)
    counts = counts or ParameterCounts.of(objective)
    batches = [batch] if batch is not None else bucket_micro_batches(cfg)
    estimates = [_estimate(cfg, objective, ranks, device_type, b, counts) for b in batches]
    return max(estimates, key=lambda estimate: estimate.allocated)


def _estimate(
    cfg: TrainConfig, objective: Objective, ranks: Ranks, device_type: str, batch: MicroBatch, counts
) -> MemoryEstimate:
    states = backend_states(cfg, counts, ranks)
    acts = activation_bytes(cfg, objective, batch, device_type)
    # Accumulating micro-batches keep the gradients from the first backward on.
    accumulated = states.gradients if cfg.optim.update_freq > 1 else 0.0
    # (phase, gradients, backend buffers, activations, temporaries) at each candidate peak
    phases = [
        ("start of backward", accumulated, states.start_buffers, acts.start, 0.0),
        ("end of backward", states.gradients, states.end_buffers, acts.conv, 0.0),
        ("optimizer step", states.gradients, 0.0, 0.0, states.step_temporaries),
    ]
    phase, gradients, buffers, activations, temporaries = max(phases, key=lambda p: sum(p[1:]))
    return MemoryEstimate(
        batch=batch,
        parameters=states.parameters,
        optimizer=states.optimizer,
        gradients=states.persistent_gradients + gradients,
        backend_buffers=states.persistent_buffers + buffers,
        activations=activations,
        transient=temporaries,
        peak_phase=phase,
        on_gpu=device_type == "cuda",
    )


@dataclass(frozen=True)
class BackendStates:
    parameters: float
    optimizer: float
    persistent_gradients: float  # DeepSpeed's 16-bit gradients, always allocated
    persistent_buffers: float
    start_buffers: float  # beside the activations as backward starts
    end_buffers: float  # beside the conv encoder's activations late in backward
    gradients: float  # complete by the end of backward, until the optimizer step
    step_temporaries: float


def backend_states(cfg: TrainConfig, counts: ParameterCounts, ranks: Ranks) -> BackendStates:
    dist, p, b = cfg.distributed, counts.total, compute_bytes(cfg)
    if dist.backend == "ddp":
        autocast_copies = b * p if b < FP32 else 0.0
        return BackendStates(
            FP32 * p, 8 * p, 0.0, FP32 * p, autocast_copies, autocast_copies, FP32 * p, FP32 * p
        )
    if dist.backend == "fsdp":
        shard = ranks.world if dist.fsdp_sharding == "full" else ranks.per_node
        # The root stays unsharded from forward to the end of backward; two layers are gathered at a
        # time (the one running and the prefetched one), in the compute dtype.
        start = (counts.root + 2 * counts.largest_layer) * b
        sharded = FP32 * p / shard
        return BackendStates(sharded, 2 * sharded, 0.0, 0.0, start, counts.root * b, sharded, sharded)
    return _deepspeed_states(cfg, counts, ranks.world)


def _deepspeed_states(cfg: TrainConfig, counts: ParameterCounts, world_size: int) -> BackendStates:
    p, b, stage = counts.total, compute_bytes(cfg), cfg.distributed.zero_stage
    bucket = min(b * p, b * DEEPSPEED_BUCKET_ELEMENTS)
    params = b * p / world_size if stage == 3 else b * p
    grads = b * p / world_size if stage >= 2 else b * p
    live = (counts.root + 2 * counts.largest_layer) * b if stage == 3 else 0.0
    master = 16 * p / world_size  # fp32 weights, gradients and both moments, partitioned
    return BackendStates(params, master, grads, bucket, live, live, 0.0, FP32 * p / world_size)


def total_by_checkpointing(cfg: TrainConfig, ranks: Ranks, counts: ParameterCounts) -> dict[str, float]:
    """Bytes per GPU at the config's micro-batches for each activation checkpointing mode."""
    return {
        mode: estimate_memory(
            with_overrides(cfg, distributed={"activation_checkpointing": mode}), ranks, counts=counts
        ).device_total
        for mode in ("none", "layers", "layers+conv")
    }


def largest_fitting_crops(
    cfg: TrainConfig, ranks: Ranks, capacity: float, counts: ParameterCounts, limit: int = 100_000
) -> int:
    """The largest n such that ``data.max_tokens`` = n full crops fits ``capacity`` bytes in every
    bucket (shorter buckets hold more crops, up to the same tokens); 0 when not even one does."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        # optim.batch_tokens derives update_freq from max_tokens: more micro-batches accumulate gradients
        tokens = for_world_size(
            with_overrides(cfg, data={"max_tokens": mid * cfg.data.max_sample_size}), ranks.world
        )
        if estimate_memory(tokens, ranks, counts=counts).device_total <= capacity:
            lo = mid
        else:
            hi = mid - 1
    return lo


def with_overrides(cfg: TrainConfig, **sections: dict) -> TrainConfig:
    """``cfg`` with fields of its sections replaced, e.g. ``distributed={"backend": "fsdp"}``."""
    return dataclasses.replace(
        cfg, **{name: dataclasses.replace(getattr(cfg, name), **fields) for name, fields in sections.items()}
    )
