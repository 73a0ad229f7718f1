"""Decode one audio file to float32 mono at the training sample rate, or say precisely why not.

Decoding uses `soundfile` (libsndfile: wav, flac, ogg vorbis/opus, mp3). torchaudio is used only for
resampling: `torchaudio.load` needs torchcodec since torchaudio 2.9, `torchaudio.functional.resample`
does not. Every way a file can be unusable is an `AudioError` with a short machine-readable `reason`,
so the shard writer can skip and count bad files instead of failing a multi-hour job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf

REASONS = ("not_found", "unreadable", "empty", "nan", "too_short", "silent")
# Below this peak amplitude (about -80 dBFS) a file holds no usable signal.
SILENCE_PEAK = 1e-4


class AudioError(Exception):
    """A file that cannot be used; `reason` is one of `REASONS`, the message says the details."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown AudioError reason {reason!r}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodedAudio:
    """Mono float32 samples at the target rate, plus what the source file looked like."""

    samples: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int


def decode_file(
    path: str | os.PathLike, target_sr: int = 16000, min_seconds: float = 0.25, drop_silent: bool = False
) -> DecodedAudio:
    """Read, downmix, resample and validate `path`; raise `AudioError` for unusable audio."""
    name = os_path(path)
    if not os.path.lexists(name):  # a listed file that is not there: say so, not libsndfile's "System error"
        raise AudioError("not_found", f"{path}: file not found")
    try:
        data, source_sr = sf.read(name, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types for broken or unsupported files
        # LibsndfileError's `error_string` is the reason without the (repr of the) file name.
        reason = getattr(exc, "error_string", None) or exc
        raise AudioError("unreadable", f"{path}: {type(exc).__name__}: {reason}") from None
    frames, channels = data.shape
    if frames == 0:
        raise AudioError("empty", f"{path}: no audio frames")
    if not np.isfinite(data).all():
        raise AudioError("nan", f"{path}: contains NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
    samples = resample(mono, source_sr, target_sr)
    min_samples = round(min_seconds * target_sr)
    if len(samples) < min_samples:
        raise AudioError(
            "too_short", f"{path}: {len(samples) / target_sr:.3f} s is shorter than {min_seconds} s"
        )
    if drop_silent and float(np.abs(samples).max()) < SILENCE_PEAK:
        raise AudioError("silent", f"{path}: peak amplitude below {SILENCE_PEAK}")
    return DecodedAudio(np.ascontiguousarray(samples), target_sr, int(source_sr), int(channels))


def os_path(path: str | os.PathLike) -> bytes:
    """The name's bytes as the OS sees them. soundfile encodes a `str` name strictly as UTF-8, so a name
    that is not UTF-8 (kept by Python as surrogate escapes) is handed to it as bytes."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # not a name any file can have (a lone surrogate from a manifest)
        raise AudioError("unreadable", f"{path}: not a valid file name") from None


def resample(samples: np.ndarray, source_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited (windowed sinc) resampling of a 1-D float32 array."""
    if source_sr == target_sr:
        return samples
    import torch  # imported here so that planning and tests that never resample stay light
    import torchaudio.functional

    waveform = torch.from_numpy(np.ascontiguousarray(samples))
    return torchaudio.functional.resample(waveform, source_sr, target_sr).numpy()
