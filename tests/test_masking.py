"""Property tests for span masking and negative sampling with fairseq semantics (docs/model.md)."""

from __future__ import annotations

import pytest
import torch

from xlsr.model.masking import compute_mask_indices, sample_negatives


def _mean_run(mask: torch.Tensor) -> torch.Tensor:
    m = mask.long()
    run_starts = (m[:, 1:] > m[:, :-1]).sum() + m[:, 0].sum()
    return m.sum() / run_starts


def _stats(bsz: int, num_frames: int, draws: int, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    fractions, runs = [], []
    for _ in range(draws):
        mask = compute_mask_indices((bsz, num_frames), None, 0.65, 10, 2, True, generator=g)
        fractions.append(mask.float().mean())
        runs.append(_mean_run(mask))
    return torch.stack(fractions).mean().item(), torch.stack(runs).mean().item()


def test_single_row_matches_fairseq_statistics():
    fraction, run = _stats(1, 781, 400)
    assert fraction == pytest.approx(0.489, abs=0.006)
    assert run == pytest.approx(14.8, abs=0.25)


def test_equalised_batch_matches_fairseq_statistics():
    fraction, run = _stats(8, 781, 150)
    assert fraction == pytest.approx(0.457, abs=0.006)
    assert run == pytest.approx(7.8, abs=0.25)


def test_no_equalisation_keeps_spans():
    g = torch.Generator().manual_seed(1)
    fracs = [
        compute_mask_indices((8, 781), None, 0.65, 10, 2, False, generator=g).float().mean()
        for _ in range(100)
    ]
    assert torch.stack(fracs).mean().item() == pytest.approx(0.489, abs=0.006)


def test_never_masks_padding_and_equal_counts():
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([781, 500, 120, 781, 333])
    padding = torch.arange(781) >= lengths[:, None]
    for _ in range(50):
        mask = compute_mask_indices((5, 781), padding, 0.65, 10, 2, True, generator=g)
        assert not (mask & padding).any()
        counts = mask.sum(-1)
        assert (counts == counts[0]).all() and counts[0] > 0
    by_lengths = compute_mask_indices((5, 781), None, 0.65, 10, 2, False, lengths=lengths, generator=g)
    assert not (by_lengths & padding).any()


def test_min_masks_honoured():
    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        # p·sz/L ≈ 0.05: without min_masks most rows would get no span.
        mask = compute_mask_indices((4, 100), None, 0.005, 10, 2, False, generator=g)
        spans_start = mask.long().diff(dim=-1, prepend=torch.zeros(4, 1, dtype=torch.long)) == 1
        assert (mask.sum(-1) >= 11).all()  # two distinct starts cover at least L + 1 frames
        assert (spans_start.sum(-1) >= 1).all()


def test_short_row_range_adjustment():
    # sz - L <= n: the start range shrinks to n + 1 (fairseq), spans are clipped to sz.
    g = torch.Generator().manual_seed(4)
    padding = torch.arange(40) >= torch.tensor([40, 12, 5])[:, None]
    counts = set()
    for _ in range(200):
        mask = compute_mask_indices((3, 40), padding, 0.65, 10, 2, False, generator=g)
        assert not (mask & padding).any()  # the length-5 row's span is clipped to the row
        assert mask[2].sum() >= 4
        counts.add(int(mask[1].sum()))
    # Length 12, L = 10, 2 spans: starts in {0, 1, 2} give 11 or 12 masked frames; without the
    # adjustment starts would lie in {0, 1} and 12 could never occur.
    assert counts == {11, 12}


def test_masking_is_deterministic_with_seed():
    a = compute_mask_indices((6, 300), None, 0.65, 10, 2, True, generator=torch.Generator().manual_seed(7))
    b = compute_mask_indices((6, 300), None, 0.65, 10, 2, True, generator=torch.Generator().manual_seed(7))
    c = compute_mask_indices((6, 300), None, 0.65, 10, 2, True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    mask = a
    na = sample_negatives(mask, 10, torch.Generator().manual_seed(1))
    nb = sample_negatives(mask, 10, torch.Generator().manual_seed(1))
    assert torch.equal(na, nb)


def test_negatives_are_other_masked_frames_of_the_row():
    g = torch.Generator().manual_seed(5)
    padding = torch.arange(200) >= torch.tensor([200, 150, 90])[:, None]
    mask = compute_mask_indices((3, 200), padding, 0.65, 10, 2, True, generator=g)
    neg = sample_negatives(mask, 100, g)
    assert neg.shape == (3, 200, 100) and neg.dtype == torch.long
    t = torch.arange(200)[None, :, None]
    rows = torch.arange(3)[:, None, None].expand_as(neg)
    at_masked = mask.unsqueeze(-1).expand_as(neg)
    assert mask[rows, neg][at_masked].all()  # negatives are masked frames
    assert not (neg == t)[at_masked].any()  # never the positive itself
    assert (neg >= 0).all() and (neg < 200).all()  # valid everywhere, also at unmasked frames


def test_negatives_uniform_over_other_masked_frames():
    mask = torch.zeros(1, 60, dtype=torch.bool)
    mask[0, [3, 4, 5, 20, 21, 40, 41, 42, 43, 59]] = True
    neg = sample_negatives(mask, 20000, torch.Generator().manual_seed(6))
    frame = 20
    counts = torch.bincount(neg[0, frame], minlength=60).float()
    others = mask[0].clone()
    others[frame] = False
    assert counts[~others].sum() == 0
    expected = 20000 / others.sum()
    chi2 = ((counts[others] - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9  # chi-square, 8 dof, p = 0.0005


def test_negatives_degenerate_rows_are_valid():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 4] = True  # a single masked frame: no other frame to draw from
    neg = sample_negatives(mask, 5, torch.Generator().manual_seed(0))
    assert (neg[0, 4] == 4).all()
    assert ((neg >= 0) & (neg < 10)).all()
