"""SUPERB-style probes of a frozen model's layers: phone (or character) recognition and language ID.

Pure functions on already-extracted features: each `ProbeUtterance` carries every layer's hidden
states (L + 1, T, D). As in SUPERB (Yang et al. 2021) and s3prl's featurizer, a probe learns one
scalar weight per layer (softmax, initialised to zero = uniform) over the layers, each first
normalised by `F.layer_norm` over D without affine (layers differ wildly in scale), and a small
head on top: a linear CTC head for phones (SUPERB PR), a linear classifier on time-means for LID.

The recipe is fixed (constants below): no per-model tuning, so numbers are comparable across runs
and checkpoints. Speakers are split per language, half train the probe and the other half score it,
so the probe measures what generalises across speakers. Everything is deterministic for a seed and
independent of input order: local generators only, no global RNG state.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xlsr.evaluation.valid_set import key_hash

# Phone probe: Adam steps, PHONE_EPOCHS passes over the probe-training utterances, at most
# PHONE_STEPS (the same for every checkpoint of a run: one probe set). 1000 steps are enough for a
# linear CTC head on layer-normed features to converge on a few hundred utterances (500 already do
# on 400), yet 10-17 s on 2 CPU cores for 400 utterances of 200 frames (CTC's forward-backward is
# two thirds of it); a small probe set needs fewer.
PHONE_STEPS = 1000
PHONE_EPOCHS = 100
# Phone probe learning rate: 2e-3 … 1e-2 all converge within PHONE_STEPS (the tests' 10-phone data:
# same PER ±0.01; a harder 40-phone, D = 128, 400-utterance set: 0.51 / 0.53 / 0.54 at 2e-3 / 5e-3 /
# 1e-2, higher rates overfitting the 200 training utterances slightly). 5e-3, the middle, leaves
# margin both ways; s3prl's PR uses 1e-2, but for 100k steps on LibriSpeech.
PHONE_LR = 5e-3
# Initial bias of the CTC blank logit. At zero, CTC's early all-blank phase can leave a phone trapped
# under blank on a linear head (seen on synthetic data: one phone of ten never emitted, PER 0.17
# instead of 0.02, depending on the seed); starting blank unlikely removes that, and the head
# raises blank within a few steps where the data needs it.
BLANK_BIAS = -4.0
# Utterances per phone-probe step (s3prl's PR uses small batches; more adds CPU time, not accuracy).
PHONE_BATCH = 8
# LID probe: full-batch Adam steps and learning rate; a linear classifier on (L+1, D) means
# converges in a few hundred steps.
LID_STEPS = 300
LID_LR = 1e-2
# LID head's L2 penalty (λ·|W|²): keeps the weights finite when the training set is separable and
# limits overfitting of D features on a few hundred utterances.
LID_L2 = 1e-3
# Bootstrap resamples of held-out utterances and the two-sided coverage of the interval.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_PERCENTILES = (2.5, 97.5)


@dataclass(frozen=True)
class ProbeUtterance:
    key: str
    language: str
    speaker: str | None  # None: unknown → split by key instead
    layers: torch.Tensor  # (L + 1, T, D) float16/float32 on CPU
    labels: tuple[str, ...] | None  # phones (or characters); None = no transcript


@dataclass(frozen=True)
class Interval:
    """A bootstrap 95 % percentile interval."""

    low: float
    high: float


@dataclass(frozen=True)
class ScoredProbe:
    metric: float  # error rate as a fraction in [0, ∞) (phone probe) or accuracy (LID probe)
    interval: Interval
    per_language: dict[str, tuple[float, Interval]]  # languages with held-out utterances
    layer_weights: list[float]  # softmax of the learned layer weights, layer 0 first
    train_utterances: int
    test_utterances: int
    train_speakers: int  # distinct known (language, speaker) pairs
    test_speakers: int


def edit_distance(a: Sequence[object], b: Sequence[object]) -> int:
    """Levenshtein distance, one numpy row per element of ``a``.

    The insertion chain along a row, new[j] = min(new[j-1] + 1, …), is a running minimum of
    tmp[k] - k (plus j), so each row is a few vectorised numpy calls instead of a Python loop.
    """
    ids: dict[object, int] = {}
    x = np.array([ids.setdefault(s, len(ids)) for s in a], dtype=np.int64)
    y = np.array([ids.setdefault(s, len(ids)) for s in b], dtype=np.int64)
    if len(x) == 0 or len(y) == 0:
        return len(x) + len(y)
    columns = np.arange(len(y) + 1, dtype=np.int64)
    row = columns.copy()
    for i, symbol in enumerate(x, start=1):
        tmp = np.empty_like(row)
        tmp[0] = i
        tmp[1:] = np.minimum(row[1:] + 1, row[:-1] + (y != symbol))
        row = np.minimum.accumulate(tmp - columns) + columns
    return int(row[-1])


def bootstrap_interval(
    numerators: Sequence[float],
    denominators: Sequence[float],
    seed: int,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Interval:
    """Percentile interval of Σ numerators / Σ denominators over utterances resampled with replacement.

    The ratio of sums (errors / reference phones) weighs long utterances as the point estimate does;
    for accuracy, numerators are 0/1 and denominators 1.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    if len(num) == 0 or len(num) != len(den):
        raise ValueError(f"bootstrap needs matching non-empty sequences, got {len(num)} and {len(den)}")
    index = np.random.default_rng(seed).integers(0, len(num), size=(resamples, len(num)))
    totals = den[index].sum(1)
    stats = num[index].sum(1) / np.where(totals > 0, totals, 1.0)
    low, high = np.percentile(stats, BOOTSTRAP_PERCENTILES)
    return Interval(float(low), float(high))


