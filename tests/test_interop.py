"""Interoperability and numerical parity with Hugging Face, torchaudio and fairseq checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
import transformers
from small_models import fairseq_model_cfg, small_config, to_fairseq_state
from torchaudio.models.wav2vec2.utils import import_huggingface_model

from xlsr.config import ModelConfig, Wav2Vec2Config
from xlsr.model import Wav2Vec2Model, compute_mask_indices, pretraining_loss, sample_negatives
from xlsr.model.interop import (
    UnsafeCheckpointError,
    from_fairseq_state_dict,
    from_hf_state_dict,
    hf_config_dict,
    hf_name,
    load_fairseq_checkpoint,
    model_config_from_fairseq,
    model_config_from_hf,
    to_hf_state_dict,
)

LAYOUTS = pytest.mark.parametrize("layer_norm", [False, True], ids=["base_shaped", "xlsr_shaped"])


def build_pair(cfgs: tuple[ModelConfig, Wav2Vec2Config]):
    torch.manual_seed(0)
    ours = Wav2Vec2Model(*cfgs)
    hf_cfg = {k: v for k, v in hf_config_dict(*cfgs).items() if k != "model_type"}
    hf = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**hf_cfg))
    hf.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    return ours, hf


def batch(model: Wav2Vec2Model, num_samples: int = 8000, bsz: int = 2):
    g = torch.Generator().manual_seed(1)
    source = torch.randn(bsz, num_samples, generator=g)
    num_frames = int(model.frame_lengths(torch.tensor(num_samples)))
    mask = compute_mask_indices((bsz, num_frames), None, 0.65, 4, 2, True, generator=g)
    neg = sample_negatives(mask, model.w2v2.num_negatives, g)
    # HF takes indices into the flattened (B·T) grid.
    flat_neg = neg + (torch.arange(bsz) * num_frames)[:, None, None]
    return source, mask, neg, flat_neg


def hf_logits(
    projected: torch.Tensor, quantized: torch.Tensor, neg: torch.Tensor, temp: float
) -> torch.Tensor:
    """HF's logits rebuilt from its outputs, as (B, T, K+1) like ours."""
    rows = torch.arange(neg.shape[0])[:, None, None]
    candidates = torch.cat([quantized.unsqueeze(2), quantized[rows, neg]], dim=2)
    logits = torch.cosine_similarity(projected.unsqueeze(2).float(), candidates.float(), dim=-1) / temp
    neg_is_pos = (quantized.unsqueeze(2) == quantized[rows, neg]).all(-1)
    return logits.masked_fill(F.pad(neg_is_pos, (1, 0), value=False), float("-inf"))


def hf_parameter(hf, name: str) -> torch.nn.Parameter:
    key = hf_name(name).replace("conv.weight_g", "conv.parametrizations.weight.original0")
    key = key.replace("conv.weight_v", "conv.parametrizations.weight.original1")
    return dict(hf.named_parameters())[key]


# --------------------------------------------------------------------------------------------------
# Hugging Face


@LAYOUTS
def test_hf_eval_parity(layer_norm: bool):
    cfg, w2v2 = small_config(layer_norm)
    ours, hf = build_pair((cfg, w2v2))
    ours.eval(), hf.eval()
    source, mask, neg, flat_neg = batch(ours)
    with torch.no_grad():
        hidden, _ = ours.encode(source, mask_indices=mask)
        hf_hidden = hf.wav2vec2(source, mask_time_indices=mask).last_hidden_state
        out = ours(source, mask_indices=mask, negative_indices=neg)
        hf_out = hf(source, mask_time_indices=mask, sampled_negative_indices=flat_neg)
    torch.testing.assert_close(hidden, hf_hidden, rtol=1e-5, atol=1e-5)
    expected = hf_logits(hf_out.projected_states, hf_out.projected_quantized_states, neg, w2v2.logit_temp)
    torch.testing.assert_close(out.logits[mask], expected[mask], rtol=1e-5, atol=1e-5)

    _, n, metrics = pretraining_loss(out, Wav2Vec2Config(diversity_weight=0.1, feature_penalty_weight=0.0))
    torch.testing.assert_close(metrics["loss_contrastive"], hf_out.contrastive_loss, rtol=1e-5, atol=0)
    # In eval mode HF's diversity term uses the hard-code perplexity; fairseq (and we) keep the softmax one.
    torch.testing.assert_close(out.code_perplexity, hf_out.codevector_perplexity, rtol=1e-5, atol=0)
    hard_diversity = (out.num_vars - out.code_perplexity) / out.num_vars * n
    torch.testing.assert_close(hard_diversity, hf_out.diversity_loss, rtol=1e-5, atol=0)


