"""wav2vec 2.0 / XLS-R pretraining model, numerically equivalent to fairseq's ``Wav2Vec2Model``.

Read top to bottom after `xlsr.model.encoder` (conv feature extractor → frontend → Transformer):
Gumbel quantizer → contrastive logits → the model. Comments cite the wav2vec 2.0 paper
(arXiv 2006.11477) by section and fairseq by file; docs/model.md lists the sources.

Everything runs on the fixed (B, T) frame grid with masks carried alongside (no boolean indexing, no host
syncs): targets and context vectors are computed for every frame and the loss weights the masked ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsr.config import ModelConfig, Wav2Vec2Config
from xlsr.model.encoder import SpeechEncoder
from xlsr.model.masking import compute_mask_indices, sample_negatives


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


class Wav2Vec2Model(SpeechEncoder):
    def __init__(self, cfg: ModelConfig, w2v2: Wav2Vec2Config | None = None, init_seed: int = 0):
        """The encoder ``cfg`` with wav2vec 2.0's quantizer and head ``w2v2`` (default: BASE's)."""
        super().__init__(cfg)
        w2v2 = self.w2v2 = w2v2 or Wav2Vec2Config()
        conv_dim = cfg.conv_feature_layers[-1][0]
        final_dim, vq_dim = w2v2.output_dim(cfg.encoder_embed_dim), w2v2.codevector_dim(cfg.encoder_embed_dim)
        self.dropout_features = nn.Dropout(w2v2.dropout_features)
        self.quantizer = GumbelVectorQuantizer(
            conv_dim, w2v2.latent_vars, w2v2.latent_groups, vq_dim, w2v2.latent_temp
        )
        self.project_q = nn.Linear(vq_dim, final_dim)
        self.final_proj = nn.Linear(cfg.encoder_embed_dim, final_dim)
        self.init_weights(init_seed)

    def root_template(self, seed: int) -> nn.Module:
        return Wav2Vec2Model(dataclasses.replace(self.cfg, encoder_layers=0), self.w2v2, init_seed=seed)

    @torch.no_grad()
    def init_root_weights(self, generator: torch.Generator) -> None:
        """Every parameter outside the transformer layers."""
        self.init_encoder_weights(generator, head=(self.project_q, self.final_proj))
        self.quantizer.init_weights(generator)

    def set_num_updates(self, num_updates: int) -> None:
        self.quantizer.set_num_updates(num_updates)

    def draw_masks(
        self,
        bsz: int,
        num_frames: int,
        frame_padding: Tensor | None,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor:
        """Time masks with the config's settings (fairseq's ``compute_mask_indices``), (B, T) bool."""
        cfg = self.w2v2
        return compute_mask_indices(
            (bsz, num_frames),
            frame_padding,
            cfg.mask_prob,
            cfg.mask_length,
            cfg.mask_min_masks,
            cfg.require_same_masks,
            generator=generator,
            device=device,
        )

    def forward(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        mask_indices: Tensor | None = None,
        negative_indices: Tensor | None = None,
        generator: torch.Generator | None = None,
        layer_keep: list[bool] | None = None,
    ) -> PretrainingOutput:
        cfg = self.w2v2
        x, unmasked, features_pen, frame_padding = self.frontend(source, padding_mask)
        # The quantizer sees the LayerNormed, unmasked, unprojected features (fairseq's unmasked_features).
        unmasked = self.dropout_features(unmasked)
        bsz, num_frames, _ = x.shape
        if mask_indices is None:
            mask_indices = self.draw_masks(bsz, num_frames, frame_padding, generator, x.device)
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
