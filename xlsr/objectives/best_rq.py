"""BEST-RQ: masked prediction of random-projection codes (Chiu et al., arXiv 2202.01855).

Targets come from the audio itself through nothing trained: log-mel frames (25 ms window, 10 ms
hop), normalised per utterance and mel bin, stacked to the encoder's frame rate (2 frames for the
20 ms wav2vec 2.0 encoder), projected by a frozen Xavier-initialised matrix and matched to the
nearest entry (cosine) of each frozen, l2-normalised N(0, 1) codebook. The encoder sees the
waveform with masked frames replaced by the learned mask embedding (as wav2vec 2.0 and HuBERT do;
the paper adds N(0, 0.1) noise to masked log-mel inputs of a Conformer) and a linear head per
codebook predicts each masked frame's code with cross-entropy. docs/model.md ("BEST-RQ") cites
the sources and lists where this differs from them.

The projection and codebooks are buffers: saved and restored with the model, never trained.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from xlsr.config import MEL_HOP_SAMPLES, SAMPLE_RATE, BestRQConfig, ModelConfig, TrainConfig
from xlsr.model.encoder import SpeechEncoder, encoder_forward_flops, lengths_to_padding_mask
from xlsr.model.masking import compute_mask_indices
from xlsr.objectives.base import Alarm, MetricSpec, Prepared, stuck_at_chance

MEL_WINDOW_SAMPLES = 400  # 25 ms


@functools.lru_cache(maxsize=8)
def _mel_filters(num_mel_bins: int, device: torch.device) -> Tensor:
    """(n_fft // 2 + 1, num_mel_bins) HTK-scale triangular filters over 0-8 kHz."""
    filters = torchaudio.functional.melscale_fbanks(
        MEL_WINDOW_SAMPLES // 2 + 1, 0.0, SAMPLE_RATE / 2, num_mel_bins, SAMPLE_RATE
    )
    return filters.to(device)


def log_mel(source: Tensor, num_mel_bins: int) -> Tensor:
    """(B, L) audio → (B, F, num_mel_bins) log-mel frames, frame j over samples [160 j, 160 j + 400)."""
    frames = source.float().unfold(-1, MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES)
    window = torch.hann_window(MEL_WINDOW_SAMPLES, device=source.device)
    power = torch.fft.rfft(frames * window, n=MEL_WINDOW_SAMPLES).abs().square()
    return torch.log(power @ _mel_filters(num_mel_bins, source.device) + 1e-6)


def normalise_per_utterance(x: Tensor, valid: Tensor | None) -> Tensor:
    """Zero mean, unit variance per utterance and channel over its valid frames ((B, F, C), (B, F))."""
    weights = torch.ones_like(x[..., :1]) if valid is None else valid.unsqueeze(-1).float()
    count = weights.sum(1, keepdim=True).clamp_min(1.0)
    mean = (x * weights).sum(1, keepdim=True) / count
    var = ((x - mean).square() * weights).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + 1e-5) * weights


class RandomProjectionQuantizer(nn.Module):
    """Frozen random projection + codebooks: stacked features (B, T, D) → codes (B, T, G)."""

    def __init__(self, in_dim: int, cfg: BestRQConfig):
        super().__init__()
        groups, dim = cfg.num_codebooks, cfg.codebook_dim
        self.register_buffer("projection", torch.empty(in_dim, groups * dim))
        self.register_buffer("codebooks", torch.empty(groups, cfg.codebook_size, dim))

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        nn.init.xavier_uniform_(self.projection, generator=generator)
        self.codebooks.normal_(generator=generator)
        self.codebooks.copy_(F.normalize(self.codebooks, dim=-1))

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        groups, _, dim = self.codebooks.shape
        projected = (features.float() @ self.projection.float()).unflatten(-1, (groups, dim))
        similarity = torch.einsum("btgd,gvd->btgv", F.normalize(projected, dim=-1), self.codebooks.float())
        return similarity.argmax(-1)


