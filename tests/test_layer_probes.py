"""The layer probes (`xlsr.evaluation.layer_probes`) on synthetic features where the answer is known.

Checked: Levenshtein distance; the speaker split is deterministic, order-independent and keeps
held-out speakers out of training, with a per-key fallback; a phone probe finds the one layer that
encodes the phones (low PER, most weight) and fails on noise, deterministically for a seed and
stably across seeds; an LID probe finds a language offset and is at chance on noise; the bootstrap
interval covers the truth and narrows with more utterances.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from xlsr.evaluation.layer_probes import (
    Interval,
    ProbeUtterance,
    ScoredProbe,
    bootstrap_interval,
    edit_distance,
    lid_probe,
    phone_probe,
    split_by_speaker,
)

INVENTORY = tuple(f"p{i}" for i in range(10))
DIM = 32
NOISE = 1.0  # per-dimension noise on the phone embedding (unit variance) in the signal layer


def synthetic(
    signal: int | None = 1,
    languages: tuple[str, ...] = ("aa", "bb"),
    speakers: int = 6,
    per_speaker: int = 10,
    offset: float = 0.0,
    seed: int = 0,
) -> list[ProbeUtterance]:
    """3 layers of noise; layer ``signal`` is a phone embedding per frame (each phone 3–6 frames)
    plus noise, and layer 2 carries a per-language offset of scale ``offset``. Consecutive phones
    differ, so every phone is recoverable from the frames alone."""
    g = torch.Generator().manual_seed(seed)
    embedding = torch.randn(len(INVENTORY), DIM, generator=g)
    utterances = []
    for language in languages:
        shift = torch.randn(DIM, generator=g) * offset
        for s in range(speakers):
            for n in range(per_speaker):
                steps = torch.randint(
                    1, len(INVENTORY), (int(torch.randint(6, 14, (1,), generator=g)),), generator=g
                )
                phones = torch.cumsum(steps, 0) % len(INVENTORY)
                frames = torch.repeat_interleave(phones, torch.randint(3, 7, (len(phones),), generator=g))
                layers = torch.randn(3, len(frames), DIM, generator=g)
                if signal is not None:
                    layers[signal] = embedding[frames] + NOISE * torch.randn(len(frames), DIM, generator=g)
                layers[2] += shift
                labels = tuple(INVENTORY[p] for p in phones.tolist())
                utterances.append(
                    ProbeUtterance(f"{language}/{s}/{n}", language, f"{language}-s{s}", layers.half(), labels)
                )
    return utterances


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The probes' per-step tensors are small: intra-op threads only add synchronisation, which on a
    busy 2-core machine makes them ~10x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(key: str, language: str, speaker: str | None) -> ProbeUtterance:
    return ProbeUtterance(key, language, speaker, torch.zeros(1, 1, 1), ("a",))


def width(interval: Interval) -> float:
    return interval.high - interval.low


def reference_distance(a: list, b: list) -> int:
    """Textbook full-table Levenshtein, to check the vectorised rows against."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(
                table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
    return table[-1][-1]


def test_edit_distance_known_cases() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance([], [1, 2, 3]) == 3
    assert edit_distance([1, 2, 3], []) == 3
    assert edit_distance([], []) == 0
    assert edit_distance([4, 5, 6], [4, 5, 6]) == 0
    assert edit_distance(("a", "b", "c"), ("c", "b", "a")) == 2
    assert edit_distance([1, 1, 1, 1], [1]) == 3
    rng = random.Random(0)
    for _ in range(200):
        a = [rng.randrange(4) for _ in range(rng.randrange(12))]
        b = [rng.randrange(4) for _ in range(rng.randrange(12))]
        assert edit_distance(a, b) == reference_distance(a, b) == edit_distance(b, a)


def test_split_is_by_speaker_and_independent_of_order() -> None:
    utterances = [
        tiny(f"{lang}-{s}-{n}", lang, f"spk{s}") for lang in ("aa", "bb") for s in range(7) for n in range(5)
    ]
    train = dict(zip((u.key for u in utterances), split_by_speaker(utterances), strict=True))
    shuffled = utterances[:]
    random.Random(1).shuffle(shuffled)
    assert dict(zip((u.key for u in shuffled), split_by_speaker(shuffled), strict=True)) == train
    for language in ("aa", "bb"):
        sides: dict[bool, set[str | None]] = defaultdict(set)
        for u in utterances:
            if u.language == language:
                sides[train[u.key]].add(u.speaker)
        assert not sides[True] & sides[False]
        assert (len(sides[True]), len(sides[False])) == (4, 3)  # half of 7, rounded up, train
    # The same speaker name in two languages is split within each language separately.
    assert (
        {u.speaker for u in utterances if train[u.key] and u.language == "aa"}
        != set()
        != {u.speaker for u in utterances if not train[u.key] and u.language == "bb"}
    )


