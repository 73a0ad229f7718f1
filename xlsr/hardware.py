"""Accelerators the project knows: dense peak FLOP/s (for MFU) and memory (for `xlsr plan`).

Peaks are the vendors' dense bf16 tensor-core figures (fp16 for V100, which has no bf16): H100 SXM
and H200 989.4 TFLOP/s, A100 312, L40S 362, V100 125. Memory is the total the driver reports
(`nvidia-smi`, MiB), of which the CUDA context, NCCL and cuBLAS take a part outside PyTorch's
allocator (``CONTEXT_GIB``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    key: str  # what `xlsr plan --gpu` takes
    name: str
    memory_mib: int
    peak_tflops: float
    device_names: tuple[str, ...]  # substrings of torch.cuda.get_device_name that identify it

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def peak_flops(self) -> float:
        return self.peak_tflops * 1e12


# First match wins when a device name is looked up, so more specific names come first.
GPUS = (
    GpuSpec("h200", "NVIDIA H200 141GB", 143_771, 989.4, ("H200",)),
    GpuSpec("h100", "NVIDIA H100 SXM 80GB", 81_559, 989.4, ("H100",)),
    GpuSpec(
        "a100-80gb", "NVIDIA A100 80GB", 81_920, 312.0, ("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB")
    ),
    GpuSpec("a100-40gb", "NVIDIA A100 40GB", 40_960, 312.0, ("A100",)),
    GpuSpec("l40s", "NVIDIA L40S 48GB", 46_068, 362.0, ("L40S",)),
    GpuSpec("v100-32gb", "NVIDIA V100 32GB", 32_768, 125.0, ("V100-SXM2-32GB", "V100-PCIE-32GB", "V100S")),
    GpuSpec("v100-16gb", "NVIDIA V100 16GB", 16_384, 125.0, ("V100",)),
)
GPU_KEYS = tuple(gpu.key for gpu in GPUS)

# Device memory outside PyTorch's allocator on a training rank: CUDA context, NCCL buffers, cuBLAS
# workspaces (about 0.5-1 GiB each for context and NCCL on H100 with CUDA 12).
CONTEXT_GIB = 1.5


def gpu_spec(key: str) -> GpuSpec:
    """The catalogue entry for ``key`` (case-insensitive); ValueError lists the known keys."""
    for gpu in GPUS:
        if gpu.key == key.lower():
            return gpu
    raise ValueError(f"unknown GPU {key!r}: known are {', '.join(GPU_KEYS)}")


def gpu_of_device_name(name: str) -> GpuSpec | None:
    return next((gpu for gpu in GPUS if any(part in name for part in gpu.device_names)), None)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this device in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    import torch  # this module stays torch-free for the config's validation

    gpu = gpu_of_device_name(torch.cuda.get_device_name(device))
    return gpu.peak_flops if gpu else None