class BestRQModel(SpeechEncoder):
    def __init__(self, cfg: ModelConfig, objective: BestRQConfig, init_seed: int = 0):
        super().__init__(cfg)
        self.objective = objective
        stride = math.prod(s for _, _, s in cfg.conv_feature_layers)
        self.stack = stride // MEL_HOP_SAMPLES  # log-mel frames per encoder frame
        self.quantizer = RandomProjectionQuantizer(self.stack * objective.num_mel_bins, objective)
        self.head = nn.Linear(cfg.encoder_embed_dim, objective.num_codebooks * objective.codebook_size)
        self.init_weights(init_seed)

    def root_template(self, seed: int) -> nn.Module:
        return BestRQModel(dataclasses.replace(self.cfg, encoder_layers=0), self.objective, init_seed=seed)

    @torch.no_grad()
    def init_root_weights(self, generator: torch.Generator) -> None:
        self.init_encoder_weights(generator, head=(self.head,))
        self.quantizer.init_weights(generator)

    def targets(self, source: Tensor, padding_mask: Tensor | None, num_frames: int) -> Tensor:
        """The code of every encoder frame (B, T, G), from the unmasked audio."""
        with torch.autocast(device_type=source.device.type, enabled=False):
            mel = log_mel(source, self.objective.num_mel_bins)
            valid = None
            if padding_mask is not None:
                lengths = padding_mask.shape[1] - padding_mask.long().sum(-1)
                mel_lengths = (
                    torch.div(lengths - MEL_WINDOW_SAMPLES, MEL_HOP_SAMPLES, rounding_mode="floor") + 1
                )
                valid = ~lengths_to_padding_mask(mel_lengths, mel.shape[1])
            mel = normalise_per_utterance(mel, valid)
            needed = num_frames * self.stack  # the conv can have one frame more than whole mel pairs
            mel = F.pad(mel, (0, 0, 0, max(needed - mel.shape[1], 0)))[:, :needed]
            return self.quantizer(mel.reshape(mel.shape[0], num_frames, -1))

    def forward(
        self,
        source: Tensor,
        padding_mask: Tensor | None = None,
        mask_indices: Tensor | None = None,
        layer_keep: list[bool] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(logits (B, T, G, V), target codes (B, T, G))."""
        x, _, _, frame_padding = self.frontend(source, padding_mask)
        x = self.encoder(self.apply_mask(x, mask_indices), frame_padding, layer_keep)
        groups = self.objective.num_codebooks
        logits = self.head(x).unflatten(-1, (groups, -1))
        return logits, self.targets(source, padding_mask, x.shape[1])


def code_perplexity(codes: Tensor, weights: Tensor, codebook_size: int) -> Tensor:
    """Σ_g exp(entropy) of the codes' histogram over the weighted frames ((B, T, G), (B, T))."""
    counts = torch.zeros(codes.shape[-1], codebook_size, device=codes.device)
    counts.scatter_add_(
        1, codes.reshape(-1, codes.shape[-1]).T, weights.reshape(1, -1).expand(codes.shape[-1], -1)
    )
    probs = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()


class BestRQObjective:
    name = "best_rq"

    def __init__(self, cfg: TrainConfig):
        self.model_cfg, self.cfg = cfg.model, cfg.objective.best_rq
        codes = self.cfg.codebook_size
        self.spec = MetricSpec(
            sums={
                "loss_prediction": ("bits", "loss_prediction"),
                "correct": ("rate", "accuracy"),
                "sample_size": ("count", "sample_size"),
                "code_perplexity": ("mean", "code_perplexity"),
            },
            console=(
                ("loss_prediction", ".3f", "prediction"),
                ("accuracy", ".3f", "accuracy"),
                ("code_perplexity", ".1f", "code_perplexity"),
            ),
            loss_key="loss_prediction",
            chance_bits=math.log2(codes),  # uniform over one codebook
            usage_key="code_perplexity",
            codebook_size=self.cfg.num_codebooks * codes,
            best_key="valid_loss_prediction",
        )

    def build_model(self, init_seed: int = 0) -> BestRQModel:
        return BestRQModel(self.model_cfg, self.cfg, init_seed=init_seed)

    def set_num_updates(self, model: nn.Module, num_updates: int) -> None:
        pass  # nothing in BEST-RQ is scheduled

    def schedule_metrics(self, model: nn.Module) -> dict[str, float]:
        return {}

    def prepare(
        self, model: nn.Module, source: Tensor, padding_mask: Tensor | None, generator: torch.Generator
    ) -> Prepared:
        frames = self.model_cfg.num_frames(source.shape[1])
        masks = compute_mask_indices(
            (source.shape[0], frames),
            model.frame_padding_mask(padding_mask, frames),
            self.cfg.mask_prob,
            self.cfg.mask_length,
            self.cfg.mask_min_masks,
            False,
            generator=generator,
            device=source.device,
        )
        return Prepared(source, padding_mask, masks.sum().float(), {"mask_indices": masks}, generator)

    def loss(
        self, module: nn.Module, prepared: Prepared, layer_keep: list[bool] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy of each masked frame's codes, averaged over the codebooks, summed over frames."""
        masks = prepared.draws["mask_indices"]
        logits, codes = module(
            prepared.source, prepared.padding_mask, mask_indices=masks, layer_keep=layer_keep
        )
        logits = logits.float()
        weights = masks.float()
        ce = torch.logsumexp(logits, dim=-1) - logits.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        loss = (ce.mean(-1) * weights).sum()
        with torch.no_grad():
            correct = ((logits.argmax(-1) == codes).float().mean(-1) * weights).sum()
            usage = code_perplexity(codes, weights, self.cfg.codebook_size)
        metrics = {
            "loss_prediction": loss.detach(),
            "correct": correct,
            "sample_size": weights.sum(),
            "code_perplexity": usage,
        }
        return loss, metrics

    def features(self, module: nn.Module, source: Tensor) -> None:
        module(source, None)

    def interval_metrics(self, sums: dict[str, float], passes: float, prefix: str = "") -> dict[str, float]:
        return self.spec.reduce(sums, passes, prefix)

    def validation_columns(self, metrics: dict[str, float]) -> list[str]:
        return [
            f"prediction {metrics['valid_loss_prediction']:.3f} bits (chance {self.spec.chance_bits:.3f})",
            f"accuracy {metrics['valid_accuracy']:.3f}",
            f"code_perplexity {metrics['valid_code_perplexity']:.1f}",
        ]

    def alarms(self, metrics: dict[str, float], past_warmup: bool) -> list[Alarm]:
        """Stuck at chance; or targets that barely vary (too few codes in use: features not normalised,
        or silence-dominated data), which makes the task trivial."""
        alarms = stuck_at_chance(metrics, self.spec, past_warmup)
        usage = metrics.get("code_perplexity")
        if (
            usage is not None
            and usage < 0.01 * self.spec.codebook_size
            and usage < 4 * self.cfg.num_codebooks
        ):
            message = f"target code perplexity {usage:.1f}: the targets use almost no codes"
            alarms.append(Alarm("codebook", message))
        return alarms

    def flops_per_crop(self, crop_samples: int) -> float:
        encoder, frames = encoder_forward_flops(self.model_cfg, crop_samples)
        head = 2 * self.model_cfg.encoder_embed_dim * self.cfg.num_codebooks * self.cfg.codebook_size
        return 3 * (encoder + frames * head)

    def head_activation_bytes(self, crop_samples: int, compute_bytes: int) -> float:
        """Per frame: the head's input (D), its logits (G·V) and the fp32 copy log-sum-exp keeps."""
        frames = self.model_cfg.num_frames(crop_samples)
        logits = self.cfg.num_codebooks * self.cfg.codebook_size
        fp32_copy = 4 * logits if compute_bytes < 4 else 0
        return frames * (
            self.model_cfg.encoder_embed_dim * compute_bytes + logits * compute_bytes + fp32_copy
        )
