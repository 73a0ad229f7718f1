"""Model configs shared by the model and interop tests."""

from __future__ import annotations

import dataclasses

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
