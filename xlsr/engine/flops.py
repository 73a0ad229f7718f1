"""Analytic training FLOPs per second of audio, and MFU (docs/performance.md explains the count).

FLOPs = 2 × MACs; training = 3 × forward (backward ≈ 2 × forward; recomputation from activation
checkpointing is not counted, as in the PaLM/Megatron convention). Counted: the conv feature encoder,
the feature projection, the positional conv, every transformer layer (dense + attention), and the
quantizer/projection/contrastive head. Layer drop is ignored (benchmark with it off).
"""

from __future__ import annotations

import torch

from xlsr.config import ModelConfig

# bf16 dense peak TFLOP/s by device-name substring (first match wins).
PEAK_TFLOPS = (("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("V100", 125.0), ("L40S", 362.0))


def train_flops_per_crop(cfg: ModelConfig, crop_samples: int, masked_fraction: float = 0.49) -> float:
    """Training FLOPs for one utterance of ``crop_samples`` samples."""
    lengths = cfg.conv_output_lengths(crop_samples)
    frames = lengths[-1]
    conv, in_channels = 0.0, 1
    for (channels, kernel, _), length in zip(cfg.conv_feature_layers, lengths, strict=True):
        conv += 2 * in_channels * kernel * channels * length
        in_channels = channels
    dim, ffn = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    final, vq_dim = cfg.output_dim, cfg.codevector_dim
    codes = cfg.latent_groups * cfg.latent_vars
    per_frame = (
        2 * in_channels * dim  # feature projection
        + 2 * cfg.conv_pos * dim * dim / cfg.conv_pos_groups  # positional conv
        + cfg.encoder_layers * (2 * (4 * dim * dim + 2 * dim * ffn) + 4 * frames * dim)  # layers
        + 2 * in_channels * codes
        + 2 * codes * vq_dim / cfg.latent_groups  # quantizer
        + 2 * vq_dim * final
        + 2 * dim * final  # project_q, final_proj
        + masked_fraction * (cfg.num_negatives + 1) * 3 * final  # cosine logits
    )
    return 3 * (conv + frames * per_frame)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of this device in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS if key in name), None)
