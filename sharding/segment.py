"""Cut long recordings at pauses into segments of at most `max_seconds`.

A one-hour VoxPopuli session or a ten-minute BABEL call is useless as one utterance: training crops
each draw to `data.max_sample_size` (20 s for XLS-R), so most of it would never be seen, and
upsampling by stored hours would overweight it. Such recordings are cut at shard time.

**Where to cut.** From the start of what is left, the cut goes at the quietest point between
`max_seconds / 2` and `max_seconds` ahead: the minimum of the frame energy (10 ms frames) smoothed
over 100 ms, so a cut lands inside a pause whenever the window holds one, never mid-word. The window
also stops `max_seconds / 2` before the end, so no piece is shorter than `max_seconds / 2` (unless
the whole recording is) and none is longer than `max_seconds`. The cut points depend on the audio
only: re-sharding gives the same segments.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_SECONDS = 30.0
MIN_MAX_SECONDS = 1.0  # the smallest --max-seconds: a window of frames to choose a cut from
FRAME_SECONDS = 0.010
SMOOTHING_SECONDS = 0.100
_BLOCK_FRAMES = 65536


def segment_bounds(samples: np.ndarray, sample_rate: int, max_seconds: float | None) -> list[tuple[int, int]]:
    """(offset, length) in samples of each segment, in order, covering every sample once."""
    total = len(samples)
    max_len = int(max_seconds * sample_rate) if max_seconds else 0
    if not max_len or total <= max_len:
        return [(0, total)]
    frame = max(1, int(FRAME_SECONDS * sample_rate))
    energy = _smoothed_energy(samples, frame, max(1, round(SMOOTHING_SECONDS / FRAME_SECONDS)))
    bounds, start = [], 0
    while total - start > max_len:
        low = start + max_len // 2
        high = min(start + max_len, total - max_len // 2)
        cut = _quietest(energy, frame, low, high)
        bounds.append((start, cut - start))
        start = cut
    bounds.append((start, total - start))
    return bounds


def _smoothed_energy(samples: np.ndarray, frame: int, width: int) -> np.ndarray:
    """Mean square per frame, averaged over `width` frames centred on each. Computed in blocks, so an
    hour-long recording costs a few MB beyond its samples."""
    frames = len(samples) // frame
    blocks = samples[: frames * frame].reshape(frames, frame)
    power = np.empty(frames, dtype=np.float64)
    for start in range(0, frames, _BLOCK_FRAMES):
        block = blocks[start : start + _BLOCK_FRAMES]
        power[start : start + len(block)] = np.einsum("ij,ij->i", block, block) / frame
    if frames < width:
        return power
    return np.convolve(power, np.ones(width) / width, mode="same")


def _quietest(energy: np.ndarray, frame: int, low: int, high: int) -> int:
    """The sample position in [low, high] at the centre of the quietest frame there; the latest one
    among equals, so segments are as long as allowed."""
    first = -(-low // frame)
    last = min(high // frame - 1, len(energy) - 1)
    if last < first:
        return high
    window = energy[first : last + 1]
    position = first + len(window) - 1 - int(np.argmin(window[::-1]))
    return min(max(position * frame + frame // 2, low), high)
