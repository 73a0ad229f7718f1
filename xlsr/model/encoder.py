"""The speech encoder every objective shares: conv feature extractor → frontend (feature penalty,
LayerNorm, projection, masking) → Transformer encoder, numerically equal to fairseq's ``Wav2Vec2Model``
up to its quantizer.

Comments cite the wav2vec 2.0 paper (arXiv 2006.11477) by section and fairseq by file; docs/model.md
lists the sources. An objective (``xlsr.objectives``) subclasses `SpeechEncoder`, adds its targets and
head, and keeps the attribute names below, so checkpoints, Hugging Face export and the engine's
wrapping points (`SpeechEncoder.blocks`, ``feature_extractor``) are the same for every objective.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from xlsr.config import ModelConfig
from xlsr.seeding import derive_seed

# --------------------------------------------------------------------------------------------------
# Small building blocks


def init_generator(seed: int, unit: int) -> torch.Generator:
    """The CPU generator that initialises one unit (0 = everything but the layers, i + 1 = layer i)."""
    return torch.Generator().manual_seed(derive_seed(seed, "init", unit))


def default_init(module: nn.Linear | nn.Conv1d, generator: torch.Generator | None) -> None:
    """PyTorch's default Linear/Conv init (``reset_parameters``), drawn from ``generator``."""
    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
    if module.bias is not None:
        fan_in = module.weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(module.bias, -bound, bound, generator=generator)


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by ``scale`` (fairseq ``fairseq/modules/grad_multiply.py``)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def conv_output_length(length: Tensor, kernel: int, stride: int) -> Tensor:
    return torch.div(length - kernel, stride, rounding_mode="floor") + 1


def lengths_to_padding_mask(lengths: Tensor, num_frames: int) -> Tensor:
    return torch.arange(num_frames, device=lengths.device) >= lengths.unsqueeze(-1)


def fp32_layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    w, b = norm.weight.float(), norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, w, b, norm.eps).type_as(x)


def masked_group_norm(x: Tensor, norm: nn.GroupNorm, valid: Tensor | None) -> Tensor:
    """Fp32 GroupNorm(C, C): per-channel statistics over time, from valid frames only when padded.

    Restricting the statistics to valid frames makes a padded utterance normalise exactly as it does alone;
    fairseq includes the padding (it never pads in pretraining); the two agree whenever there is none.
    """
    w, b = norm.weight.float(), norm.bias.float()
    if valid is None:
        return F.group_norm(x.float(), norm.num_groups, w, b, norm.eps).type_as(x)
    xf, m = x.float(), valid.unsqueeze(1).float()  # (B, C, T), (B, 1, T)
    count = m.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (xf * m).sum(-1, keepdim=True) / count
    var = ((xf - mean).square() * m).sum(-1, keepdim=True) / count
    y = (xf - mean) * torch.rsqrt(var + norm.eps)
    return (y * w[:, None] + b[:, None]).type_as(x)


# --------------------------------------------------------------------------------------------------
# Convolutional feature extractor (fairseq ``ConvFeatureExtractionModel``; arXiv 2006.11477 §2, §4.2)


class ConvBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        self.norm: nn.Module | None = None
        if norm == "group":
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_dim)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        default_init(self.conv, generator)  # the bias keeps the PyTorch default, as in fairseq
        nn.init.kaiming_normal_(self.conv.weight, generator=generator)
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        x = self.conv(x)
        if isinstance(self.norm, nn.GroupNorm):
            x = masked_group_norm(x, self.norm, valid)
        elif isinstance(self.norm, nn.LayerNorm):
            x = fp32_layer_norm(x.transpose(1, 2), self.norm).transpose(1, 2)
        return F.gelu(x)