def split_by_speaker(utterances: Sequence[ProbeUtterance]) -> list[bool]:
    """True = probe-train: per language, the first half (rounded up) of speakers in key-hash order.

    A language with fewer than two known speakers splits its utterances instead, alternating in
    key-hash order. In a language with several speakers, utterances of unknown speaker are split that
    way too (they may share a speaker with either half: nothing better is possible without the label).
    """
    by_language: dict[str, list[int]] = defaultdict(list)
    for i, u in enumerate(utterances):
        by_language[u.language].append(i)
    train = [False] * len(utterances)
    for members in by_language.values():
        known = {s for i in members if (s := utterances[i].speaker) is not None}
        speakers = sorted(known, key=lambda s: (key_hash(s), s))
        by_key = sorted(members, key=lambda i: (key_hash(utterances[i].key), utterances[i].key, i))
        if len(speakers) < 2:
            for rank, i in enumerate(by_key):
                train[i] = rank % 2 == 0
            continue
        chosen = set(speakers[: math.ceil(len(speakers) / 2)])
        unknown = [i for i in by_key if utterances[i].speaker is None]
        for rank, i in enumerate(unknown):
            train[i] = rank % 2 == 0
        for i in members:
            if utterances[i].speaker is not None:
                train[i] = utterances[i].speaker in chosen
    return train


