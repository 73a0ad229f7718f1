"""Checkpoint interoperability: Hugging Face ``Wav2Vec2ForPreTraining`` and fairseq ``Wav2Vec2Model``.

Our parameter names follow fairseq's, except the conv blocks (``conv_layers.{i}.conv`` / ``.norm``) and the
positional conv (``encoder.pos_conv.conv`` with torch parametrized weight norm). The key maps follow fairseq's
``Wav2Vec2Model`` state dict (``fairseq/models/wav2vec/wav2vec2.py``) and the ``MAPPING`` of HF's
``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py``; docs/model.md ("Interop") tabulates them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xlsr.config import ModelConfig, Wav2Vec2Config
from xlsr.process import UserError

_G = "parametrizations.weight.original0"  # weight-norm gain, (1, 1, k)
_V = "parametrizations.weight.original1"  # weight-norm direction, (D, D/groups, k)

# (ours, HF) name templates: {n} is a layer index, {a} a projection name, {w} a parameter name.
_HF_NAMES: list[tuple[str, str]] = [
    ("mask_emb", "wav2vec2.masked_spec_embed"),
    ("feature_extractor.conv_layers.{n}.conv.{w}", "wav2vec2.feature_extractor.conv_layers.{n}.conv.{w}"),
    (
        "feature_extractor.conv_layers.{n}.norm.{w}",
        "wav2vec2.feature_extractor.conv_layers.{n}.layer_norm.{w}",
    ),
    ("layer_norm.{w}", "wav2vec2.feature_projection.layer_norm.{w}"),
    ("post_extract_proj.{w}", "wav2vec2.feature_projection.projection.{w}"),
    ("encoder.pos_conv.conv.bias", "wav2vec2.encoder.pos_conv_embed.conv.bias"),
    (f"encoder.pos_conv.conv.{_G}", "wav2vec2.encoder.pos_conv_embed.conv.weight_g"),
    (f"encoder.pos_conv.conv.{_V}", "wav2vec2.encoder.pos_conv_embed.conv.weight_v"),
    ("encoder.layer_norm.{w}", "wav2vec2.encoder.layer_norm.{w}"),
    ("encoder.layers.{n}.self_attn.{a}.{w}", "wav2vec2.encoder.layers.{n}.attention.{a}.{w}"),
    ("encoder.layers.{n}.self_attn_layer_norm.{w}", "wav2vec2.encoder.layers.{n}.layer_norm.{w}"),
    ("encoder.layers.{n}.fc1.{w}", "wav2vec2.encoder.layers.{n}.feed_forward.intermediate_dense.{w}"),
    ("encoder.layers.{n}.fc2.{w}", "wav2vec2.encoder.layers.{n}.feed_forward.output_dense.{w}"),
    ("encoder.layers.{n}.final_layer_norm.{w}", "wav2vec2.encoder.layers.{n}.final_layer_norm.{w}"),
    ("quantizer.vars", "quantizer.codevectors"),
    ("quantizer.weight_proj.{w}", "quantizer.weight_proj.{w}"),
    ("project_q.{w}", "project_q.{w}"),
    ("final_proj.{w}", "project_hid.{w}"),
]

# (fairseq, ours); every other fairseq key of a pretrained Wav2Vec2Model already has our name (docs/model.md).
_FAIRSEQ_NAMES: list[tuple[str, str]] = [
    ("feature_extractor.conv_layers.{n}.0.{w}", "feature_extractor.conv_layers.{n}.conv.{w}"),
    ("feature_extractor.conv_layers.{n}.2.1.{w}", "feature_extractor.conv_layers.{n}.norm.{w}"),  # layer_norm
    ("feature_extractor.conv_layers.{n}.2.{w}", "feature_extractor.conv_layers.{n}.norm.{w}"),  # group_norm
    ("encoder.pos_conv.0.weight_g", f"encoder.pos_conv.conv.{_G}"),
    ("encoder.pos_conv.0.weight_v", f"encoder.pos_conv.conv.{_V}"),
    ("encoder.pos_conv.0.bias", "encoder.pos_conv.conv.bias"),
    *[(ours, ours) for ours, _ in _HF_NAMES if "conv_layers" not in ours and "pos_conv" not in ours],
]
_SLOTS = {"n": r"(?P<n>\d+)", "a": r"(?P<a>[a-z]+_proj)", "w": r"(?P<w>\w+)"}


def _pattern(template: str) -> re.Pattern[str]:
    regex = re.escape(template)
    for slot, group in _SLOTS.items():
        regex = regex.replace(re.escape("{" + slot + "}"), group)
    return re.compile(regex)


def _renamer(pairs: list[tuple[str, str]]) -> Callable[[str], str | None]:
    compiled = [(_pattern(source), target) for source, target in pairs]

    def rename(key: str) -> str | None:
        for pattern, target in compiled:
            match = pattern.fullmatch(key)
            if match:
                return target.format(**match.groupdict())
        return None

    return rename


_to_hf = _renamer(_HF_NAMES)
_from_hf = _renamer([(hf, ours) for ours, hf in _HF_NAMES])
_from_fairseq = _renamer(_FAIRSEQ_NAMES)


# --------------------------------------------------------------------------------------------------
# Hugging Face


def hf_config_dict(cfg: ModelConfig, w2v2: Wav2Vec2Config | None = None) -> dict[str, Any]:
    """HF ``Wav2Vec2Config`` fields (config.json) for the encoder ``cfg`` and wav2vec 2.0's ``w2v2``:
    each fairseq field under its HF name."""
    w2v2 = w2v2 or Wav2Vec2Config()
    dim = cfg.encoder_embed_dim
    dims, kernels, strides = (list(column) for column in zip(*cfg.conv_feature_layers, strict=True))
    return {
        "architectures": ["Wav2Vec2ForPreTraining"],
        "model_type": "wav2vec2",
        "feat_extract_norm": "layer" if cfg.extractor_mode == "layer_norm" else "group",
        "feat_extract_activation": "gelu",
        "conv_dim": dims,
        "conv_kernel": kernels,
        "conv_stride": strides,
        "conv_bias": cfg.conv_bias,
        "num_feat_extract_layers": len(dims),
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": cfg.encoder_layers,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "num_attention_heads": cfg.encoder_attention_heads,
        "hidden_act": "gelu",
        "do_stable_layer_norm": cfg.layer_norm_first,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.dropout_input,
        "feat_quantizer_dropout": w2v2.dropout_features,
        "layerdrop": cfg.encoder_layerdrop,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "num_codevectors_per_group": w2v2.latent_vars,
        "num_codevector_groups": w2v2.latent_groups,
        "codevector_dim": w2v2.codevector_dim(dim),
        "proj_codevector_dim": w2v2.output_dim(dim),
        "contrastive_logits_temperature": w2v2.logit_temp,
        "num_negatives": w2v2.num_negatives,
        "diversity_loss_weight": w2v2.diversity_weight,
        "apply_spec_augment": True,
        "mask_time_prob": w2v2.mask_prob,
        "mask_time_length": w2v2.mask_length,
        "mask_time_min_masks": w2v2.mask_min_masks,
        "mask_feature_prob": 0.0,
        "initializer_range": 0.02,
    }


def hf_preprocessor_config_dict(normalize: bool, extractor_mode: str) -> dict[str, Any]:
    """preprocessor_config.json for ``Wav2Vec2FeatureExtractor`` (attention masks: layer-norm models only)."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": normalize,
        "return_attention_mask": extractor_mode == "layer_norm",
    }


