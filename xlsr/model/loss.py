"""fairseq ``Wav2vecCriterion`` (``fairseq/criterions/wav2vec_criterion.py``) on the fixed (B, T) grid."""

from __future__ import annotations

import torch
from torch import Tensor

from xlsr.config import Wav2Vec2Config
from xlsr.model.wav2vec2 import PretrainingOutput


def pretraining_loss(
    out: PretrainingOutput, loss_cfg: Wav2Vec2Config
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(loss summed over masked frames, N = number of masked frames, detached metrics).

    L = Σ_masked CE(logits, 0) + w_d·(GV − prob_ppl)/GV·N + w_f·features_pen·N. The caller divides the
    gradient by the (all-reduced) N; metric sums are divided by N (and ln 2 for bits) when logged.
    """
    logits = out.logits.float()
    weights = out.mask_indices.float()
    sample_size = weights.sum()
    # Cross-entropy with target 0, written out so that unmasked rows are weighted away without indexing.
    ce = torch.logsumexp(logits, dim=-1) - logits[..., 0]
    contrastive = (ce * weights).sum()

    diversity = (out.num_vars - out.prob_perplexity) / out.num_vars
    diversity_loss = loss_cfg.diversity_weight * diversity * sample_size
    penalty_loss = loss_cfg.feature_penalty_weight * out.features_pen * sample_size
    loss = contrastive
    if loss_cfg.diversity_weight != 0:
        loss = loss + diversity_loss
    if loss_cfg.feature_penalty_weight != 0:
        loss = loss + penalty_loss

    with torch.no_grad():
        # fairseq accuracy: argmax at the positive, excluding rows whose logits are all equal (argmin also 0).
        is_max = logits.argmax(-1) == 0
        is_min = logits.argmin(-1) == 0
        correct = ((is_max & ~is_min).float() * weights).sum()
    metrics = {
        "loss_contrastive": contrastive.detach(),
        "loss_diversity": diversity_loss.detach(),
        "loss_feature_penalty": penalty_loss.detach(),
        "correct": correct,
        "prob_perplexity": out.prob_perplexity.detach(),
        "code_perplexity": out.code_perplexity.detach(),
        "sample_size": sample_size.detach(),
    }
    return loss, sample_size, metrics