class ConvFeatureExtractor(nn.Module):
    """7 conv blocks, waveform (B, S) → features (B, C, T). Valid lengths follow floor((L − k)/s) + 1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks, in_dim = [], 1
        for i, (dim, kernel, stride) in enumerate(cfg.conv_feature_layers):
            norm = "layer" if cfg.extractor_mode == "layer_norm" else ("group" if i == 0 else None)
            blocks.append(ConvBlock(in_dim, dim, kernel, stride, cfg.conv_bias, norm))
            in_dim = dim
        self.conv_layers = nn.ModuleList(blocks)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in self.conv_layers:
            lengths = conv_output_length(lengths, block.kernel, block.stride)
        return lengths

    def forward(self, source: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = source.unsqueeze(1)
        for block in self.conv_layers:
            valid = None
            if lengths is not None:
                lengths = conv_output_length(lengths, block.kernel, block.stride)
                num_frames = (x.shape[-1] - block.kernel) // block.stride + 1
                valid = ~lengths_to_padding_mask(lengths, num_frames)
            x = block(x, valid)
        return x


# --------------------------------------------------------------------------------------------------
# Transformer encoder (fairseq ``TransformerEncoder``, ``TransformerSentenceEncoderLayer``)


class PositionalConv(nn.Module):
    """Grouped conv over time, weight norm (dim=2), SamePad, GELU; the encoder adds it as a residual."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        self.conv = weight_norm(conv, name="weight", dim=2)  # g, v are (re)set by init_weights
        self.remove_last = kernel % 2 == 0  # SamePad

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        # Initialise the effective weight, then derive g and v from it, as fairseq does (init *before* weight
        # norm; HF's ``_init_weights`` runs after weight norm and loses it: docs/model.md, difference 10).
        params = self.conv.parametrizations.weight
        g, v = params.original0, params.original1
        kernel, dim = self.conv.kernel_size[0], self.conv.in_channels
        w = torch.empty_like(v).normal_(0.0, math.sqrt(4.0 / (kernel * dim)), generator=generator)
        v.copy_(w)
        g.copy_(torch.linalg.vector_norm(w, dim=(0, 1), keepdim=True))
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D) → (B, T, D)
        y = self.conv(x.transpose(1, 2))
        if self.remove_last:
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        bsz, num_frames, dim = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(bsz, num_frames, self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        return self.out_proj(y.transpose(1, 2).reshape(bsz, num_frames, dim))


class TransformerLayer(nn.Module):
    """fairseq TransformerSentenceEncoderLayer: post-LN, or pre-LN when ``layer_norm_first``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.self_attn = SelfAttention(dim, cfg.encoder_attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        # fairseq ``init_bert_params`` (fairseq/modules/transformer_sentence_encoder.py): Linear N(0, 0.02),
        # zero bias; LayerNorms 1 / 0.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02, generator=generator)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def ffn(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(F.gelu(self.fc1(x)))))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), attn_mask))
            return x + self.ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, attn_mask)))
        return self.final_layer_norm(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.encoder_layerdrop
        self.pos_conv = PositionalConv(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.encoder_layers))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """The encoder's own parameters; each layer is initialised by ``layer.init_weights``."""
        self.layer_norm.reset_parameters()
        self.pos_conv.init_weights(generator)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, layer_keep: list[bool] | None = None
    ) -> Tensor:
        attn_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            attn_mask = ~padding_mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        if layer_keep is None and self.training and self.layerdrop > 0:
            # CPU default generator: no device sync. Under FSDP the engine passes layer_keep so ranks agree.
            layer_keep = (torch.rand(len(self.layers)) >= self.layerdrop).tolist()
        for i, layer in enumerate(self.layers):
            if layer_keep is None or layer_keep[i]:
                x = layer(x, attn_mask)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x


# --------------------------------------------------------------------------------------------------
# The shared encoder