def model_config_from_hf(hf_config: Mapping[str, Any]) -> tuple[ModelConfig, Wav2Vec2Config]:
    """Inverse of :func:`hf_config_dict`; fields HF does not store (latent_temp, ...) keep our defaults."""
    c = dict(hf_config)
    layers = [
        (int(d), int(k), int(s))
        for d, k, s in zip(c["conv_dim"], c["conv_kernel"], c["conv_stride"], strict=True)
    ]
    model = ModelConfig(
        extractor_mode="layer_norm" if c.get("feat_extract_norm", "group") == "layer" else "group_norm",
        conv_feature_layers=layers,
        conv_bias=bool(c.get("conv_bias", False)),
        encoder_layers=int(c["num_hidden_layers"]),
        encoder_embed_dim=int(c["hidden_size"]),
        encoder_ffn_embed_dim=int(c["intermediate_size"]),
        encoder_attention_heads=int(c["num_attention_heads"]),
        layer_norm_first=bool(c.get("do_stable_layer_norm", False)),
        conv_pos=int(c.get("num_conv_pos_embeddings", 128)),
        conv_pos_groups=int(c.get("num_conv_pos_embedding_groups", 16)),
        dropout=float(c.get("hidden_dropout", 0.1)),
        attention_dropout=float(c.get("attention_dropout", 0.1)),
        activation_dropout=float(c.get("activation_dropout", 0.1)),
        dropout_input=float(c.get("feat_proj_dropout", 0.0)),
        encoder_layerdrop=float(c.get("layerdrop", 0.1)),
    )
    w2v2 = Wav2Vec2Config(
        dropout_features=float(c.get("feat_quantizer_dropout", 0.0)),
        final_dim=int(c.get("proj_codevector_dim", 256)),
        latent_vars=int(c.get("num_codevectors_per_group", 320)),
        latent_groups=int(c.get("num_codevector_groups", 2)),
        latent_dim=int(c.get("codevector_dim", 256)),
        logit_temp=float(c.get("contrastive_logits_temperature", 0.1)),
        num_negatives=int(c.get("num_negatives", 100)),
        mask_prob=float(c.get("mask_time_prob", 0.05)),
        mask_length=int(c.get("mask_time_length", 10)),
        mask_min_masks=int(c.get("mask_time_min_masks", 2)),
    )
    return model, w2v2


