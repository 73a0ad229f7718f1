"""The utterances the probes learn from and are scored on: the held-out shards, whole, with labels.

Which utterances: those of the ``data.valid`` indexes, per (corpus, language) in the order of a hash
of their key until ``validation.max_seconds_per_language`` is reached, like the validation loss's
set; but whole (a phone sequence cannot be cropped), so longer ones than
``validation.probe_max_utterance_seconds`` are left out. Labels: the utterance's phones where the shard
has them (the ``phn`` member, space-separated), else the characters of its transcript (``txt``,
letters and marks, lower-cased, ``|`` between words), else none (language ID only). Speakers come
from the shard's metadata: the probes learn on some speakers and are scored on others.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from xlsr.config import SAMPLE_RATE
from xlsr.data.shards import RawSample
from xlsr.data.stages import UtterancePreparer
from xlsr.evaluation.valid_set import choose_by_key

WORD_BOUNDARY = "|"
SHORTEST = SAMPLE_RATE // 2  # shorter utterances hold too few frames for a phone sequence


@dataclass(frozen=True)
class ProbeAudio:
    key: str
    language: str
    speaker: str | None
    audio: np.ndarray  # (L,) float32, normalised as in training
    phones: tuple[str, ...] | None
    chars: tuple[str, ...] | None


def load_probe_set(
    indexes: list[str], max_seconds_per_language: float, max_utterance_seconds: float, normalize: bool
) -> list[ProbeAudio]:
    """Every stream's whole utterances by key hash, up to the cap; streams in name order."""
    longest = int(max_utterance_seconds * SAMPLE_RATE)
    chosen = choose_by_key(
        indexes,
        lambda raw: SHORTEST <= raw.num_samples <= longest,
        max_seconds_per_language * SAMPLE_RATE,
        lambda raw: raw.num_samples,
    )
    preparer = UtterancePreparer(normalize)
    return [_probe_audio(raw, preparer) for raw in chosen]


def _probe_audio(raw: RawSample, preparer: UtterancePreparer) -> ProbeAudio:
    out = np.empty(raw.num_samples, dtype=np.float32)
    audio = out[: preparer(raw, out, 0)]
    phones = tuple(raw.phones.split()) if raw.phones else None
    return ProbeAudio(raw.key, raw.language, raw.speaker, audio, phones or None, characters(raw.text))


def characters(text: str | None) -> tuple[str, ...] | None:
    """The letters (with their combining marks) of a transcript, lower-cased, ``|`` between words."""
    if not text:
        return None
    words = []
    for word in unicodedata.normalize("NFC", text).lower().split():
        kept = [c for c in word if unicodedata.category(c)[0] in "LM" or c == "'"]
        if kept:
            words.append(kept)
    labels = [c for i, word in enumerate(words) for c in ([WORD_BOUNDARY] if i else []) + word]
    return tuple(labels) or None