class SpeechEncoder(nn.Module):
    """Waveform → (masked) Transformer output. Subclasses add a pretraining head and targets.

    The engine reads three things from it, and nothing objective-specific: ``blocks`` (the repeated
    layers it wraps for FSDP, activation checkpointing and compile), ``feature_extractor`` (wrapped
    too for ``layers+conv`` checkpointing), and ``block_template`` / ``root_template`` (initialised
    copies it shards from, so a model built on the meta device gets the same values as one built
    whole).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        conv_dim = cfg.conv_feature_layers[-1][0]
        dim = cfg.encoder_embed_dim
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = nn.Linear(conv_dim, dim) if conv_dim != dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(dim))
        self.encoder = TransformerEncoder(cfg)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layers

    def block_template(self, index: int, seed: int) -> nn.Module:
        """Layer ``index`` as ``init_weights(seed)`` initialises it, built alone on the CPU."""
        layer = TransformerLayer(self.cfg)
        layer.init_weights(init_generator(seed, index + 1))
        return layer

    def root_template(self, seed: int) -> nn.Module:
        """Everything but the layers, as ``init_weights(seed)`` initialises it, on the CPU."""
        raise NotImplementedError

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """(Re-)initialise every parameter by fairseq's rules, from ``seed`` alone.

        Each transformer layer draws from its own generator (``init_generator(seed, i + 1)``) and
        everything else from ``init_generator(seed, 0)``, so a layer can be initialised on its own
        (the engine does so when it builds a sharded model on the meta device) with the same values.
        """
        self.init_root_weights(init_generator(seed, 0))
        for index, layer in enumerate(self.encoder.layers):
            layer.init_weights(init_generator(seed, index + 1))

    def init_root_weights(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def init_encoder_weights(self, generator: torch.Generator, head: Iterable[nn.Linear | None] = ()) -> None:
        """The encoder's parameters outside its layers, in fairseq's order; the head's Linear layers
        get PyTorch's default init right after the projection (where fairseq draws them)."""
        for block in self.feature_extractor.conv_layers:
            block.init_weights(generator)
        self.layer_norm.reset_parameters()
        for linear in (self.post_extract_proj, *head):
            if linear is not None:
                default_init(linear, generator)  # PyTorch default init, as fairseq
        nn.init.uniform_(self.mask_emb, generator=generator)
        self.encoder.init_weights(generator)

    def frame_lengths(self, num_samples: Tensor) -> Tensor:
        return self.feature_extractor.output_lengths(num_samples)

    def frame_padding_mask(self, padding_mask: Tensor | None, num_frames: int) -> Tensor | None:
        if padding_mask is None:
            return None
        lengths = self.frame_lengths(padding_mask.shape[1] - padding_mask.long().sum(-1))
        return lengths_to_padding_mask(lengths, num_frames)

    def extract_features(self, source: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Raw conv features (B, C, T), with GradMultiply / no_grad per feature_grad_mult, as fairseq."""
        lengths = None if padding_mask is None else padding_mask.shape[1] - padding_mask.long().sum(-1)
        mult = self.cfg.feature_grad_mult
        if mult == 0:
            with torch.no_grad():
                return self.feature_extractor(source, lengths)
        features = self.feature_extractor(source, lengths)
        return GradMultiply.apply(features, mult) if mult != 1.0 else features

    def frontend(
        self, source: Tensor, padding_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """fairseq ``Wav2Vec2Model.forward`` up to masking.

        Returns x (B, T, D), the LayerNormed unmasked features (B, T, C), features_pen and the frame
        padding mask.
        """
        features = self.extract_features(source, padding_mask)
        frame_padding = self.frame_padding_mask(padding_mask, features.shape[-1])
        squares = features.float().square()
        if frame_padding is None:
            features_pen = squares.mean()
        else:
            valid = (~frame_padding).unsqueeze(1).float()
            features_pen = (squares * valid).sum() / (valid.sum() * features.shape[1]).clamp_min(1.0)
        features = self.layer_norm(features.transpose(1, 2))
        x = self.post_extract_proj(features) if self.post_extract_proj is not None else features
        return self.dropout_input(x), features, features_pen, frame_padding

    def apply_mask(self, x: Tensor, mask_indices: Tensor | None) -> Tensor:
        if mask_indices is None:
            return x
        return torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)

    def encode(
        self, source: Tensor, padding_mask: Tensor | None = None, mask_indices: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Transformer output (B, T, D) and the frame padding mask, for feature extraction."""
        x, _, _, frame_padding = self.frontend(source, padding_mask)
        x = self.encoder(self.apply_mask(x, mask_indices), frame_padding)
        return x, frame_padding


def encoder_forward_flops(cfg: ModelConfig, crop_samples: int) -> tuple[float, int]:
    """(forward FLOPs of the encoder for one utterance of ``crop_samples`` samples, its frames).

    FLOPs = 2 × MACs of the conv feature encoder, the feature projection, the positional conv and
    every transformer layer (dense + attention); docs/performance.md explains the count.
    """
    lengths = cfg.conv_output_lengths(crop_samples)
    frames = lengths[-1]
    conv, in_channels = 0.0, 1
    for (channels, kernel, _), length in zip(cfg.conv_feature_layers, lengths, strict=True):
        conv += 2 * in_channels * kernel * channels * length
        in_channels = channels
    dim, ffn = cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim
    per_frame = (
        2 * in_channels * dim  # feature projection
        + 2 * cfg.conv_pos * dim * dim / cfg.conv_pos_groups  # positional conv
        + cfg.encoder_layers * (2 * (4 * dim * dim + 2 * dim * ffn) + 4 * frames * dim)  # layers
    )
    return conv + frames * per_frame, frames
