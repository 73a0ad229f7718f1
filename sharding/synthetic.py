"""A small synthetic multilingual corpus for demos and tests: no downloads, no system packages.

It is not speech, but it has the structure self-supervised speech models learn from: each "language" has
its own inventory of vowel-like units (a glottal pulse train with pitch contour and jitter, shaped by
2-3 formant resonators) and fricative-like units (band-passed noise), combined into syllables of
60-250 ms and words separated by short pauses. Amounts are deliberately unbalanced, like real
multilingual data, and the files mix sample rates and formats, plus one stereo, one too-short and one
corrupt file, so that `xlsr shard` has something to resample, downmix and skip.

Formant resonators are the classic second-order (Klatt) resonators. scipy is not a dependency, so each
unit is filtered in the frequency domain with the resonators' exact frequency response, zero-padded by
a tail long enough for the impulse response to die out: the same result as running the IIR filter,
without a per-sample Python loop.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from xlsr.fileio import atomic_write_text

# Seconds of audio per language at scale 1.0 (12.5 minutes in all), deliberately unbalanced.
LANGUAGE_SECONDS = {"en": 360.0, "de": 180.0, "sw": 90.0, "yo": 60.0, "eu": 40.0, "mt": 20.0}
SAMPLE_RATES = (8000, 16000, 22050, 44100, 48000)
FORMATS = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS"}
MARKER = ".complete"
UTTERANCE_SECONDS = (1.5, 8.0)
SPEAKERS_PER_LANGUAGE = 3
_TAIL_SECONDS = 0.03  # resonator impulse responses (bandwidth >= 50 Hz) decay below -40 dB by then


@dataclass(frozen=True)
class Inventory:
    """The sound system of one synthetic language."""

    vowels: tuple[tuple[tuple[float, float], ...], ...]  # per vowel: (frequency, bandwidth) per formant
    fricatives: tuple[tuple[float, float], ...]  # per fricative: (centre frequency, bandwidth)
    onset_probability: float  # syllables that start with a fricative
    coda_probability: float  # syllables that end with one
    syllable_seconds: tuple[float, float]  # the language's tempo, within 60-250 ms


def phoneme_inventory(language: str) -> Inventory:
    """The inventory of `language`, seeded by its name: the same for every corpus seed."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(language.encode()).digest()[:8], "little"))
    vowels = []
    for _ in range(int(rng.integers(4, 9))):
        formants = [
            (rng.uniform(280, 850), rng.uniform(60, 110)),
            (rng.uniform(850, 2300), rng.uniform(80, 150)),
        ]
        if rng.random() < 0.7:  # some vowels get a third formant
            formants.append((rng.uniform(2300, 3200), rng.uniform(120, 250)))
        vowels.append(tuple(formants))
    fricatives = tuple(
        (rng.uniform(1800, 6500), rng.uniform(400, 2500)) for _ in range(int(rng.integers(2, 6)))
    )
    shortest = rng.uniform(0.06, 0.12)
    return Inventory(
        vowels=tuple(vowels),
        fricatives=fricatives,
        onset_probability=float(rng.uniform(0.3, 0.9)),
        coda_probability=float(rng.uniform(0.0, 0.4)),
        syllable_seconds=(float(shortest), float(rng.uniform(shortest + 0.06, 0.25))),
    )


# --------------------------------------------------------------------------------------------------
# Signal processing


def resonator_response(
    frequencies: np.ndarray, sample_rate: int, centre: float, bandwidth: float
) -> np.ndarray:
    """Frequency response of a Klatt resonator (unity gain at 0 Hz) at `frequencies` (Hz)."""
    centre = min(centre, 0.45 * sample_rate)  # keep every resonance below Nyquist (8 kHz files)
    r = np.exp(-np.pi * bandwidth / sample_rate)
    cos_theta = np.cos(2 * np.pi * centre / sample_rate)
    z1 = np.exp(-2j * np.pi * frequencies / sample_rate)
    return (1 - 2 * r * cos_theta + r * r) / (1 - 2 * r * cos_theta * z1 + r * r * z1 * z1)


def _filter(signal: np.ndarray, sample_rate: int, response_fn) -> np.ndarray:
    """Linear convolution with the filter whose response `response_fn(freqs)` returns; adds a tail."""
    tail = int(_TAIL_SECONDS * sample_rate)
    size = 1 << int(np.ceil(np.log2(len(signal) + tail)))
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)
    return np.fft.irfft(np.fft.rfft(signal, size) * response_fn(freqs), size)[: len(signal) + tail]


