"""Model configs and fairseq-format helpers shared by the model, interop and evaluation tests."""

from __future__ import annotations

import dataclasses

import torch

from xlsr.config import ModelConfig


def small_config(layer_norm: bool, **overrides) -> ModelConfig:
    """Same structure as BASE (group norm, post-LN) or XLS-R (layer norm, pre-LN, conv bias), tiny sizes."""
    cfg = ModelConfig(
        extractor_mode="layer_norm" if layer_norm else "group_norm",
        conv_feature_layers=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
        conv_bias=layer_norm,
        layer_norm_first=layer_norm,
        encoder_layers=2,
        encoder_embed_dim=48,
        encoder_ffn_embed_dim=96,
        encoder_attention_heads=4,
        conv_pos=16,
        conv_pos_groups=4,
        final_dim=24,
        latent_vars=16,
        latent_groups=2,
        latent_dim=16,
        num_negatives=10,
        dropout=0.0,
        attention_dropout=0.0,
        dropout_input=0.0,
        dropout_features=0.0,
        encoder_layerdrop=0.0,
        feature_grad_mult=1.0,
    )
    return dataclasses.replace(cfg, **overrides)


def to_fairseq_state(state: dict[str, torch.Tensor], layer_norm: bool) -> dict[str, torch.Tensor]:
    """Our names → fairseq's ``Wav2Vec2Model`` keys, written independently of the importer under test."""
    pos_conv = {
        "encoder.pos_conv.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
        "encoder.pos_conv.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
        "encoder.pos_conv.conv.bias": "encoder.pos_conv.0.bias",
    }
    out = {}
    for key, value in state.items():
        if key in pos_conv:
            key = pos_conv[key]
        elif key.startswith("feature_extractor."):
            key = key.replace(".conv.", ".0.").replace(".norm.", ".2.1." if layer_norm else ".2.")
        out[key] = value
    return out


def fairseq_model_cfg(cfg: ModelConfig) -> dict:
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in cfg.conv_feature_layers)
    model = {
        "_name": "wav2vec2",
        "extractor_mode": "layer_norm" if cfg.extractor_mode == "layer_norm" else "default",
        "conv_feature_layers": layers,
        "quantize_targets": True,
        "latent_temp": list(cfg.latent_temp),
        "mask_min_masks": None,
    }
    for f in dataclasses.fields(ModelConfig):
        if f.name not in model and f.name not in ("mask_min_masks", "conv_feature_layers"):
            model[f.name] = getattr(cfg, f.name)
    return model
