"""Named architectures, each defined once as the one it derives from plus its changes.

Pick one in a recipe with ``model: {preset: NAME}`` and list only the fields that differ; the
same name selects wav2vec 2.0's settings for that size (``objective.wav2vec2``). Sources:
wav2vec 2.0 (Baevski et al., arXiv 2006.11477, Sec. 4.2) and fairseq's ``Wav2Vec2Config``
(``fairseq/models/wav2vec/wav2vec2.py``) with the ``examples/wav2vec/config/pretraining`` recipes;
XLS-R (Babu et al., arXiv 2111.09296, Sec. 4.1) with the dimensions of torchaudio's
``wav2vec2_xlsr_{300m,1b,2b}`` factories and the ``facebook/wav2vec2-xls-r-*`` Hugging Face configs;
XLSR-53 (Conneau et al., arXiv 2006.13979).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from xlsr.config.schema import ModelConfig, Wav2Vec2Config


def base() -> ModelConfig:
    """wav2vec 2.0 BASE (95M): 12 post-LN layers, group-norm extractor; ``ModelConfig``'s defaults.

    The paper says 8 attention heads; fairseq, Hugging Face and torchaudio all use 12.
    """
    return ModelConfig()


def large() -> ModelConfig:
    """wav2vec 2.0 LARGE (317M) as trained on LibriSpeech: 24 post-LN layers, layer drop 0.2.

    Dropout stays 0.1: the paper applies 0.1 "in the Transformer" (fairseq2's ``large`` uses 0.0).
    """
    return replace(
        base(),
        encoder_layers=24,
        encoder_embed_dim=1024,
        encoder_ffn_embed_dim=4096,
        encoder_attention_heads=16,
        encoder_layerdrop=0.2,
    )


def xlsr_300m() -> ModelConfig:
    """XLS-R 0.3B (317M): LARGE dimensions, pre-LN, layer-norm extractor with conv bias, no dropout.

    Dropouts and feature gradient scale follow fairseq's LV-60 recipe (``wav2vec2_large_librivox.yaml``)
    and torchaudio's ``wav2vec2_xlsr_300m``.
    """
    return replace(
        large(),
        extractor_mode="layer_norm",
        conv_bias=True,
        layer_norm_first=True,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        dropout_input=0.0,
        encoder_layerdrop=0.0,
        feature_grad_mult=1.0,
    )


def xlsr_1b() -> ModelConfig:
    """XLS-R 1B (965M): 48 layers of width 1280; dropout_input 0.1 as torchaudio's ``wav2vec2_xlsr_1b``."""
    return replace(
        xlsr_300m(), encoder_layers=48, encoder_embed_dim=1280, encoder_ffn_embed_dim=5120, dropout_input=0.1
    )


def xlsr_2b() -> ModelConfig:
    """XLS-R 2B (2,163M): XLS-R 1B at width 1920."""
    return replace(xlsr_1b(), encoder_embed_dim=1920, encoder_ffn_embed_dim=7680)


def tiny() -> ModelConfig:
    """A tiny XLS-R encoder for the demo and CI (0.5M parameters with its wav2vec 2.0 head)."""
    return replace(
        xlsr_300m(),
        conv_feature_layers=[(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2,
        encoder_layers=2,
        encoder_embed_dim=128,
        encoder_ffn_embed_dim=256,
        encoder_attention_heads=4,
    )


MODEL_PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": tiny,
    "base": base,
    "large": large,
    "xlsr_300m": xlsr_300m,
    "xlsr_1b": xlsr_1b,
    "xlsr_2b": xlsr_2b,
}


# wav2vec 2.0's quantizer and contrastive head at each size (``objective.wav2vec2``; a recipe's
# ``model.preset`` selects the same-named one unless the section names its own).


def base_wav2vec2() -> Wav2Vec2Config:
    """BASE: G = 2 codebooks of V = 320, final_dim 256, K = 100 negatives (``Wav2Vec2Config``'s defaults)."""
    return Wav2Vec2Config()


def large_wav2vec2() -> Wav2Vec2Config:
    return replace(base_wav2vec2(), final_dim=768, latent_temp=(2.0, 0.1, 0.999995))


def xlsr_300m_wav2vec2() -> Wav2Vec2Config:
    """Codebook dimension 768 and no feature dropout, as torchaudio's ``wav2vec2_xlsr_300m``."""
    return replace(large_wav2vec2(), latent_dim=768, dropout_features=0.0)


def xlsr_1b_wav2vec2() -> Wav2Vec2Config:
    return replace(xlsr_300m_wav2vec2(), final_dim=1024, latent_dim=1024)


def tiny_wav2vec2() -> Wav2Vec2Config:
    return replace(
        xlsr_300m_wav2vec2(), final_dim=64, latent_vars=64, latent_dim=64, latent_temp=(2.0, 0.5, 0.995)
    )


WAV2VEC2_PRESETS: dict[str, Callable[[], Wav2Vec2Config]] = {
    "tiny": tiny_wav2vec2,
    "base": base_wav2vec2,
    "large": large_wav2vec2,
    "xlsr_300m": xlsr_300m_wav2vec2,
    "xlsr_1b": xlsr_1b_wav2vec2,
    "xlsr_2b": xlsr_1b_wav2vec2,
}
