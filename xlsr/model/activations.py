"""What autograd keeps of the encoder's forward pass for the backward pass, in bytes per utterance.

The count follows this implementation tensor by tensor (`xlsr.model.encoder`); `xlsr plan` builds its
memory model on it and tests/test_plan.py checks it against measured peaks. ``compute_bytes`` is the
size of an activation in the compute dtype (2 under bf16/fp16 autocast, 4 in fp32); LayerNorm and
GroupNorm run in fp32 and keep an fp32 copy of their input.

- Conv block (layer-norm extractor): the fp32 copy the LayerNorm keeps (4), its output in the compute
  dtype that GELU keeps (b), and GELU's output that the next conv keeps (b). Group-norm extractor: GELU
  input and output (2b), plus the GroupNorm's fp32 input in the first block.
- Conv backward also needs a column buffer of C_in × kernel × L_out for one utterance at a time (the
  CPU's im2col; cuDNN's workspace on a GPU is of that order).
- Frontend per frame: the feature LayerNorm's output (fp32, C), the positional conv's input and GELU
  input (2D), the encoder LayerNorm's input (D), plus D for post-LN's normalised stream and D for
  input dropout; and once per micro-batch the positional conv's weight-normed weight.
- Transformer layer per frame (Korthikanti et al., arXiv 2205.05198, with FlashAttention's
  recomputed scores): fp32 LayerNorm inputs (2D × 4), the normalised inputs to QKV and fc1, Q, K, V,
  the attention output (6D × b) and fc1's output and GELU's (2F × b); post-LN keeps the normalised
  residual too (2D × b); the residual dropouts and activation dropout keep 1-byte masks. PyTorch's
  CPU kernels fall back to math attention when attention dropout is on: then the T × T scores, mask
  and dropped scores stay (3 × H × T × 4 bytes per frame).
"""

from __future__ import annotations

from dataclasses import dataclass

from xlsr.config import ModelConfig

FP32 = 4


@dataclass(frozen=True)
class EncoderActivations:
    """Bytes kept for one utterance (``conv``, ``frontend``, ``layer`` each) and per micro-batch."""

    conv: float  # the whole conv feature encoder, its input included
    conv_input: float  # what the conv encoder keeps when it is activation-checkpointed
    conv_block_output: float  # the largest conv block's output: its gradient's size in backward
    conv_workspace: float  # the largest block's column buffer in backward (per micro-batch)
    frontend: float
    layer: float  # one transformer layer
    layer_input: float  # what an activation-checkpointed layer keeps: its input
    per_micro_batch: float  # the positional conv's weight-normed weight

    def total(self, layers: int, checkpointed_layers: int = 0, checkpoint_conv: bool = False) -> float:
        """Bytes kept for one utterance when ``checkpointed_layers`` of ``layers`` (and the conv
        encoder, with ``checkpoint_conv``) keep only their inputs."""
        conv = self.conv_input if checkpoint_conv else self.conv
        full = layers - checkpointed_layers
        return conv + self.frontend + full * self.layer + checkpointed_layers * self.layer_input


def encoder_activations(
    cfg: ModelConfig, crop_samples: int, compute_bytes: int, device_type: str = "cuda"
) -> EncoderActivations:
    """Activation bytes of the encoder for one utterance of ``crop_samples`` samples (module docstring)."""
    b = compute_bytes
    lengths = cfg.conv_output_lengths(crop_samples)
    conv, largest, workspace, in_channels = crop_samples * b, 0.0, 0.0, 1
    for index, ((channels, kernel, _), length) in enumerate(
        zip(cfg.conv_feature_layers, lengths, strict=True)
    ):
        elements = channels * length
        workspace = max(workspace, in_channels * kernel * length * b)
        in_channels = channels
        if cfg.extractor_mode == "layer_norm":
            conv += elements * (FP32 + 2 * b)
        else:
            conv += elements * (2 * b + (FP32 if index == 0 else 0))
        largest = max(largest, elements * b)
    frames, conv_dim = lengths[-1], cfg.conv_feature_layers[-1][0]
    dim = cfg.encoder_embed_dim
    frontend_dims = 3 + (not cfg.layer_norm_first) + (cfg.dropout_input > 0)
    # The feature LayerNorm's output, and under 16-bit autocast the feature penalty's fp32 copy.
    feature_bytes = conv_dim * FP32 * (1 + (b < FP32))
    return EncoderActivations(
        conv=conv,
        conv_input=crop_samples * b,
        conv_block_output=largest,
        conv_workspace=workspace,
        frontend=frames * (feature_bytes + frontend_dims * dim * b),
        layer=frames * layer_bytes_per_frame(cfg, frames, b, device_type),
        layer_input=frames * dim * b,
        per_micro_batch=dim * (dim // cfg.conv_pos_groups) * cfg.conv_pos * FP32,
    )


def layer_bytes_per_frame(cfg: ModelConfig, frames: int, compute_bytes: int, device_type: str) -> float:
    """One transformer layer's kept bytes per frame of an utterance of ``frames`` frames."""
    dim, ffn, b = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, compute_bytes
    kept = 2 * dim * FP32 + (6 * dim + 2 * ffn) * b
    if not cfg.layer_norm_first:
        kept += 2 * dim * b
    # 1-byte masks: dropout after attention and after the FFN, and activation dropout inside it
    # (attention dropout keeps none: FlashAttention regenerates it; the CPU's math kernel is below).
    kept += 2 * dim * (cfg.dropout > 0) + ffn * (cfg.activation_dropout > 0)
    if device_type == "cpu" and cfg.attention_dropout > 0:
        kept += 3 * cfg.encoder_attention_heads * frames * FP32
    return kept