def hf_name(key: str) -> str:
    """The ``Wav2Vec2ForPreTraining`` name of one of our parameter names."""
    hf_key = _to_hf(key)
    if hf_key is None:
        raise KeyError(f"no Hugging Face name for parameter {key!r}")
    return hf_key


def to_hf_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict → ``Wav2Vec2ForPreTraining`` keys, weight norm as legacy ``weight_g`` / ``weight_v``."""
    hf: dict[str, Tensor] = {}
    for key, value in model_state.items():
        hf[hf_name(key)] = value
    if "layer_norm.weight" in model_state and "post_extract_proj.weight" not in model_state:
        # HF always has the projection; ours is absent when conv dim == model dim: export the identity.
        ln = model_state["layer_norm.weight"]
        hf["wav2vec2.feature_projection.projection.weight"] = torch.eye(ln.numel(), dtype=ln.dtype)
        hf["wav2vec2.feature_projection.projection.bias"] = torch.zeros_like(ln)
    return hf


def from_hf_state_dict(hf_state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """``Wav2Vec2ForPreTraining`` (or bare ``Wav2Vec2Model``) state dict → ours.

    Accepts both weight-norm layouts: ``weight_g`` / ``weight_v`` and ``parametrizations.weight.original0/1``.
    Heads we do not have (``lm_head``, adapters, ...) are an error.
    """
    prefixed = any(key.startswith("wav2vec2.") for key in hf_state)
    ours: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        full = key if prefixed or key.startswith(("quantizer.", "project_")) else f"wav2vec2.{key}"
        full = full.replace("conv.parametrizations.weight.original0", "conv.weight_g")
        full = full.replace("conv.parametrizations.weight.original1", "conv.weight_v")
        our_key = _from_hf(full)
        if our_key is None:
            raise KeyError(f"unexpected Hugging Face parameter {key!r}")
        ours[our_key] = value
    conv_dim, dim = cfg.conv_feature_layers[-1][0], cfg.encoder_embed_dim
    if conv_dim == dim and "post_extract_proj.weight" in ours:
        weight, bias = ours.pop("post_extract_proj.weight"), ours.pop("post_extract_proj.bias")
        if not (torch.equal(weight, torch.eye(dim, dtype=weight.dtype)) and not bias.any()):
            raise ValueError("HF feature projection is not the identity but conv dim == hidden size")
    return ours


# --------------------------------------------------------------------------------------------------
# fairseq

# fairseq Wav2Vec2Config defaults where they differ from ours (a key missing from a checkpoint means these).
_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "dropout_features": 0.0,
    "feature_grad_mult": 1.0,
    "final_dim": 0,
    "latent_dim": 0,
    "conv_bias": False,
}
# Options that change the architecture: we refuse them rather than load something different.
_FAIRSEQ_UNSUPPORTED: dict[str, Any] = {
    "quantize_targets": True,
    "quantize_input": False,
    "same_quantizer": False,
    "target_glu": False,
    "quantizer_depth": 1,
    "pos_conv_depth": 1,
    "layer_type": "transformer",
    "activation_fn": "gelu",
}
# Objective options we implement only at their recipe values; other values load, with a warning.
_FAIRSEQ_OBJECTIVE: dict[str, Any] = {
    "negatives_from_everywhere": False,
    "cross_sample_negatives": 0,
    "codebook_negatives": 0,
    "mask_selection": "static",
    "no_mask_overlap": False,
    "mask_dropout": 0.0,
    "mask_channel_prob": 0.0,
}

_SAFE_BINOPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Mult: operator.mul}


def _eval_literal(text: str) -> Any:
    """Evaluate fairseq's list expressions such as ``[(512, 10, 5)] + [(512, 3, 2)] * 4`` without eval()."""

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.List | ast.Tuple):
            items = [walk(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and type(node.op) in _SAFE_BINOPS:
            return _SAFE_BINOPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported expression in fairseq config: {text!r}")

    return walk(ast.parse(text, mode="eval"))


def model_config_from_fairseq(
    cfg_dict: Mapping[str, Any] | argparse.Namespace,
) -> tuple[ModelConfig, Wav2Vec2Config]:
    """fairseq model config (``cfg["model"]`` or the legacy ``args`` Namespace) → our encoder and
    wav2vec 2.0 configs (the loss weights, which fairseq keeps in the criterion, keep our defaults)."""
    c = dict(vars(cfg_dict)) if isinstance(cfg_dict, argparse.Namespace) else dict(cfg_dict)
    for key, required in _FAIRSEQ_UNSUPPORTED.items():
        if key in c and c[key] is not None and c[key] != required:
            raise ValueError(f"fairseq option {key}={c[key]!r} is not supported (need {required!r})")
    for key, default in _FAIRSEQ_OBJECTIVE.items():
        if key in c and c[key] not in (None, default):
            warnings.warn(f"fairseq option {key}={c[key]!r} is ignored (xlsr uses {default!r})", stacklevel=2)

    def get(key: str) -> Any:
        value = c.get(key)
        if value is None:
            ours = ModelConfig() if hasattr(ModelConfig(), key) else Wav2Vec2Config()
            value = _FAIRSEQ_DEFAULTS.get(key, getattr(ours, key))
        return _eval_literal(value) if isinstance(value, str) and value[:1] in "[(" else value

    layers = get("conv_feature_layers")
    mode = get("extractor_mode")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"fairseq extractor_mode {mode!r} is not supported")
    values = {f.name: get(f.name) for f in dataclasses.fields(ModelConfig)}
    values["extractor_mode"] = "layer_norm" if mode == "layer_norm" else "group_norm"
    values["conv_feature_layers"] = [tuple(int(v) for v in layer) for layer in layers]
    w2v2 = {f.name: get(f.name) for f in dataclasses.fields(Wav2Vec2Config) if not f.name.endswith("_weight")}
    w2v2["latent_temp"] = tuple(float(v) for v in w2v2["latent_temp"])
    if c.get("mask_min_masks") is None:
        w2v2["mask_min_masks"] = 2  # hard-coded in fairseq's apply_mask before it became an option
    return ModelConfig(**values), Wav2Vec2Config(**w2v2)


def from_fairseq_state_dict(state: Mapping[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """fairseq ``Wav2Vec2Model`` state dict (pretrained, or fine-tuned ``w2v_encoder.w2v_model.*``) → ours."""
    ours: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("w2v_encoder."):
            if not key.startswith("w2v_encoder.w2v_model."):
                continue  # fine-tuning head (w2v_encoder.proj)
            key = key.removeprefix("w2v_encoder.w2v_model.")
        our_key = _from_fairseq(key)
        if our_key is None:
            raise KeyError(f"unexpected fairseq parameter {key!r}")
        ours[our_key] = value
    if cfg.extractor_mode == "group_norm" and any(".norm." in k and ".conv_layers.0." not in k for k in ours):
        raise ValueError("fairseq checkpoint has per-block norms but the config says group_norm")
    return ours


class UnsafeCheckpointError(UserError, ValueError):
    """The checkpoint contains a pickled global outside the allow-list."""


class UnreadableCheckpointError(UserError, ValueError):
    """The file is not a checkpoint of the expected kind (garbage, text, truncated, a directory)."""


class _PickledObject:
    """Inert stand-in for fairseq objects pickled into checkpoints (meters); keeps their state."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)


class _PickledDict(dict):
    """Inert stand-in for fairseq dict subclasses (MetersDict)."""


_FAIRSEQ_STUBS: list[tuple[type, str]] = [
    *[
        (_PickledObject, f"fairseq.logging.meters.{name}")
        for name in ("Meter", "AverageMeter", "SumMeter", "TimeMeter", "StopwatchMeter", "ConcatTensorMeter")
    ],
    (_PickledDict, "fairseq.logging.meters.MetersDict"),
]


def _fairseq_safe_globals() -> list[Any]:
    allowed: list[Any] = [argparse.Namespace, *_FAIRSEQ_STUBS]
    try:  # Hydra-era checkpoints may hold OmegaConf containers.
        import typing

        import omegaconf
        from omegaconf import nodes

        allowed += [
            omegaconf.DictConfig,
            omegaconf.ListConfig,
            omegaconf.base.ContainerMetadata,
            omegaconf.base.Metadata,
            typing.Any,
            dict,
            list,
            int,
        ]
        allowed += [
            getattr(nodes, n)
            for n in dir(nodes)
            if n.endswith("Node") and isinstance(getattr(nodes, n), type)
        ]
    except ImportError:
        pass
    return allowed


def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    return value


def load_fairseq_checkpoint(path: str | Path) -> tuple[ModelConfig, Wav2Vec2Config, dict[str, Tensor]]:
    """Load a fairseq checkpoint without executing pickled code (``weights_only=True`` plus an allow-list).

    Accepts Hydra-era checkpoints (``cfg["model"]``, a dict or OmegaConf container) and 2020-era ones with an
    ``args`` Namespace. Returns our encoder and wav2vec 2.0 configs and the state dict.
    """
    if not Path(path).is_file():
        raise UnreadableCheckpointError(f"{path}: not a file (expected a fairseq checkpoint .pt)")
    try:
        with torch.serialization.safe_globals(_fairseq_safe_globals()):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle.UnpicklingError with the global's name in the text
        match = re.search(r"GLOBAL (\S+)", str(exc)) or re.search(r"unrecognized function (\S+)", str(exc))
        if match is None:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnreadableCheckpointError(
                f"{path}: not a readable fairseq checkpoint ({first_line[:120]})"
            ) from None
        raise UnsafeCheckpointError(
            f"{path}: refusing to load, the checkpoint contains the pickled global {match.group(1)}, "
            "which is not on xlsr's allow-list for fairseq checkpoints. Only load files you trust; to "
            "inspect it anyway, use torch.load(..., weights_only=False) on a trusted copy."
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UnreadableCheckpointError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    cfg = _plain(ckpt.get("cfg"))
    if cfg is not None and _plain(cfg.get("model")) is not None:
        model_cfg, w2v2 = model_config_from_fairseq(_plain(cfg["model"]))
    elif ckpt.get("args") is not None:
        model_cfg, w2v2 = model_config_from_fairseq(ckpt["args"])
    else:
        raise UnreadableCheckpointError(f"{path}: no model config (neither cfg['model'] nor args)")
    return model_cfg, w2v2, from_fairseq_state_dict(ckpt["model"], model_cfg)
