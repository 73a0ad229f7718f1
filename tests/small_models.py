"""Model configs and fairseq-format helpers shared by the model, interop and evaluation tests."""

from __future__ import annotations

import dataclasses

import torch

from xlsr.config import ModelConfig, Wav2Vec2Config


def small_config(layer_norm: bool, **overrides) -> tuple[ModelConfig, Wav2Vec2Config]:
    """Same structure as BASE (group norm, post-LN) or XLS-R (layer norm, pre-LN, conv bias), tiny
    sizes: the encoder and wav2vec 2.0's settings (``overrides`` go to whichever has the field)."""
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
        dropout=0.0,
        attention_dropout=0.0,
        dropout_input=0.0,
        encoder_layerdrop=0.0,
        feature_grad_mult=1.0,
    )
    w2v2 = Wav2Vec2Config(
        final_dim=24, latent_vars=16, latent_groups=2, latent_dim=16, num_negatives=10, dropout_features=0.0
    )
    encoder_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    ours = {k: v for k, v in overrides.items() if k in encoder_fields}
    theirs = {k: v for k, v in overrides.items() if k not in encoder_fields}
    return dataclasses.replace(cfg, **ours), dataclasses.replace(w2v2, **theirs)


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


def fairseq_model_cfg(cfg: ModelConfig, w2v2: Wav2Vec2Config) -> dict:
    layers = " + ".join(f"[({d}, {k}, {s})]" for d, k, s in cfg.conv_feature_layers)
    model = {
        "_name": "wav2vec2",
        "extractor_mode": "layer_norm" if cfg.extractor_mode == "layer_norm" else "default",
        "conv_feature_layers": layers,
        "quantize_targets": True,
        "latent_temp": list(w2v2.latent_temp),
        "mask_min_masks": None,
    }
    for f in dataclasses.fields(ModelConfig):
        if f.name not in model and f.name != "conv_feature_layers":
            model[f.name] = getattr(cfg, f.name)
    for f in dataclasses.fields(Wav2Vec2Config):
        if f.name not in model and not f.name.endswith("_weight"):
            model[f.name] = getattr(w2v2, f.name)
    return model