def _glottal_tilt(freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    """Glottal pulse shape and lip radiation: net -6 dB/octave, as in natural voiced speech."""
    z1 = np.exp(-2j * np.pi * freqs / sample_rate)
    return (1 - z1) / (1 - 0.95 * z1) ** 2


def _envelope(length: int, sample_rate: int, ramp_seconds: float) -> np.ndarray:
    """Raised-cosine attack and release, so units start and stop without clicks."""
    ramp = min(length // 2, max(1, int(ramp_seconds * sample_rate)))
    env = np.ones(length)
    rise = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    env[:ramp] = rise
    env[length - ramp :] = rise[::-1]
    return env


def _pulse_train(seconds: float, sample_rate: int, f0: float, rng: np.random.Generator) -> np.ndarray:
    """Glottal pulses along a declining, wobbling pitch contour with cycle-to-cycle jitter."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    semitones = -2.0 * t / max(seconds, 1e-9) + 1.5 * np.sin(
        2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6)
    )
    # About 1.5 % pitch jitter, a new value every 80 samples (roughly every pitch period or two).
    jitter = np.repeat(rng.normal(0, 0.015, n // 80 + 1), 80)[:n]
    contour = f0 * 2 ** (semitones / 12) * (1 + jitter)
    phase = np.cumsum(contour / sample_rate)
    return np.diff(np.floor(phase), prepend=0.0)


def _add_unit(out: np.ndarray, start: int, unit: np.ndarray, rms: float) -> None:
    """Scale `unit` to the given RMS and mix it in at `start` (its tail may run past the end)."""
    if start >= len(out):
        return
    level = np.sqrt(np.mean(unit**2)) + 1e-12
    end = min(len(out), start + len(unit))
    out[start:end] += unit[: end - start] * (rms / level)


@dataclass(frozen=True)
class Speaker:
    name: str
    f0: float  # mean pitch, Hz
    formant_scale: float  # vocal-tract length: scales every formant


def synthesize_utterance(
    inventory: Inventory, speaker: Speaker, seconds: float, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One utterance: words of 1-4 syllables separated by pauses, with leading and trailing silence."""
    n = int(seconds * sample_rate)
    out = np.zeros(n)
    pulses = _pulse_train(seconds, sample_rate, speaker.f0, rng)
    cursor = int(rng.uniform(0.1, 0.3) * sample_rate)
    end = n - int(0.12 * sample_rate)
    while cursor < end:
        for _ in range(int(rng.integers(1, 5))):
            if cursor >= end:
                break
            cursor = _syllable(out, pulses, cursor, inventory, speaker, sample_rate, rng)
        cursor += int(rng.uniform(0.03, 0.15) * sample_rate)
    out[end:] *= 0.0  # the trailing silence stays silent even when the last syllable ran long
    out += rng.normal(0, 3e-4, n)  # background noise: real silence is never digital zero
    return (out / np.abs(out).max() * rng.uniform(0.3, 0.9)).astype(np.float32)


def _syllable(
    out: np.ndarray,
    pulses: np.ndarray,
    cursor: int,
    inventory: Inventory,
    speaker: Speaker,
    sample_rate: int,
    rng: np.random.Generator,
) -> int:
    """Mix (fricative) vowel (fricative) into `out` from `cursor`; return where the syllable ends."""
    length = int(rng.uniform(*inventory.syllable_seconds) * sample_rate)
    onset = int(length * rng.uniform(0.25, 0.4)) if rng.random() < inventory.onset_probability else 0
    coda = int(length * rng.uniform(0.15, 0.3)) if rng.random() < inventory.coda_probability else 0
    vowel_length = max(length - onset - coda, int(0.03 * sample_rate))
    if onset:
        _fricative(out, cursor, onset, inventory, sample_rate, rng)
    _vowel(out, pulses, cursor + onset, vowel_length, inventory, speaker, sample_rate, rng)
    if coda:
        _fricative(out, cursor + onset + vowel_length, coda, inventory, sample_rate, rng)
    return cursor + onset + vowel_length + coda


def _vowel(out, pulses, start, length, inventory, speaker, sample_rate, rng) -> None:
    formants = inventory.vowels[int(rng.integers(len(inventory.vowels)))]
    source = pulses[start : start + length] * _envelope(min(length, len(pulses) - start), sample_rate, 0.015)

    def response(freqs: np.ndarray) -> np.ndarray:
        h = _glottal_tilt(freqs, sample_rate)
        for frequency, bandwidth in formants:
            h = h * resonator_response(freqs, sample_rate, frequency * speaker.formant_scale, bandwidth)
        return h

    if len(source) and source.any():
        _add_unit(out, start, _filter(source, sample_rate, response), rms=0.1 * rng.uniform(0.6, 1.0))


def _fricative(out, start, length, inventory, sample_rate, rng) -> None:
    centre, bandwidth = inventory.fricatives[int(rng.integers(len(inventory.fricatives)))]
    noise = rng.normal(0, 1, length) * _envelope(length, sample_rate, 0.01)
    filtered = _filter(noise, sample_rate, lambda f: resonator_response(f, sample_rate, centre, bandwidth))
    _add_unit(out, start, filtered, rms=0.03 * rng.uniform(0.5, 1.0))


# --------------------------------------------------------------------------------------------------
# The corpus


def _speakers(language: str, rng: np.random.Generator, seed: int = 0) -> list[Speaker]:
    """The language's speakers; another seed's draw has other speakers, under other names (file
    names make sample keys, so two draws of the corpus never share a key)."""
    prefix = language if seed == 0 else f"{language}-s{seed}-"
    speakers = []
    for k in range(SPEAKERS_PER_LANGUAGE):
        low = rng.random() < 0.5
        f0 = rng.uniform(90, 140) if low else rng.uniform(170, 250)
        scale = rng.uniform(0.88, 0.98) if low else rng.uniform(1.02, 1.15)
        speakers.append(Speaker(f"{prefix}{k:02d}", float(f0), float(scale)))
    return speakers


def _write_language(
    root: Path, language: str, index: int, seconds: float, seed: int, utterance_seconds: tuple[float, float]
) -> None:
    """Utterances until `seconds` of audio; rates and formats cycle so every combination occurs."""
    rng = np.random.default_rng([seed, zlib.crc32(language.encode())])
    inventory = phoneme_inventory(language)
    speakers = _speakers(language, rng, seed)
    total, i = 0.0, 0
    while total < seconds or i == 0:
        speaker = speakers[i % len(speakers)]
        duration = float(rng.uniform(*utterance_seconds))
        rate = SAMPLE_RATES[(i + index) % len(SAMPLE_RATES)]
        extension = list(FORMATS)[(i + index) % len(FORMATS)]
        audio = synthesize_utterance(inventory, speaker, duration, rate, rng)
        path = root / language / speaker.name / f"{language}_{i:04d}.{extension}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, rate, subtype=FORMATS[extension])
        total += duration
        i += 1


def _write_special_files(root: Path, seed: int) -> None:
    """The awkward inputs every real corpus has: stereo, too short, corrupt."""
    rng = np.random.default_rng([seed, 7])
    de = _speakers("de", np.random.default_rng([seed, 1]))[0]
    mono = synthesize_utterance(phoneme_inventory("de"), de, 2.5, 44100, rng)
    right = 0.6 * np.roll(mono, 44) + rng.normal(0, 1e-3, len(mono)).astype(np.float32)
    stereo_dir = root / "de" / "stereo"
    stereo_dir.mkdir(parents=True, exist_ok=True)
    stereo_name = "stereo_0000.wav" if seed == 0 else f"stereo_s{seed}_0000.wav"  # see _speakers
    sf.write(stereo_dir / stereo_name, np.stack([mono, right], axis=1), 44100, subtype="PCM_16")
    short = synthesize_utterance(phoneme_inventory("sw"), _speakers("sw", rng)[0], 0.1, 16000, rng)
    (root / "sw" / "short").mkdir(parents=True, exist_ok=True)
    sf.write(root / "sw" / "short" / "short_0000.wav", short, 16000, subtype="PCM_16")
    (root / "yo" / "corrupt").mkdir(parents=True, exist_ok=True)
    (root / "yo" / "corrupt" / "corrupt_0000.flac").write_bytes(rng.bytes(4096))


def generate_demo_corpus(
    root: str | Path,
    seed: int = 0,
    scale: float = 1.0,
    utterance_seconds: tuple[float, float] = UTTERANCE_SECONDS,
) -> Path:
    """Write the demo corpus under `root/<language>/...` and return `root`.

    Utterance durations are uniform in `utterance_seconds` (the loader benchmark uses longer ones, like
    MLS or VoxPopuli segments).

    Deterministic for a seed (audio content; Ogg container serial numbers are random in libsndfile).
    Idempotent: the marker file `root/.complete` is written last, and when it exists nothing is done.
    """
    root = Path(root)
    if (root / MARKER).exists():
        return root
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    for index, (language, seconds) in enumerate(LANGUAGE_SECONDS.items()):
        _write_language(root, language, index, seconds * scale, seed, utterance_seconds)
    _write_special_files(root, seed)
    marker = {
        "seed": seed,
        "scale": scale,
        "utterance_seconds": list(utterance_seconds),
        "languages": list(LANGUAGE_SECONDS),
    }
    atomic_write_text(root / MARKER, json.dumps(marker) + "\n")
    return root
