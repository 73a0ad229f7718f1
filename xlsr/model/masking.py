"""Span masking and negative sampling with fairseq semantics, vectorised on the device.

Everything works on the fixed (B, T) grid with random keys and ranks instead of per-row Python loops, so
the training step never waits on the host (no ``.item()``, ``nonzero`` or boolean indexing). Distributions
match fairseq's ``compute_mask_indices`` (``fairseq/data/data_utils.py``) and ``sample_negatives``
(``fairseq/models/wav2vec/wav2vec2.py``); docs/model.md describes both. The random streams do not match
(fairseq draws from numpy, and HEAD seeds from OS entropy), so parity tests inject masks and negatives.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _rank_of_keys(keys: Tensor) -> Tensor:
    """Rank (0 = smallest) of every entry along the last dim."""
    order = keys.argsort(dim=-1)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(keys.shape[-1], device=keys.device).expand_as(order))
    return ranks


def _keep_random_subset(mask: Tensor, keep: Tensor, generator: torch.Generator | None) -> Tensor:
    """Keep a uniformly random subset of ``keep[b]`` True entries of each row of ``mask``."""
    keys = _rand(tuple(mask.shape), generator, mask.device).masked_fill(~mask, 2.0)
    return mask & (_rank_of_keys(keys) < keep.unsqueeze(-1))


def compute_mask_indices(
    shape: tuple[int, int],
    padding_mask: Tensor | None,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    require_same_masks: bool = True,
    *,
    lengths: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """fairseq ``compute_mask_indices`` for mask_type="static", no_overlap=False (arXiv 2006.11477 §3.1).

    ``padding_mask`` (B, T) is True at padded frames; alternatively pass valid ``lengths`` (B,). Returns a
    (B, T) bool mask on the device of the inputs (or ``device``, or the generator's device).
    """
    bsz, num_frames = shape
    if padding_mask is not None:
        device = padding_mask.device
        sz = num_frames - padding_mask.long().sum(-1)
    elif lengths is not None:
        device = lengths.device
        sz = lengths.long()
    else:
        device = torch.device(device) if device is not None else (generator.device if generator else None)
        sz = torch.full((bsz,), num_frames, dtype=torch.long, device=device)

    # n = max(floor(p·sz/L + u), min_masks): probabilistic rounding, one u per row (num_mask_ver=2).
    u = _rand((bsz,), generator, sz.device)
    num_spans = (mask_prob * sz / mask_length + u).floor().long().clamp_min(min_masks)
    # Starts are drawn from [0, sz - L); fairseq shrinks the range to n + 1 when that is too small.
    draw_range = torch.where(sz - mask_length <= num_spans, num_spans + 1, sz - mask_length)

    # n distinct starts without replacement: the n smallest random keys among the allowed positions.
    width = num_frames + min_masks + 1  # the range can exceed T on tiny rows (starts >= sz are clipped below)
    positions = torch.arange(width, device=sz.device)
    keys = _rand((bsz, width), generator, sz.device)
    keys = keys.masked_fill(positions >= draw_range.unsqueeze(-1), 2.0)
    starts = (_rank_of_keys(keys) < num_spans.unsqueeze(-1))[:, :num_frames]

    # Frame t is covered when a start lies in (t - L, t]: a windowed count over the cumulative sum.
    counts = starts.long().cumsum(-1)
    lagged = torch.nn.functional.pad(counts, (mask_length, 0))[:, :num_frames]
    mask = (counts - lagged) > 0
    mask &= positions[:num_frames] < sz.unsqueeze(-1)

    if require_same_masks:
        # Frame-level equalisation to the row minimum, as fairseq: punches holes inside spans.
        mask = _keep_random_subset(mask, mask.sum(-1).min().expand(bsz), generator)
    return mask


def sample_negatives(
    mask_indices: Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> Tensor:
    """K time indices per frame, drawn uniformly with replacement from the *other* masked frames of its row.

    fairseq draws randint(0, m - 1) over the m masked frames and adds 1 at or above the frame's own rank
    (fairseq ``Wav2Vec2Model.sample_negatives``). Values at unmasked frames are valid indices but meaningless.
    Returns (B, T, K) long.
    """
    bsz, num_frames = mask_indices.shape
    device = mask_indices.device
    num_masked = mask_indices.long().sum(-1, keepdim=True)  # (B, 1)
    own_rank = mask_indices.long().cumsum(-1) - 1  # rank of each masked frame among its row's masked frames
    # Integer modulo of a 62-bit draw: uniform up to a bias of m / 2^62.
    draws = torch.randint(0, 1 << 62, (bsz, num_frames, num_negatives), generator=generator, device=device)
    others = (num_masked - 1).clamp_min(1).unsqueeze(-1)
    rank = draws % others
    rank = rank + (rank >= own_rank.unsqueeze(-1)).long()
    rank = torch.minimum(rank, (num_masked - 1).clamp_min(0).unsqueeze(-1))
    # Time index of the j-th masked frame of each row: masked positions first, in order.
    masked_positions = (~mask_indices).to(torch.uint8).argsort(dim=-1, stable=True)
    return masked_positions.gather(1, rank.view(bsz, -1)).view(bsz, num_frames, num_negatives)