def test_split_falls_back_to_keys_with_one_or_no_speaker() -> None:
    for speaker in ("only", None):
        utterances = [tiny(f"k{n}", "aa", speaker) for n in range(9)] + [
            tiny("x", "bb", "b1"),
            tiny("y", "bb", "b2"),
        ]
        train = split_by_speaker(utterances)
        assert sum(train[:9]) == 5  # alternating in key-hash order, first one trains
        assert train[9] != train[10]  # two speakers: one each
        reversed_train = split_by_speaker(utterances[::-1])[::-1]
        assert reversed_train == train


@pytest.fixture(scope="module")
def phone_results() -> dict[str, ScoredProbe]:
    data, noise = synthetic(), synthetic(signal=None)
    return {
        "trained": phone_probe(data, seed=0),
        "again": phone_probe(data, seed=0),
        "other_seed": phone_probe(data, seed=1),
        "noise": phone_probe(noise, seed=0),
    }


def test_phone_probe_finds_the_phone_layer(phone_results: dict[str, ScoredProbe]) -> None:
    trained, noise = phone_results["trained"], phone_results["noise"]
    assert trained.metric < 0.15
    assert trained.layer_weights.index(max(trained.layer_weights)) == 1 and trained.layer_weights[1] > 0.6
    assert math.isclose(sum(trained.layer_weights), 1.0, rel_tol=1e-5)
    assert set(trained.per_language) == {"aa", "bb"}
    assert all(value < 0.2 for value, _ in trained.per_language.values())
    assert noise.metric > 0.6
    # The gap to the noise baseline dwarfs both intervals.
    assert noise.interval.low - trained.interval.high > 5 * max(
        width(trained.interval), width(noise.interval)
    )
    assert trained.interval.low <= trained.metric <= trained.interval.high
    assert (trained.train_utterances, trained.test_utterances) == (60, 60)
    assert (trained.train_speakers, trained.test_speakers) == (6, 6)


def test_phone_probe_is_deterministic_and_stable(phone_results: dict[str, ScoredProbe]) -> None:
    trained, other = phone_results["trained"], phone_results["other_seed"]
    assert phone_results["again"] == trained
    assert other != trained
    assert abs(other.metric - trained.metric) < 0.05


def test_phone_probe_needs_labels() -> None:
    unlabelled = [
        ProbeUtterance(u.key, u.language, u.speaker, u.layers, None) for u in synthetic(per_speaker=1)
    ]
    with pytest.raises(ValueError, match="no utterance has labels"):
        phone_probe(unlabelled)


def test_lid_probe_finds_a_language_offset() -> None:
    languages = ("aa", "bb", "cc")
    result = lid_probe(synthetic(signal=None, languages=languages, offset=0.5), seed=0)
    assert result.metric > 0.95
    assert result.layer_weights.index(max(result.layer_weights)) == 2
    assert result.interval.low <= result.metric <= result.interval.high
    assert set(result.per_language) == set(languages)
    assert (result.train_speakers, result.test_speakers) == (9, 9)
    chance = lid_probe(synthetic(signal=None, languages=languages), seed=0)
    assert abs(chance.metric - 1 / 3) < 0.15
    assert chance.interval.low <= chance.metric <= chance.interval.high
    assert 0.05 < width(chance.interval) < 0.4  # ~±1.96·√(p(1-p)/90)
    assert lid_probe(synthetic(signal=None, languages=languages), seed=0) == chance


def test_lid_probe_needs_two_languages() -> None:
    with pytest.raises(ValueError, match="two languages"):
        lid_probe(synthetic(signal=None, languages=("aa",), per_speaker=1))


def test_bootstrap_interval_covers_the_truth_and_narrows() -> None:
    rng = np.random.default_rng(0)
    truth, covered = 0.2, 0
    for trial in range(100):
        lengths = rng.integers(5, 40, size=200)
        errors = rng.binomial(lengths, truth)
        interval = bootstrap_interval(errors.tolist(), lengths.tolist(), seed=trial)
        covered += interval.low <= truth <= interval.high
        assert interval.low <= errors.sum() / lengths.sum() <= interval.high
    assert covered >= 88  # nominal 95 %
    small = bootstrap_interval(rng.binomial(1, 0.7, size=100).tolist(), [1] * 100, seed=0)
    large = bootstrap_interval(rng.binomial(1, 0.7, size=2500).tolist(), [1] * 2500, seed=0)
    assert width(large) < width(small) / 3  # ~1/√25
    assert bootstrap_interval([1, 0, 1], [1, 1, 1], seed=3) == bootstrap_interval(
        [1, 0, 1], [1, 1, 1], seed=3
    )
    with pytest.raises(ValueError):
        bootstrap_interval([], [], seed=0)


def test_probes_refuse_mismatched_layers() -> None:
    utterances = synthetic(per_speaker=1)
    odd = utterances[0]
    mixed = [ProbeUtterance(odd.key, odd.language, odd.speaker, odd.layers[:2], odd.labels), *utterances[1:]]
    with pytest.raises(ValueError, match="one L and D"):
        lid_probe(mixed)
    with pytest.raises(ValueError, match="one L and D"):
        phone_probe([ProbeUtterance(u.key, u.language, u.speaker, u.layers[0], u.labels) for u in utterances])
