"""The one place where parallelism and memory policies are applied to the plain model.

Order (torchtitan's): activation checkpointing → optional torch.compile per transformer layer →
data parallelism (DDP, or FSDP2 with one unit per transformer layer plus the root). The model file
knows nothing of any of this; it only exposes ``encoder.layers`` and ``feature_extractor``.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from xlsr.config import DistributedConfig
from xlsr.engine.distributed import DistEnv

PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def apply_activation_checkpointing(model: nn.Module, cfg: DistributedConfig) -> None:
    if cfg.activation_checkpointing == "none":
        return
    layers = model.encoder.layers
    for index, layer in enumerate(layers):
        if index % cfg.activation_checkpointing_every == 0:
            layers[index] = checkpoint_wrapper(layer, preserve_rng_state=True)
    if cfg.activation_checkpointing == "layers+conv":
        model.feature_extractor = checkpoint_wrapper(model.feature_extractor, preserve_rng_state=True)


def apply_compile(model: nn.Module) -> None:
    """Compile each transformer layer once (they share a graph), as torchtitan does."""
    for index, layer in enumerate(model.encoder.layers):
        model.encoder.layers[index] = torch.compile(layer, fullgraph=False)


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


def apply_fsdp(model: nn.Module, cfg: DistributedConfig, env: DistEnv) -> nn.Module:
    mesh = data_parallel_mesh(cfg, env)
    dtype = PRECISION_DTYPES[cfg.precision]
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.encoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    # The root unit holds the conv encoder, projections, positional conv and quantizer.
    # It is not resharded after forward: backward needs it again immediately.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


def parallelize(
    model: nn.Module, cfg: DistributedConfig, env: DistEnv, find_unused_parameters: bool = False
) -> nn.Module:
    """Wrap ``model`` (already on ``env.device``) for training; returns the module to call.

    ``find_unused_parameters`` must be set for DDP when some parameters can miss the graph
    (layer drop, a frozen feature encoder).
    """
    apply_activation_checkpointing(model, cfg)
    if cfg.compile:
        apply_compile(model)
    if cfg.backend == "fsdp":
        return apply_fsdp(model, cfg, env)
    if cfg.backend == "ddp":
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    raise ValueError(f"unknown distributed.backend {cfg.backend!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
