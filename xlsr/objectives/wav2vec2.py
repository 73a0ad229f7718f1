"""wav2vec 2.0 / XLS-R: contrastive prediction of Gumbel-quantized latents among K negatives
(Baevski et al., arXiv 2006.11477 §3; fairseq ``Wav2Vec2Model`` and ``Wav2vecCriterion``).

The model is `xlsr.model.wav2vec2.Wav2Vec2Model` and the loss `xlsr.model.loss.pretraining_loss`
(both numerically equal to fairseq's); this module is what the engine sees of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xlsr.config import ModelConfig, TrainConfig, Wav2Vec2Config
from xlsr.model.encoder import encoder_forward_flops
from xlsr.model.loss import pretraining_loss
from xlsr.model.masking import sample_negatives
from xlsr.model.wav2vec2 import Wav2Vec2Model
from xlsr.objectives.base import BITS, Alarm, MetricSpec, Prepared, stuck_at_chance


class Wav2Vec2Objective:
    name = "wav2vec2"

    def __init__(self, cfg: TrainConfig):
        self.model_cfg, self.w2v2 = cfg.model, cfg.objective.wav2vec2
        w2v2 = self.w2v2
        self.spec = MetricSpec(
            sums={
                "loss_contrastive": ("bits", "loss_contrastive"),
                "loss_diversity": ("bits", "loss_diversity"),
                "loss_feature_penalty": ("bits", "loss_feature_penalty"),
                "correct": ("rate", "accuracy"),
                "sample_size": ("count", "sample_size"),
                "prob_perplexity": ("mean", "prob_perplexity"),
                "code_perplexity": ("mean", "code_perplexity"),
            },
            console=(
                ("loss_contrastive", ".3f", "contrast"),
                ("accuracy", ".3f", "accuracy"),
                ("code_perplexity", ".1f", "code_perplexity"),
                ("prob_perplexity", ".1f", "prob_perplexity"),
                ("temperature", ".3f", "temperature"),
            ),
            loss_key="loss_contrastive",
            chance_bits=math.log2(w2v2.num_negatives + 1),  # uniform over the positive and K negatives
            usage_key="code_perplexity",
            codebook_size=w2v2.latent_groups * w2v2.latent_vars,
            schedule_keys=("temperature",),
            best_key="valid_loss_contrastive",
        )

    def build_model(self, init_seed: int = 0) -> Wav2Vec2Model:
        return Wav2Vec2Model(self.model_cfg, self.w2v2, init_seed=init_seed)

    def set_num_updates(self, model: nn.Module, num_updates: int) -> None:
        model.set_num_updates(num_updates)

    def schedule_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"temperature": model.quantizer.curr_temp}

    def prepare(
        self, model: nn.Module, source: Tensor, padding_mask: Tensor | None, generator: torch.Generator
    ) -> Prepared:
        """Time masks (fairseq semantics) and then negatives, drawn on the device from ``generator``;
        the Gumbel noise of the forward pass comes next from the same generator."""
        frames = self.model_cfg.num_frames(source.shape[1])
        frame_padding = model.frame_padding_mask(padding_mask, frames)
        masks = model.draw_masks(source.shape[0], frames, frame_padding, generator, source.device)
        negatives = sample_negatives(masks, self.w2v2.num_negatives, generator)
        draws = {"mask_indices": masks, "negative_indices": negatives}
        return Prepared(source, padding_mask, masks.sum().float(), draws, generator)

    def loss(
        self, module: nn.Module, prepared: Prepared, layer_keep: list[bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        output = module(
            prepared.source,
            prepared.padding_mask,
            generator=prepared.generator,
            layer_keep=layer_keep,
            **prepared.draws,
        )
        loss, _, metrics = pretraining_loss(output, self.w2v2)
        return loss, metrics

    def features(self, module: nn.Module, source: Tensor) -> None:
        frames = self.model_cfg.num_frames(source.shape[1])
        no_masks = torch.zeros(source.shape[0], frames, dtype=torch.bool, device=source.device)
        negatives = torch.zeros(
            source.shape[0], frames, self.w2v2.num_negatives, dtype=torch.long, device=source.device
        )
        module(source, None, mask_indices=no_masks, negative_indices=negatives)

    def interval_metrics(self, sums: dict[str, float], passes: float, prefix: str = "") -> dict[str, float]:
        metrics = self.spec.reduce(sums, passes, prefix)
        if not prefix:  # the diversity term itself, 1 - prob_perplexity / codes (a collapse alarm reads it)
            weight = max(self.w2v2.diversity_weight, 1e-12)
            metrics["diversity"] = metrics["loss_diversity"] / BITS / weight
        return metrics

    def validation_columns(self, metrics: dict[str, float]) -> list[str]:
        return [
            f"contrast {metrics['valid_loss_contrastive']:.3f} bits (chance {self.spec.chance_bits:.3f})",
            f"accuracy {metrics['valid_accuracy']:.3f}",
            f"code_perplexity {metrics['valid_code_perplexity']:.1f}",
        ]

    def alarms(self, metrics: dict[str, float], past_warmup: bool) -> list[Alarm]:
        return collapse_alarms(metrics, self.spec, past_warmup)

    def flops_per_crop(self, crop_samples: int) -> float:
        return train_flops_per_crop(self.model_cfg, self.w2v2, crop_samples)

    def head_activation_bytes(self, crop_samples: int, compute_bytes: int) -> float:
        """The quantizer and contrastive loss run in fp32. Per frame: the unmasked features twice
        (C), the codebook logits, probabilities and one-hot choice (3 × G·V), the projected target,
        context and their norms (5 × final_dim), final_proj's input (D), the negatives' indices
        (K × int64), the cosine logits and their mask ((K + 1) × 5) and a row of the utterance's
        Gram matrix (T)."""
        frames = self.model_cfg.num_frames(crop_samples)
        conv_dim, dim = self.model_cfg.conv_feature_layers[-1][0], self.model_cfg.encoder_embed_dim
        w2v2, codes = self.w2v2, self.w2v2.latent_groups * self.w2v2.latent_vars
        per_frame = 4 * (2 * conv_dim + 3 * codes + 5 * w2v2.output_dim(dim) + dim + frames)
        per_frame += 8 * w2v2.num_negatives + 5 * (w2v2.num_negatives + 1)
        return frames * per_frame


def collapse_alarms(metrics: dict[str, float], spec: MetricSpec, past_warmup: bool) -> list[Alarm]:
    """Known failure signatures of wav2vec 2.0 pretraining (described in docs/training.md).

    - uniform logits: the contrastive loss sits at log2(K+1) bits, chance level for K negatives;
      normal right after the start, so it waits until ``past_warmup``;
    - codebook collapse: few codes in use yet near-perfect accuracy (the negatives equal the
      positive, so the task is trivial);
    - an unused codebook: the diversity term (1 - prob_perplexity / codes) near 1.
    """
    alarms = stuck_at_chance(metrics, spec, past_warmup)
    codes = spec.codebook_size
    if metrics.get("code_perplexity", codes) < 0.05 * codes and metrics.get("accuracy", 0.0) > 0.99:
        alarms.append(
            Alarm(
                "codebook",
                f"code perplexity {metrics['code_perplexity']:.1f} with accuracy {metrics['accuracy']:.3f}: "
                "codebook collapse (all negatives equal the positive)",
            )
        )
    if metrics.get("diversity", 0.0) > 0.95:
        message = f"diversity term {metrics['diversity']:.3f} near 1: the codebook is barely used"
        alarms.append(Alarm("codebook", message))
    return alarms


def train_flops_per_crop(
    cfg: ModelConfig, w2v2: Wav2Vec2Config, crop_samples: int, masked_fraction: float = 0.49
) -> float:
    """Training FLOPs for one utterance: the encoder, then the quantizer, projections and cosine logits."""
    encoder, frames = encoder_forward_flops(cfg, crop_samples)
    conv_dim, dim = cfg.conv_feature_layers[-1][0], cfg.encoder_embed_dim
    final, vq_dim = w2v2.output_dim(dim), w2v2.codevector_dim(dim)
    codes = w2v2.latent_groups * w2v2.latent_vars
    per_frame = (
        2 * conv_dim * codes
        + 2 * codes * vq_dim / w2v2.latent_groups  # quantizer
        + 2 * vq_dim * final
        + 2 * dim * final  # project_q, final_proj
        + masked_fraction * (w2v2.num_negatives + 1) * 3 * final  # cosine logits
    )
    return 3 * (encoder + frames * per_frame)
