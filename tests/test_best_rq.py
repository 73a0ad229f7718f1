"""BEST-RQ (xlsr.objectives.best_rq): targets, the frozen quantizer, the loss, and the objective seam.

The distributed and end-to-end runs (DDP, FSDP2, ZeRO, exact resume, loss below chance) are in
tests/test_best_rq_training.py.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from xlsr.config import BestRQConfig, TrainConfig, load_config
from xlsr.config.presets import tiny
from xlsr.objectives import OBJECTIVES, build_objective
from xlsr.objectives.best_rq import BestRQModel, BestRQObjective, log_mel

CODEBOOK = BestRQConfig(codebook_size=64, mask_prob=0.5, mask_length=5)


def model(seed: int = 0, objective: BestRQConfig = CODEBOOK) -> BestRQModel:
    return BestRQModel(tiny(), objective, init_seed=seed)


def objective(**changes) -> BestRQObjective:
    cfg = TrainConfig(model=tiny())
    cfg.objective.name = "best_rq"
    cfg.objective.best_rq = dataclasses.replace(CODEBOOK, **changes)
    return BestRQObjective(cfg)


@pytest.mark.parametrize("num_samples", [16_000, 16_001, 16_319, 16_320, 16_479, 23_999])
def test_one_target_per_encoder_frame(num_samples):
    m = model().eval()
    with torch.no_grad():
        logits, codes = m(torch.randn(2, num_samples))
    frames = tiny().num_frames(num_samples)
    assert codes.shape == (2, frames, 1) and logits.shape == (2, frames, 1, 64)
    assert codes.dtype == torch.long and codes.min() >= 0 and codes.max() < 64


def test_mel_frames_cover_the_encoder_frames_samples():
    """Log-mel frame j covers samples [160 j, 160 j + 400): two per 320-sample encoder frame."""
    audio = torch.zeros(1, 4000)
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(400) / 16_000)  # deterministic, flat envelope
    audio[0, 1600:2000] = tone  # only mel frame 10 sees all of it, under its whole window
    energy = log_mel(audio, 80).exp().sum(-1)[0]
    assert energy.argmax().item() == 10 and energy.shape[0] == (4000 - 400) // 160 + 1


def test_a_padded_utterance_gets_the_targets_it_gets_alone():
    m = model().eval()
    short, long = torch.randn(1, 12_000), torch.randn(1, 20_000)
    batch = torch.zeros(2, 20_000)
    batch[0, :12_000], batch[1] = short[0], long[0]
    padding = torch.zeros(2, 20_000, dtype=torch.bool)
    padding[0, 12_000:] = True
    with torch.no_grad():
        _, together = m(batch, padding)
        _, alone = m(short)
    frames = tiny().num_frames(12_000)
    assert torch.equal(together[0, :frames], alone[0])


def test_the_quantizer_is_frozen_random_and_seeded():
    m = model(seed=3)
    assert not any("quantizer" in name for name, _ in m.named_parameters())
    assert {"quantizer.projection", "quantizer.codebooks"} <= set(m.state_dict())  # saved with the model
    codebooks, projection = m.quantizer.codebooks, m.quantizer.projection
    torch.testing.assert_close(codebooks.norm(dim=-1), torch.ones(1, 64))
    bound = math.sqrt(6 / sum(projection.shape))  # Xavier uniform
    assert projection.abs().max() <= bound and projection.abs().max() > 0.9 * bound
    assert torch.equal(model(seed=3).quantizer.codebooks, codebooks)
    assert not torch.equal(model(seed=4).quantizer.codebooks, codebooks)


def test_training_never_changes_the_quantizer():
    m = model()
    frozen = {k: v.clone() for k, v in m.state_dict().items() if k.startswith("quantizer.")}
    obj = objective()
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        prepared = obj.prepare(m, torch.randn(2, 16_000), None, generator)
        loss, _ = obj.loss(m, prepared)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in frozen.items())


def test_loss_is_the_cross_entropy_of_the_masked_frames_codes():
    m, obj = model().eval(), objective()
    source = torch.randn(2, 16_000)
    prepared = obj.prepare(m, source, None, torch.Generator().manual_seed(1))
    masks = prepared.draws["mask_indices"]
    with torch.no_grad():
        loss, metrics = obj.loss(m, prepared)
        logits, codes = m(source, None, mask_indices=masks)
    expected = F.cross_entropy(logits[masks].flatten(0, 1), codes[masks].flatten(), reduction="sum")
    torch.testing.assert_close(loss, expected)
    assert metrics["sample_size"] == prepared.sample_size == masks.sum()
    # at initialisation the head is near uniform: the loss per frame is near chance, log(codebook size)
    assert abs(loss.item() / masks.sum().item() - math.log(64)) < 0.5


def test_masks_follow_the_objective_section():
    frames = tiny().num_frames(48_000)
    m = model()
    dense = objective(mask_prob=0.8, mask_length=10).prepare(
        m, torch.randn(4, 48_000), None, torch.Generator()
    )
    sparse = objective(mask_prob=0.1, mask_length=10).prepare(
        m, torch.randn(4, 48_000), None, torch.Generator()
    )
    assert dense.sample_size / (4 * frames) > 0.45 > 0.2 > sparse.sample_size / (4 * frames)


def test_metric_spec_reduces_sums_and_names_the_best_key():
    spec = objective().spec
    sums = {"loss_prediction": 600.0, "correct": 30.0, "sample_size": 100.0, "code_perplexity": 40.0}
    metrics = spec.reduce(sums, passes=4)
    assert metrics == pytest.approx(
        {"loss_prediction": 6 / math.log(2), "accuracy": 0.3, "code_perplexity": 10.0}
    )
    assert spec.best_key == "valid_loss_prediction" and spec.chance_bits == 6.0


@pytest.mark.parametrize(
    ("metrics", "past_warmup", "expected"),
    [
        ({"loss_prediction": 6.0, "code_perplexity": 30.0}, True, [("at_chance", "chance")]),
        ({"loss_prediction": 6.0, "code_perplexity": 30.0}, False, []),
        ({"loss_prediction": 3.0, "code_perplexity": 30.0}, True, []),
        ({"loss_prediction": 3.0, "code_perplexity": 0.5}, True, [("codebook", "almost no codes")]),
    ],
)
def test_alarms(metrics, past_warmup, expected):
    alarms = objective().alarms(metrics, past_warmup)
    assert len(alarms) == len(expected)
    assert all(a.signal == s and e in a.message for (s, e), a in zip(expected, alarms, strict=True))


def test_recipes_name_their_objective():
    assert set(OBJECTIVES) == {"wav2vec2", "best_rq"}
    tiny_best_rq = load_config("configs/tiny_best_rq.yaml")
    assert isinstance(build_objective(tiny_best_rq), BestRQObjective)
    big = load_config("configs/best_rq_300m.yaml")
    assert big.objective.best_rq.codebook_size == 8192 and big.model.encoder_layers == 24
    assert (
        build_objective(big).flops_per_crop(320_000)
        > build_objective(load_config("configs/xlsr_300m.yaml")).flops_per_crop(320_000) * 0.9
    )
