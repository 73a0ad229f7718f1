"""The one place where parallelism and memory policies are applied to the plain model.

Order (torchtitan's): activation checkpointing → optional torch.compile per transformer layer →
data parallelism (DDP, or FSDP2 with one unit per transformer layer plus the root). The model file
knows nothing of any of this; it only exposes its repeated ``blocks``, its ``feature_extractor`` and
initialised templates of both (`xlsr.model.encoder.SpeechEncoder`), whatever the objective.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    _CHECKPOINT_PREFIX,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from xlsr.config import DistributedConfig
from xlsr.engine.distributed import DistEnv

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, cfg: DistributedConfig) -> None:
    if cfg.activation_checkpointing == "none":
        return
    layers = model.blocks
    for index, layer in enumerate(layers):
        if index % cfg.activation_checkpointing_every == 0:
            layers[index] = checkpoint_wrapper(layer, preserve_rng_state=True)
    if cfg.activation_checkpointing == "layers+conv":
        model.feature_extractor = checkpoint_wrapper(model.feature_extractor, preserve_rng_state=True)


def apply_compile(model: nn.Module) -> None:
    """Compile each transformer layer once (they share a graph), as torchtitan does."""
    for index, layer in enumerate(model.blocks):
        model.blocks[index] = torch.compile(layer, fullgraph=False)


def data_parallel_mesh(cfg: DistributedConfig, env: DistEnv) -> DeviceMesh:
    if cfg.fsdp_sharding == "full":
        return init_device_mesh(env.device.type, (env.world_size,), mesh_dim_names=("shard",))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    if env.world_size % per_node:
        raise ValueError(
            f"hybrid sharding needs equal ranks per node; world {env.world_size}, node {per_node}"
        )
    return init_device_mesh(
        env.device.type, (env.world_size // per_node, per_node), mesh_dim_names=("replicate", "shard")
    )


@torch.no_grad()
def materialize_sharded(model: nn.Module, seed: int, device: torch.device) -> None:
    """Allocate a sharded meta-device model and initialise it exactly as one built whole from ``seed``.

    No rank ever holds the whole model: each block, then the rest of the model, is initialised on
    the CPU by itself (the model's templates; its init draws each unit from its own generator) and
    only this rank's shard of it is kept. The result does not depend on the world size.
    """
    model.to_empty(device=device)
    for index, block in enumerate(model.blocks):
        _copy_into(block, model.block_template(index, seed))
    blocks_prefix = next(name for name, module in model.named_modules() if module is model.blocks) + "."
    _copy_into(model, model.root_template(seed), skip_prefix=blocks_prefix)


def _copy_into(target: nn.Module, source: nn.Module, skip_prefix: str | None = None) -> None:
    values = dict(source.named_parameters()) | dict(source.named_buffers())
    for name, tensor in [*target.named_parameters(), *target.named_buffers()]:
        name = name.replace(_CHECKPOINT_PREFIX, "")
        if skip_prefix and name.startswith(skip_prefix):
            continue
        full = values[name]
        if isinstance(tensor, DTensor):
            local = distribute_tensor(full.to(tensor.dtype), tensor.device_mesh, tensor.placements).to_local()
            tensor.to_local().copy_(local)
        else:
            tensor.copy_(full)


def apply_fsdp(model: nn.Module, cfg: DistributedConfig, env: DistEnv) -> nn.Module:
    mesh = data_parallel_mesh(cfg, env)
    dtype = PRECISION_DTYPES[cfg.precision]
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # The root unit holds the conv encoder, projections, positional conv and the objective's head.
    # It is not resharded after forward: backward needs it again immediately.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


def parallelize(
    model: nn.Module,
    cfg: DistributedConfig,
    env: DistEnv,
    find_unused_parameters: bool = False,
    init_seed: int = 0,
) -> nn.Module:
    """Wrap ``model`` for training; returns the module to call.

    ``model`` is on ``env.device``, or — for FSDP — on the meta device, in which case it is sharded
    first and then initialised shard by shard from ``init_seed``. ``find_unused_parameters`` must be
    set for DDP when some parameters can miss the graph (layer drop, a frozen feature encoder).
    """
    apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        apply_compile(model)
    if cfg.backend == "fsdp":
        on_meta = any(p.is_meta for p in model.parameters())
        apply_fsdp(model, cfg, env)
        if on_meta:
            materialize_sharded(model, init_seed, env.device)
        return model
    if cfg.backend == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    raise ValueError(f"unknown distributed.backend {cfg.backend!r}")
