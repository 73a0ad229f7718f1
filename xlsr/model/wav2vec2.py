"""wav2vec 2.0 / XLS-R pretraining model, numerically equivalent to fairseq's ``Wav2Vec2Model``.

Read top to bottom: conv feature extractor → frontend (feature penalty, LayerNorm, projection, masking) →
Transformer encoder (positional conv + layers) → Gumbel quantizer → contrastive logits. Comments cite the
wav2vec 2.0 paper (arXiv 2006.11477) by section and fairseq by file; docs/model.md lists the sources.

Everything runs on the fixed (B, T) frame grid with masks carried alongside (no boolean indexing, no host
syncs): targets and context vectors are computed for every frame and the loss weights the masked ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from xlsr.config import ModelConfig
from xlsr.model.masking import compute_mask_indices, sample_negatives
from xlsr.seeding import derive_seed


@dataclass
class PretrainingOutput:
    # (B, T, K+1) fp32 cosine / logit_temp, positive at index 0; rows at unmasked frames are don't-care.
    logits: Tensor
    mask_indices: Tensor  # (B, T) bool, True = masked (the loss rows)
    negative_indices: Tensor  # (B, T, K) long time indices into the same row
    frame_padding_mask: Tensor | None  # (B, T) bool, True = padded frame
    features_pen: Tensor  # () fp32 mean square of the raw conv output over valid frames
    prob_perplexity: Tensor  # () noise-free softmax perplexity over masked frames (diversity loss)
    code_perplexity: Tensor  # () hard-code perplexity over masked frames
    num_vars: int  # G·V, the diversity-loss normaliser


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
# Gumbel vector quantizer (fairseq ``fairseq/modules/gumbel_vector_quantizer.py``; arXiv 2006.11477 §2)


def one_hot(index: Tensor, like: Tensor) -> Tensor:
    # scatter instead of F.one_hot, which validates the indices with a host sync on CPU.
    return torch.zeros_like(like).scatter_(-1, index.unsqueeze(-1), 1.0)


def perplexity(probs: Tensor, weights: Tensor) -> Tensor:
    """Σ_g exp(entropy of the weighted mean of ``probs`` (N, G, V)); fairseq's log(p + 1e-7)."""
    avg = (probs * weights[:, None, None]).sum(0) / weights.sum().clamp_min(1.0)
    return torch.exp(-(avg * torch.log(avg + 1e-7)).sum(-1)).sum()