@LAYOUTS
def test_hf_train_loss_and_gradient_parity(layer_norm: bool):
    ours, hf = build_pair(small_config(layer_norm))
    ours.train(), hf.train()
    source, mask, neg, flat_neg = batch(ours)
    # With no dropout the Gumbel noise is the only draw: reseeding gives both models the same noise
    # (our quantizer draws exactly like F.gumbel_softmax when no generator is passed).
    torch.manual_seed(5)
    out = ours(source, mask_indices=mask, negative_indices=neg)
    loss, _, _ = pretraining_loss(out, Wav2Vec2Config(diversity_weight=0.1, feature_penalty_weight=0.0))
    loss.backward()
    torch.manual_seed(5)
    hf_out = hf(source, mask_time_indices=mask, sampled_negative_indices=flat_neg)
    hf_out.loss.backward()

    # HF computes the perplexity with xlogy, fairseq (and we) with log(p + 1e-7): ~1e-6 relative.
    torch.testing.assert_close(out.prob_perplexity, hf_out.codevector_perplexity, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, hf_out.loss, rtol=1e-5, atol=0)
    global_scale = max(p.grad.abs().max() for p in ours.parameters())
    for name, param in ours.named_parameters():
        theirs = hf_parameter(hf, name).grad
        # k_proj.bias has an analytically zero gradient (softmax shift invariance): compare at roundoff scale.
        tolerance = 1e-4 * theirs.abs().max() + 1e-7 * global_scale
        assert (param.grad - theirs).abs().max() <= tolerance, name


def test_hf_padded_batch_parity():
    # Layer-norm models are padding-safe in HF too (attention_mask); group-norm ones are not (HF GroupNorm
    # includes padded frames, which we exclude deliberately).
    ours, hf = build_pair(small_config(True))
    ours.eval(), hf.eval()
    source = torch.randn(3, 8000)
    lengths = torch.tensor([8000, 6100, 4000])
    padding = torch.arange(8000) >= lengths[:, None]
    source = source.masked_fill(padding, 0.0)
    with torch.no_grad():
        hidden, frame_padding = ours.encode(source, padding)
        hf_hidden = hf.wav2vec2(source, attention_mask=(~padding).long()).last_hidden_state
    valid = ~frame_padding
    torch.testing.assert_close(hidden[valid], hf_hidden[valid], rtol=1e-5, atol=1e-5)


@LAYOUTS
def test_torchaudio_encoder_parity(layer_norm: bool):
    ours, hf = build_pair(small_config(layer_norm))
    logging.getLogger("torchaudio").setLevel(logging.ERROR)
    imported = import_huggingface_model(hf.wav2vec2).eval()
    ours.eval()
    source = torch.randn(2, 8000)
    with torch.no_grad():
        hidden, _ = ours.encode(source)
        theirs, _ = imported(source)
    torch.testing.assert_close(hidden, theirs, rtol=1e-5, atol=1e-5)


@LAYOUTS
def test_hf_round_trip_is_identity(layer_norm: bool):
    cfg, w2v2 = small_config(layer_norm)
    ours, hf = build_pair((cfg, w2v2))
    state = ours.state_dict()
    for hf_state in (to_hf_state_dict(state), hf.state_dict()):  # legacy weight_g/v and parametrizations keys
        back = from_hf_state_dict(hf_state, cfg)
        assert back.keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(back[key], value), key
    fresh = Wav2Vec2Model(cfg, w2v2)
    fresh.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg), strict=True)

    round_trip = model_config_from_hf(hf_config_dict(cfg, w2v2))
    not_in_hf = {"latent_temp", "feature_grad_mult", "require_same_masks", "mask_prob", "mask_length"}
    not_in_hf |= {"diversity_weight", "feature_penalty_weight"}
    for ours_cfg, back in zip((cfg, w2v2), round_trip, strict=True):
        for f in dataclasses.fields(ours_cfg):
            if f.name not in not_in_hf:
                assert getattr(back, f.name) == getattr(ours_cfg, f.name), f.name


