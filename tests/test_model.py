"""Model and objective: sizes, padding invariance, gradients, logits, temperature, no host syncs."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from small_models import small_config

from xlsr.config import Wav2Vec2Config, load_config
from xlsr.model import Wav2Vec2Model, compute_mask_indices, pretraining_loss, sample_negatives
from xlsr.model.wav2vec2 import GumbelVectorQuantizer, contrastive_logits

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --------------------------------------------------------------------------------------------------
# Sizes and shapes


@pytest.mark.parametrize(
    ("recipe", "millions"),
    [("base", 95.04), ("large", 317.38), ("xlsr_300m", 317.39), ("xlsr_1b", 965.51), ("xlsr_2b", 2162.93)],
)
def test_parameter_counts_match_reference(recipe: str, millions: float):
    # Pretraining parameters (docs/model.md, "The family"): everything, quantizer and heads included.
    cfg = load_config(CONFIGS / f"{recipe}.yaml")
    with torch.device("meta"):
        model = Wav2Vec2Model(cfg.model, cfg.objective.wav2vec2)
    count = sum(p.numel() for p in model.parameters())
    assert count / 1e6 == pytest.approx(millions, abs=0.01)


def test_tiny_recipe_is_small():
    with torch.device("meta"):
        cfg = load_config(CONFIGS / "tiny.yaml")
        model = Wav2Vec2Model(cfg.model, cfg.objective.wav2vec2)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_frame_lengths():
    model = Wav2Vec2Model(*small_config(False))
    lengths = model.frame_lengths(torch.tensor([32_000, 250_000, 320_000, 400]))
    assert lengths.tolist() == [99, 781, 999, 1]


def test_meta_build_then_init_weights():
    cfg = small_config(True)
    with torch.device("meta"):
        model = Wav2Vec2Model(*cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.quantizer.curr_temp == 2.0
    out = model(torch.randn(2, 4000), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.logits[out.mask_indices][:, 0]).all()


def test_init_follows_fairseq():
    torch.manual_seed(0)
    base = load_config(CONFIGS / "base.yaml")
    model = Wav2Vec2Model(dataclasses.replace(base.model, encoder_layers=2), base.objective.wav2vec2)
    # Positional conv: N(0, sqrt(4/(k·D))) *before* weight norm, so the effective weight keeps that std.
    pos = model.encoder.pos_conv.conv
    assert pos.weight.std().item() == pytest.approx(math.sqrt(4 / (128 * 768)), rel=5e-3)
    assert pos.parametrizations.weight.original0.shape == (1, 1, 128)
    # weight norm's g starts as the norm of each kernel slice: sqrt(48 · 4 / 128) = sqrt(1.5) in expectation
    assert pos.parametrizations.weight.original0.mean().item() == pytest.approx(math.sqrt(1.5), rel=3e-3)
    assert (pos.bias == 0).all()
    layer = model.encoder.layers[0]
    assert layer.fc1.weight.std().item() == pytest.approx(0.02, rel=5e-3)
    assert (layer.self_attn.q_proj.bias == 0).all()
    assert model.quantizer.weight_proj.weight.std().item() == pytest.approx(1.0, rel=1e-2)
    assert model.mask_emb.min() >= 0 and model.mask_emb.max() < 1
    conv0 = model.feature_extractor.conv_layers[0].conv.weight
    assert conv0.std().item() == pytest.approx(math.sqrt(2 / 10), rel=0.04)  # kaiming normal, fan_in 10


# --------------------------------------------------------------------------------------------------
# Padding invariance


@pytest.mark.parametrize("layer_norm", [False, True], ids=["group_norm_post_ln", "layer_norm_pre_ln"])
def test_padded_batch_equals_utterances_alone(layer_norm: bool):
    torch.manual_seed(0)
    model = Wav2Vec2Model(*small_config(layer_norm)).eval()
    g = torch.Generator().manual_seed(1)
    lengths = [8000, 5600, 3300]
    waves = [torch.randn(n, generator=g) for n in lengths]
    num_samples = max(lengths)
    frames = model.frame_lengths(torch.tensor(lengths))
    num_frames = int(frames.max())

    alone = []
    for wave, n_frames in zip(waves, frames.tolist(), strict=True):
        mask = compute_mask_indices((1, n_frames), None, 0.5, 4, 2, False, generator=g)
        neg = sample_negatives(mask, 10, g)
        hidden, _ = model.encode(wave[None], mask_indices=mask)
        out = model(wave[None], mask_indices=mask, negative_indices=neg)
        alone.append((mask, neg, hidden, out.logits))

    # Pad with garbage, not zeros: padding must not leak into valid frames.
    source = torch.randn(len(waves), num_samples, generator=g) * 3
    padding = torch.arange(num_samples) >= torch.tensor(lengths)[:, None]
    masks = torch.zeros(len(waves), num_frames, dtype=torch.bool)
    negs = torch.zeros(len(waves), num_frames, 10, dtype=torch.long)
    for i, (wave, (mask, neg, _, _)) in enumerate(zip(waves, alone, strict=True)):
        source[i, : len(wave)] = wave
        masks[i, : mask.shape[1]] = mask[0]
        negs[i, : mask.shape[1]] = neg[0]

    hidden, frame_padding = model.encode(source, padding, mask_indices=masks)
    out = model(source, padding, mask_indices=masks, negative_indices=negs)
    assert torch.equal(frame_padding, torch.arange(num_frames) >= frames[:, None])
    for i, (_, _, hidden_i, logits_i) in enumerate(alone):
        n = hidden_i.shape[1]
        torch.testing.assert_close(hidden[i, :n], hidden_i[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[i, :n], logits_i[0], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients


def _train_step(model: Wav2Vec2Model, loss_cfg: Wav2Vec2Config, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    source = torch.randn(3, 6000, generator=g)
    padding = torch.arange(6000) >= torch.tensor([6000, 5000, 4200])[:, None]
    out = model(source, padding, generator=g)
    loss, _, _ = pretraining_loss(out, loss_cfg)
    loss.backward()
    return loss


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    for layer_norm in (False, True):
        model = Wav2Vec2Model(*small_config(layer_norm, feature_grad_mult=0.1)).train()
        _train_step(model, Wav2Vec2Config(diversity_weight=0.1, feature_penalty_weight=10.0))
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert param.grad.abs().sum() > 0, name
            assert torch.isfinite(param.grad).all(), name


def test_feature_grad_mult_scales_and_freezes():
    def conv_grad(mult: float) -> torch.Tensor | None:
        torch.manual_seed(0)
        model = Wav2Vec2Model(*small_config(False, feature_grad_mult=mult)).eval()
        _train_step(model, Wav2Vec2Config())
        return model.feature_extractor.conv_layers[0].conv.weight.grad

    full, tenth = conv_grad(1.0), conv_grad(0.1)
    torch.testing.assert_close(tenth, full * 0.1, rtol=1e-4, atol=1e-5 * tenth.abs().max().item())
    assert conv_grad(0.0) is None


# --------------------------------------------------------------------------------------------------
# Logits, loss, quantizer


def test_gram_logits_equal_explicit_cosine():
    g = torch.Generator().manual_seed(0)
    bsz, num_frames, dim, k = 2, 30, 16, 7
    context = torch.randn(bsz, num_frames, dim, generator=g)
    targets = torch.randn(bsz, num_frames, dim, generator=g)
    codes = torch.arange(bsz * num_frames).view(bsz, num_frames, 1)  # all distinct: no −inf
    offset = torch.randint(1, num_frames, (bsz, num_frames, k), generator=g)  # never the frame itself
    neg = (torch.arange(num_frames)[None, :, None] + offset) % num_frames
    logits = contrastive_logits(context, targets, codes, neg, 0.1)
    candidates = torch.cat([targets.unsqueeze(2), targets[torch.arange(bsz)[:, None, None], neg]], dim=2)
    expected = torch.cosine_similarity(context.unsqueeze(2), candidates, dim=-1) / 0.1
    assert logits.shape == (bsz, num_frames, k + 1) and logits.dtype == torch.float32
    torch.testing.assert_close(logits * 0.1, expected * 0.1, atol=1e-6, rtol=0)


def test_negatives_with_equal_codes_are_minus_inf():
    context = torch.randn(1, 4, 8)
    targets = torch.randn(1, 4, 8)
    codes = torch.tensor([[[0, 1], [0, 1], [0, 2], [3, 1]]])  # frames 0 and 1 share every code
    neg = torch.tensor([[[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]])
    logits = contrastive_logits(context, targets, codes, neg, 0.1)
    is_inf = torch.isneginf(logits)
    expected = torch.zeros_like(is_inf)
    expected[0, 0, 1] = expected[0, 1, 1] = True
    assert torch.equal(is_inf, expected)


def test_loss_matches_fairseq_criterion():
    torch.manual_seed(0)
    model = Wav2Vec2Model(*small_config(True)).train()
    g = torch.Generator().manual_seed(3)
    out = model(torch.randn(2, 5000, generator=g), generator=g)
    loss_cfg = Wav2Vec2Config(diversity_weight=0.1, feature_penalty_weight=10.0)
    loss, sample_size, metrics = pretraining_loss(out, loss_cfg)

    rows = out.logits[out.mask_indices]  # fairseq's (B·T_m, K+1)
    n = rows.shape[0]
    contrastive = F.cross_entropy(rows, torch.zeros(n, dtype=torch.long), reduction="sum")
    diversity = 0.1 * (out.num_vars - out.prob_perplexity) / out.num_vars * n
    penalty = 10.0 * out.features_pen * n
    assert sample_size.item() == n
    torch.testing.assert_close(loss, contrastive + diversity + penalty)
    torch.testing.assert_close(metrics["loss_contrastive"], contrastive)
    torch.testing.assert_close(metrics["loss_diversity"], diversity.detach())
    torch.testing.assert_close(metrics["loss_feature_penalty"], penalty.detach())
    is_max, is_min = rows.argmax(-1) == 0, rows.argmin(-1) == 0
    assert metrics["correct"].item() == (is_max.sum() - (is_max & is_min).sum()).item()
    assert set(metrics) == {
        "loss_contrastive", "loss_diversity", "loss_feature_penalty", "correct", "sample_size",
        "prob_perplexity", "code_perplexity",
    }  # fmt: skip
    assert all(not v.requires_grad for v in metrics.values())


def test_quantizer_perplexities_use_masked_frames_only():
    torch.manual_seed(0)
    quantizer = GumbelVectorQuantizer(8, 16, 2, 16, (2.0, 0.5, 0.999995)).eval()
    quantizer.init_weights()  # the model initialises its parts; alone, the quantizer is uninitialised
    x = torch.randn(2, 10, 8)
    weights = torch.zeros(2, 10)
    weights[0, :4] = 1
    _, codes, prob_ppl, code_ppl = quantizer(x, weights)
    _, _, prob_sub, code_sub = quantizer(x[:1, :4], torch.ones(1, 4))
    torch.testing.assert_close(prob_ppl, prob_sub)
    torch.testing.assert_close(code_ppl, code_sub)
    logits = quantizer.weight_proj(x).view(2, 10, 2, 16)
    assert torch.equal(codes, logits.argmax(-1))


def test_gumbel_training_is_straight_through_one_hot():
    torch.manual_seed(0)
    quantizer = GumbelVectorQuantizer(8, 16, 2, 16, (2.0, 0.5, 0.999995)).train()
    quantizer.init_weights()  # the model initialises its parts; alone, the quantizer is uninitialised
    x = torch.randn(2, 10, 8, requires_grad=True)
    quantized, codes, _, _ = quantizer(x, torch.ones(2, 10), torch.Generator().manual_seed(0))
    codebook = quantizer.vars.view(2, 16, 8)
    expected = torch.cat([codebook[0][codes[..., 0]], codebook[1][codes[..., 1]]], dim=-1)
    assert torch.equal(quantized, expected)  # forward is exactly the selected codewords
    quantized.sum().backward()
    assert x.grad.abs().sum() > 0  # backward goes through the soft distribution


@pytest.mark.parametrize(
    ("floor", "update", "temp"),
    [(0.5, 32_000, 1.704), (0.5, 100_000, 1.213), (0.5, 250_000, 0.573), (0.5, 400_000, 0.5),
     (0.1, 400_000, 0.271), (0.1, 600_000, 0.1), (0.5, 0, 2.0)],
)  # fmt: skip
def test_gumbel_temperature_schedule(floor: float, update: int, temp: float):
    model = Wav2Vec2Model(*small_config(True, latent_temp=(2.0, floor, 0.999995)))
    model.set_num_updates(update)
    assert model.quantizer.curr_temp == pytest.approx(temp, abs=5e-4)


# --------------------------------------------------------------------------------------------------
# Performance contract: no host syncs in forward + loss + backward


def test_no_host_sync_ops():
    torch.manual_seed(0)
    model = Wav2Vec2Model(*small_config(False, feature_grad_mult=0.1, dropout=0.1)).train()
    g = torch.Generator().manual_seed(0)
    source = torch.randn(3, 6000)
    padding = torch.arange(6000) >= torch.tensor([6000, 5000, 4200])[:, None]
    model(source, padding, generator=g)  # warm-up outside the profiler
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        out = model(source, padding, generator=g, layer_keep=[True, False])
        loss, sample_size, _ = pretraining_loss(out, Wav2Vec2Config())
        (loss / sample_size).backward()
    names = {event.name for event in prof.events()}
    assert "aten::scaled_dot_product_attention" in names  # the profiler saw the model
    forbidden = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"}
    assert not names & forbidden, names & forbidden


def test_init_depends_on_the_seed_alone_unit_by_unit():
    """What lets the engine initialise a sharded model layer by layer, on any world size."""
    from xlsr.model.encoder import TransformerLayer, init_generator

    cfg, w2v2 = small_config(True)
    full = Wav2Vec2Model(cfg, w2v2, init_seed=5)
    assert all(
        torch.equal(a, b)
        for a, b in zip(full.parameters(), Wav2Vec2Model(cfg, w2v2, init_seed=5).parameters(), strict=True)
    )
    alone = TransformerLayer(cfg)
    alone.init_weights(init_generator(5, 2))
    for (name, a), (_, b) in zip(
        full.encoder.layers[1].named_parameters(), alone.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    root = Wav2Vec2Model(dataclasses.replace(cfg, encoder_layers=0), w2v2, init_seed=5)
    root_params = dict(root.named_parameters())
    for name, value in full.named_parameters():
        if not name.startswith("encoder.layers."):
            assert torch.equal(value, root_params[name]), name
    other = Wav2Vec2Model(cfg, w2v2, init_seed=6)
    assert not torch.equal(other.mask_emb, full.mask_emb)


def test_zero_final_and_latent_dims_mean_their_defaults_everywhere():
    """final_dim/latent_dim 0 mean 'model dim' / 'final dim' (fairseq): same model, same FLOP count."""
    from xlsr.objectives.wav2vec2 import train_flops_per_crop

    explicit = small_config(True, final_dim=48, latent_dim=48)
    implicit = small_config(True, final_dim=0, latent_dim=0)
    assert (implicit[1].output_dim(48), implicit[1].codevector_dim(48)) == (48, 48)
    shapes = {n: p.shape for n, p in Wav2Vec2Model(*explicit).named_parameters()}
    assert {n: p.shape for n, p in Wav2Vec2Model(*implicit).named_parameters()} == shapes
    assert train_flops_per_crop(*implicit, 32_000) == train_flops_per_crop(*explicit, 32_000)