class GumbelVectorQuantizer(nn.Module):
    def __init__(
        self, in_dim: int, num_vars: int, groups: int, vq_dim: int, temp: tuple[float, float, float]
    ):
        super().__init__()
        if vq_dim % groups:
            raise ValueError(f"vq_dim {vq_dim} must be divisible by latent_groups {groups}")
        self.num_vars, self.groups = num_vars, groups
        self.max_temp, self.min_temp, self.temp_decay = temp
        self.curr_temp = self.max_temp
        self.vars = nn.Parameter(torch.empty(1, groups * num_vars, vq_dim // groups))
        self.weight_proj = nn.Linear(in_dim, groups * num_vars)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        nn.init.uniform_(self.vars, generator=generator)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0, generator=generator)
        nn.init.zeros_(self.weight_proj.bias)

    def set_num_updates(self, num_updates: int) -> None:
        self.curr_temp = max(self.max_temp * self.temp_decay**num_updates, self.min_temp)

    def forward(
        self, x: Tensor, frame_weights: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (B, T, C) → quantized (B, T, vq_dim), codes (B, T, G), prob_perplexity, code_perplexity.

        Perplexities average over frames weighted by ``frame_weights`` (B, T) (the masked frames, as fairseq
        quantizes only those).
        """
        bsz, num_frames, _ = x.shape
        logits = self.weight_proj(x).view(bsz * num_frames, self.groups, self.num_vars)
        weights = frame_weights.reshape(-1).float()
        with torch.no_grad():
            code_ppl = perplexity(one_hot(logits.argmax(-1), logits.float()), weights)
        prob_ppl = perplexity(logits.float().softmax(-1), weights)

        if self.training:
            # Hard straight-through Gumbel-softmax in fp32 (same draw as F.gumbel_softmax without generator).
            logits32 = logits.float()
            gumbels = -torch.empty_like(logits32).exponential_(generator=generator).log()
            soft = ((logits32 + gumbels) / self.curr_temp).softmax(-1)
            codes = soft.argmax(-1)
            onehot = (one_hot(codes, soft) - soft.detach() + soft).type_as(logits)
        else:
            codes = logits.argmax(-1)
            onehot = one_hot(codes, logits)
        codebook = self.vars.view(self.groups, self.num_vars, -1)
        quantized = torch.einsum("ngv,gvd->ngd", onehot, codebook.type_as(onehot))
        return (
            quantized.reshape(bsz, num_frames, -1),
            codes.view(bsz, num_frames, self.groups),
            prob_ppl,
            code_ppl,
        )


# --------------------------------------------------------------------------------------------------
# Contrastive logits (fairseq ``Wav2Vec2Model.compute_preds``; arXiv 2006.11477 §3.2)


def contrastive_logits(
    context: Tensor, targets: Tensor, codes: Tensor, negative_indices: Tensor, logit_temp: float
) -> Tensor:
    """Cosine(c_t, [y_t, y_neg...]) / κ in fp32 as (B, T, K+1), positive first.

    One Gram matrix per row (B, T, T) then a gather, instead of materialising (K, B, T, F) negatives. A
    negative whose codes equal the positive's in every group is set to −inf (fairseq compares the projected
    vectors exactly, which is the same thing).
    """
    with torch.autocast(device_type=context.device.type, enabled=False):
        c = F.normalize(context.float(), dim=-1, eps=1e-8)
        y = F.normalize(targets.float(), dim=-1, eps=1e-8)
        gram = torch.bmm(c, y.transpose(1, 2))  # (B, T, T): cos(c_t, y_s)
        positive = gram.diagonal(dim1=1, dim2=2).unsqueeze(-1)
        negative = gram.gather(2, negative_indices)
        logits = torch.cat([positive, negative], dim=-1) / logit_temp
    bsz, num_frames, k = negative_indices.shape
    neg_codes = codes.gather(1, negative_indices.reshape(bsz, -1, 1).expand(-1, -1, codes.shape[-1]))
    neg_is_pos = (neg_codes.view(bsz, num_frames, k, -1) == codes.unsqueeze(2)).all(-1)
    neg_is_pos = F.pad(neg_is_pos, (1, 0), value=False)
    return logits.masked_fill(neg_is_pos, float("-inf"))


# --------------------------------------------------------------------------------------------------
# The model


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: ModelConfig, init_seed: int = 0):
        super().__init__()
        self.cfg = cfg
        conv_dim = cfg.conv_feature_layers[-1][0]
        dim = cfg.encoder_embed_dim
        final_dim, vq_dim = cfg.output_dim, cfg.codevector_dim
        self.feature_extractor = ConvFeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = nn.Linear(conv_dim, dim) if conv_dim != dim else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(dim))
        self.encoder = TransformerEncoder(cfg)
        self.quantizer = GumbelVectorQuantizer(
            conv_dim, cfg.latent_vars, cfg.latent_groups, vq_dim, cfg.latent_temp
        )
        self.project_q = nn.Linear(vq_dim, final_dim)
        self.final_proj = nn.Linear(dim, final_dim)
        self.init_weights(init_seed)

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

    @torch.no_grad()
    def init_root_weights(self, generator: torch.Generator) -> None:
        """Every parameter outside the transformer layers."""
        for block in self.feature_extractor.conv_layers:
            block.init_weights(generator)
        self.layer_norm.reset_parameters()
        for linear in (self.post_extract_proj, self.project_q, self.final_proj):
            if linear is not None:
                default_init(linear, generator)  # PyTorch default init, as fairseq
        nn.init.uniform_(self.mask_emb, generator=generator)
        self.encoder.init_weights(generator)
        self.quantizer.init_weights(generator)

    def set_num_updates(self, num_updates: int) -> None:
        self.quantizer.set_num_updates(num_updates)

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

        Returns x (B, T, D), unmasked features (B, T, C), features_pen and the frame padding mask.
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
        x = self.dropout_input(x)
        # The quantizer sees the LayerNormed, unmasked, unprojected features (fairseq's unmasked_features).
        return x, self.dropout_features(features), features_pen, frame_padding

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

    def forward(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        mask_indices: Tensor | None = None,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
        layer_keep: list[bool] | None = None,
    ) -> PretrainingOutput:
        cfg = self.cfg
        x, unmasked, features_pen, frame_padding = self.frontend(source, padding_mask)
        bsz, num_frames, _ = x.shape
        if mask_indices is None:
            mask_indices = compute_mask_indices(
                (bsz, num_frames),
                frame_padding,
                cfg.mask_prob,
                cfg.mask_length,
                cfg.mask_min_masks,
                cfg.require_same_masks,
                generator=generator,
                device=x.device,
            )
        if negative_indices is None:
            negative_indices = sample_negatives(mask_indices, cfg.num_negatives, generator)

        x = self.encoder(self.apply_mask(x, mask_indices), frame_padding, layer_keep)
        quantized, codes, prob_ppl, code_ppl = self.quantizer(unmasked, mask_indices, generator)
        targets = self.project_q(quantized)
        context = self.final_proj(x)
        logits = contrastive_logits(context, targets, codes, negative_indices, cfg.logit_temp)
        return PretrainingOutput(
            logits=logits,
            mask_indices=mask_indices,
            negative_indices=negative_indices,
            frame_padding_mask=frame_padding,
            features_pen=features_pen,
            prob_perplexity=prob_ppl,
            code_perplexity=code_ppl,
            num_vars=cfg.latent_vars * cfg.latent_groups,
        )