def test_hf_config_has_expected_fields():
    d = hf_config_dict(ModelConfig(), Wav2Vec2Config(latent_dim=0, final_dim=256))
    assert d["architectures"] == ["Wav2Vec2ForPreTraining"] and d["model_type"] == "wav2vec2"
    assert d["feat_extract_norm"] == "group" and d["do_stable_layer_norm"] is False
    assert d["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and d["conv_stride"] == [5, 2, 2, 2, 2, 2, 2]
    assert d["codevector_dim"] == 256 and d["proj_codevector_dim"] == 256
    assert d["num_codevectors_per_group"] == 320 and d["num_codevector_groups"] == 2
    assert d["mask_time_prob"] == 0.65 and d["mask_time_length"] == 10 and d["num_negatives"] == 100


# --------------------------------------------------------------------------------------------------
# fairseq


@LAYOUTS
def test_fairseq_checkpoint_round_trip(tmp_path, layer_norm: bool):
    cfg, w2v2 = small_config(layer_norm)
    torch.manual_seed(0)
    ours = Wav2Vec2Model(cfg, w2v2)
    state = ours.state_dict()
    fairseq_state = to_fairseq_state(state, layer_norm)
    assert "mask_emb" in fairseq_state and "encoder.pos_conv.0.weight_g" in fairseq_state
    assert ("feature_extractor.conv_layers.3.2.1.weight" in fairseq_state) == layer_norm
    model_cfg = fairseq_model_cfg(cfg, w2v2)

    hydra = {
        "args": None,
        "cfg": {"model": model_cfg, "task": {"normalize": layer_norm}},
        "model": fairseq_state,
        "optimizer_history": [{"num_updates": 10, "lr_scheduler_state": {"best": None}}],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }
    legacy_args = dict(model_cfg, latent_temp=str(tuple(w2v2.latent_temp)), arch="wav2vec2", lr=[0.0005])
    legacy = {"args": argparse.Namespace(**legacy_args), "model": fairseq_state}
    for name, ckpt in (("hydra.pt", hydra), ("legacy.pt", legacy)):
        torch.save(ckpt, tmp_path / name)
        loaded_cfg, loaded_w2v2, loaded_state = load_fairseq_checkpoint(tmp_path / name)
        assert loaded_cfg == cfg and loaded_w2v2 == w2v2, name
        assert loaded_state.keys() == state.keys()
        assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
        fresh = Wav2Vec2Model(loaded_cfg, loaded_w2v2)
        fresh.load_state_dict(loaded_state, strict=True)


def test_fairseq_finetuned_prefix_and_defaults():
    cfg, w2v2 = small_config(True)
    state = to_fairseq_state(Wav2Vec2Model(cfg, w2v2).state_dict(), True)
    finetuned = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()}
    finetuned["w2v_encoder.proj.weight"] = torch.zeros(3, 48)
    plain, fine = from_fairseq_state_dict(state, cfg), from_fairseq_state_dict(finetuned, cfg)
    assert fine.keys() == plain.keys() and all(torch.equal(fine[k], v) for k, v in plain.items())
    # Keys absent from a fairseq config mean fairseq's defaults, not ours.
    defaults, w2v2_defaults = model_config_from_fairseq({"encoder_layers": 2})
    assert (
        w2v2_defaults.final_dim == 0
        and defaults.dropout_input == 0.0
        and defaults.extractor_mode == "group_norm"
    )
    assert defaults.conv_feature_layers == ModelConfig().conv_feature_layers
    with pytest.raises(ValueError, match="target_glu"):
        model_config_from_fairseq({"target_glu": True})
    with pytest.raises(KeyError, match="unexpected fairseq parameter"):
        from_fairseq_state_dict({"encoder.foo.weight": torch.zeros(1)}, cfg)


def test_fairseq_meters_in_extra_state_load(tmp_path, monkeypatch):
    # Real fairseq checkpoints pickle fairseq.logging.meters objects in extra_state["metrics"].
    import sys
    import types

    module = types.ModuleType("fairseq.logging.meters")

    class AverageMeter:
        def __init__(self):
            self.val, self.count = 1.5, 3

    AverageMeter.__module__, AverageMeter.__qualname__ = module.__name__, "AverageMeter"
    module.AverageMeter = AverageMeter
    for name in ("fairseq", "fairseq.logging", "fairseq.logging.meters"):
        monkeypatch.setitem(sys.modules, name, module if name.endswith("meters") else types.ModuleType(name))
    cfg, w2v2 = small_config(True)
    state = to_fairseq_state(Wav2Vec2Model(cfg, w2v2).state_dict(), True)
    ckpt = {
        "cfg": {"model": fairseq_model_cfg(cfg, w2v2)},
        "model": state,
        "extra_state": {"m": AverageMeter()},
    }
    torch.save(ckpt, tmp_path / "meters.pt")
    monkeypatch.delitem(sys.modules, "fairseq.logging.meters")  # loading must not need fairseq
    loaded_cfg, loaded_w2v2, _ = load_fairseq_checkpoint(tmp_path / "meters.pt")
    assert loaded_cfg == cfg and loaded_w2v2 == w2v2


class NotAllowed:
    """A custom class pickled into a checkpoint: loading must refuse it."""

    def __init__(self):
        self.payload = 1


def test_fairseq_checkpoint_with_disallowed_global_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {"model": {}}, "model": {}, "extra_state": NotAllowed()}, path)
    with pytest.raises(UnsafeCheckpointError, match="NotAllowed"):
        load_fairseq_checkpoint(path)