class _LayerMix(nn.Module):
    """Softmax-weighted sum of the (already layer-normed) layers, then a linear head.

    Initialised from a seeded generator (no global RNG): layer weights zero, head uniform
    ±1/√D like `nn.Linear`, bias zero but for class 0's ``first_bias``.
    """

    def __init__(
        self, layers: int, dim: int, classes: int, generator: torch.Generator, first_bias: float = 0.0
    ) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))
        bound = 1.0 / math.sqrt(dim)
        self.head = nn.Parameter((torch.rand(dim, classes, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.bias[0] = first_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., L + 1, D) → logits (..., C)."""
        mixed = torch.einsum("...ld,l->...d", x, self.weights.softmax(0))
        return mixed @ self.head + self.bias

    def layer_weights(self) -> list[float]:
        return [float(w) for w in self.weights.detach().softmax(0)]


def _normed(layers: torch.Tensor) -> torch.Tensor:
    """(L + 1, T, D) → (T, L + 1, D) float32, each layer's frames layer-normed over D without affine."""
    x = layers.float()
    return F.layer_norm(x, x.shape[-1:]).transpose(0, 1).contiguous()


def _check_layers(utterances: Sequence[ProbeUtterance]) -> None:
    """One (L + 1, ·, D) shape for all: the probe's layer weights and head are shared."""
    shapes = {(u.layers.shape[0], u.layers.shape[-1], u.layers.dim()) for u in utterances}
    if len(shapes) != 1 or next(iter(shapes))[2] != 3:
        raise ValueError(f"probe utterances need (L + 1, T, D) layers of one L and D, got {sorted(shapes)}")


def _train_ctc(
    features: list[torch.Tensor], targets: list[torch.Tensor], classes: int, seed: int
) -> _LayerMix:
    """Adam on CTC loss for PHONE_EPOCHS epochs (at most PHONE_STEPS steps) of PHONE_BATCH
    utterances, epochs in seeded order."""
    generator = torch.Generator().manual_seed(seed)
    probe = _LayerMix(features[0].shape[1], features[0].shape[2], classes, generator, BLANK_BIAS)
    optimizer = torch.optim.Adam(probe.parameters(), lr=PHONE_LR)
    batch = min(PHONE_BATCH, len(features))
    order: list[int] = []
    for _ in range(min(PHONE_STEPS, PHONE_EPOCHS * math.ceil(len(features) / batch))):
        if len(order) < batch:
            order += torch.randperm(len(features), generator=generator).tolist()
        chosen, order = order[:batch], order[batch:]
        x = nn.utils.rnn.pad_sequence([features[i] for i in chosen])  # (T, B, L + 1, D)
        log_probs = probe(x).log_softmax(-1)
        loss = F.ctc_loss(
            log_probs,
            torch.cat([targets[i] for i in chosen]),
            torch.tensor([len(features[i]) for i in chosen]),
            torch.tensor([len(targets[i]) for i in chosen]),
            blank=0,
            zero_infinity=True,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return probe


def _greedy_decode(logits: torch.Tensor) -> list[int]:
    """Argmax per frame, repeats collapsed, blanks (0) dropped."""
    path = torch.unique_consecutive(logits.argmax(-1))
    return path[path != 0].tolist()


def _scored(
    numerators: list[float],
    denominators: list[float],
    languages: list[str],
    seed: int,
    train: list[bool],
    utterances: Sequence[ProbeUtterance],
    layer_weights: list[float],
) -> ScoredProbe:
    """Overall and per-language ratio of sums with their bootstrap intervals, plus split sizes."""
    per_language = {}
    for language in sorted(set(languages)):
        rows = [i for i, lang in enumerate(languages) if lang == language]
        num, den = [numerators[i] for i in rows], [denominators[i] for i in rows]
        interval = bootstrap_interval(num, den, seed=key_hash(language) ^ seed)
        per_language[language] = (sum(num) / sum(den), interval)

    def speakers(side: bool) -> int:
        return len(
            {(u.language, u.speaker) for i, u in enumerate(utterances) if train[i] == side and u.speaker}
        )

    return ScoredProbe(
        metric=sum(numerators) / sum(denominators),
        interval=bootstrap_interval(numerators, denominators, seed=seed),
        per_language=per_language,
        layer_weights=layer_weights,
        train_utterances=sum(train),
        test_utterances=len(train) - sum(train),
        train_speakers=speakers(True),
        test_speakers=speakers(False),
    )


def _split_or_raise(utterances: Sequence[ProbeUtterance], probe: str) -> list[bool]:
    train = split_by_speaker(utterances)
    if all(train):
        raise ValueError(f"{probe} probe: no held-out utterance (every language has a single utterance)")
    return train


def phone_probe(utterances: Sequence[ProbeUtterance], seed: int = 0) -> ScoredProbe:
    """Error rate (PER, or CER for characters) of a linear CTC probe on held-out speakers.

    Utterances without labels (None or empty) are ignored. Vocabulary: the sorted set of every
    label of every utterance, train and test alike (so a held-out phone is an error, not a crash);
    blank is index 0. Scored by greedy CTC decoding, Σ edit distance / Σ reference length.
    """
    labelled = [u for u in utterances if u.labels]
    if not labelled:
        raise ValueError("phone probe: no utterance has labels (phones or characters)")
    _check_layers(labelled)
    train = _split_or_raise(labelled, "phone")
    vocabulary = {s: i + 1 for i, s in enumerate(sorted({s for u in labelled for s in u.labels or ()}))}
    features = [_normed(u.layers) for u in labelled]
    targets = [torch.tensor([vocabulary[s] for s in u.labels or ()]) for u in labelled]
    fit = [i for i, t in enumerate(train) if t]
    probe = _train_ctc([features[i] for i in fit], [targets[i] for i in fit], len(vocabulary) + 1, seed)
    held_out = [i for i, t in enumerate(train) if not t]
    with torch.no_grad():
        errors = [
            float(edit_distance(_greedy_decode(probe(features[i])), targets[i].tolist())) for i in held_out
        ]
    lengths = [float(len(targets[i])) for i in held_out]
    languages = [labelled[i].language for i in held_out]
    return _scored(errors, lengths, languages, seed, train, labelled, probe.layer_weights())


def lid_probe(utterances: Sequence[ProbeUtterance], seed: int = 0) -> ScoredProbe:
    """Language-ID accuracy of a linear classifier on the layer-weighted time-mean, on held-out speakers.

    Each normalised layer is averaged over time, so the probe sees (L + 1, D) per utterance; the
    softmax layer weights and the head are fitted by full-batch Adam with a small L2 on the head.
    """
    if not utterances:
        raise ValueError("LID probe: no utterances")
    _check_layers(utterances)
    languages = sorted({u.language for u in utterances})
    if len(languages) < 2:
        raise ValueError(f"LID probe needs at least two languages, got {languages}")
    train = _split_or_raise(utterances, "LID")
    x = torch.stack([_normed(u.layers).mean(0) for u in utterances])  # (N, L + 1, D)
    y = torch.tensor([languages.index(u.language) for u in utterances])
    mask = torch.tensor(train)
    generator = torch.Generator().manual_seed(seed)
    probe = _LayerMix(x.shape[1], x.shape[2], len(languages), generator)
    optimizer = torch.optim.Adam(probe.parameters(), lr=LID_LR)
    for _ in range(LID_STEPS):
        loss = F.cross_entropy(probe(x[mask]), y[mask]) + LID_L2 * probe.head.square().sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = (probe(x[~mask]).argmax(-1) == y[~mask]).double().tolist()
    held_out = [u.language for u, t in zip(utterances, train, strict=True) if not t]
    return _scored(correct, [1.0] * len(correct), held_out, seed, train, utterances, probe.layer_weights())
