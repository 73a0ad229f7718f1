"""Peak FLOP/s of known accelerators, for MFU (docs/performance.md explains the count).

The model FLOPs themselves are the objective's (`Objective.flops_per_crop`): training = 3 × forward
(backward ≈ 2 × forward; recomputation from activation checkpointing is not counted, as in the
PaLM/Megatron convention).
"""

from __future__ import annotations

import torch

# bf16 dense peak TFLOP/s by device-name substring (first match wins).
PEAK_TFLOPS = (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("V100", 125.0), ("L40S", 362.0))


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this device in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)
