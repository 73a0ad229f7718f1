"""Sampling across loader slots, on an XLS-R-shaped shard set (111 streams, 5 corpora, 1,000x skew).

Every slot draws until it has drawn the same amount of audio, as round-robin batches of ``max_tokens``
make them do in training. The thresholds are computed from the sampling noise of the run itself, with
fixed seeds, so the tests are deterministic and fail only on a real bias.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from shard_helpers import SKEWED_CORPORA, skewed_config

from sharding.layouts import skewed_layout, xlsr_shards
from xlsr.config import DataConfig
from xlsr.data.loader import build_stream_specs, stream_specs
from xlsr.data.planning import UnitPlan
from xlsr.data.stream import SlotPipeline
from xlsr.data.upsampling import upsampling_probabilities

LAYOUT = skewed_layout(SKEWED_CORPORA)
Z = 5.0  # standard deviations allowed: with ~300 comparisons, a false alarm is below 1e-4 per seed


def draw(
    cfg: DataConfig, num_slots: int, draws_per_slot: int, seed: int = 0
) -> tuple[DataConfig, Counter[str]]:
    """How often each utterance key was drawn, every slot drawing the same amount of audio."""
    specs, _, _ = build_stream_specs(cfg)
    mean_length = np.mean([length for _, length in LAYOUT.values()])
    audio_per_slot = draws_per_slot * mean_length
    counts: Counter[str] = Counter()
    for slot in range(num_slots):
        pipeline = SlotPipeline(specs, cfg, slot=slot, num_slots=num_slots, seed=seed)
        audio = 0
        while audio < audio_per_slot:
            _, sample = pipeline.mixer()
            audio += sample.num_samples
            counts[sample.key] += 1
    return cfg, counts


def chi2_upper(df: int, z: float = Z) -> float:
    """Upper quantile of chi-square(df) at the normal z (Wilson-Hilferty; scipy is not a dependency)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def stream_of(key: str) -> tuple[str, str]:
    corpus, language, _ = key.split("_", 2)
    return corpus, language


def keys_of(stream: tuple[str, str]) -> list[str]:
    return [f"{stream[0]}_{stream[1]}_{number:016x}_0000" for number in range(LAYOUT[stream][0])]


@pytest.fixture(scope="module")
def draws(skewed_index):
    """The three long runs, drawn once: XLS-R's alpha at 1 and 2 x 2 slots, uniform alpha at 16."""
    return {
        1: draw(skewed_config(skewed_index), 1, 20_000),
        4: draw(skewed_config(skewed_index), 4, 25_000),
        # alpha = 0 draws small streams often enough for a per-utterance bound with teeth.
        16: draw(skewed_config(skewed_index, language_alpha=0.0, corpus_alpha=0.0), 16, 7_000),
    }


def test_shard_set_has_the_shape_it_claims(skewed_index):
    hours = {key: count * length for key, (count, length) in LAYOUT.items()}
    assert len(LAYOUT) >= 100 and len({corpus for corpus, _ in LAYOUT}) >= 4
    assert max(hours.values()) / min(hours.values()) >= 1000
    specs, _, _ = build_stream_specs(skewed_config(skewed_index))
    assert len(specs) == len(LAYOUT)


@pytest.mark.parametrize("num_slots", [1, 4])
def test_hour_shares_follow_the_alpha_table(draws, num_slots):
    """Chi-square of the utterances drawn per stream against XLS-R's two-level alpha = 0.5 table.
    Each stream's utterances all have one length, so hours and utterance counts test the same thing."""
    observed = Counter()
    for key, count in draws[num_slots][1].items():
        observed[stream_of(key)] += count
    hours = {key: count * length for key, (count, length) in LAYOUT.items()}
    target = upsampling_probabilities(hours, 0.5, 0.5)
    per_utterance = {key: target[key] / LAYOUT[key][1] for key in LAYOUT}  # audio share / length
    total = sum(observed.values())
    expected = {key: total * w / sum(per_utterance.values()) for key, w in per_utterance.items()}
    assert min(expected.values()) >= 10  # the chi-square approximation holds
    chi2 = sum((observed[key] - e) ** 2 / e for key, e in expected.items())
    assert chi2 <= chi2_upper(len(expected) - 1), chi2
    # And no single stream is off by more than Z standard deviations (Poisson noise of its count).
    for key, e in expected.items():
        assert abs(observed[key] - e) <= Z * math.sqrt(e), (key, observed[key], e)


@pytest.mark.parametrize("num_slots", [4, 16])
def test_every_utterance_of_a_stream_is_drawn_equally_often(draws, num_slots):
    """Per-utterance draw counts within each stream, whichever slot owns the utterance, spread no more
    than sampling noise allows. A slot cycles through the n utterances it owns, so its own utterances'
    counts differ by at most one; between slots they differ by the binomial noise of how often each
    slot drew the stream: D/n, sd sqrt(mean / n). A stream smaller than the slot count is cycled whole
    by every slot: its counts differ by at most one per slot, with no noise at all."""
    cfg, counts = draws[num_slots]
    specs, _, _ = build_stream_specs(cfg)
    plan = UnitPlan([spec.planned() for spec in specs], num_slots)
    bounded, chi2, df = 0, 0.0, 0
    for stream, spec in enumerate(specs):
        utterances = spec.utterances
        per_utterance = np.array([counts[key] for key in keys_of(tuple(spec.name.split("/")))], dtype=float)
        mean = per_utterance.mean()
        if plan.shared[stream]:
            assert per_utterance.max() - per_utterance.min() <= num_slots, (spec.name, per_utterance)
            continue
        spread = Z * math.sqrt(mean / (utterances // num_slots)) + 1
        if mean - spread > 0:
            bound = (mean + spread) / (mean - spread)
            assert per_utterance.max() / per_utterance.min() <= bound, (spec.name, bound, per_utterance)
            bounded += 1
        # Pooled over slots: each slot's draws of the stream against mean x what it owns (key number =
        # position in the stream, so the plan's run boundaries say who owns it).
        runs = np.searchsorted(plan.bounds[stream], np.arange(utterances), side="right") - 1
        drawn = np.bincount(runs, weights=per_utterance, minlength=num_slots)
        owned = np.diff(plan.bounds[stream])
        chi2 += float(((drawn - mean * owned) ** 2 / (mean * owned)).sum())
        df += num_slots - 1
    assert bounded >= 10  # streams drawn often enough for noise to leave max/min a finite bound
    # The sharp test: with ownership ignored (every slot drawing each stream at the same rate), this
    # statistic is 586 against a threshold of 443 at 4 slots, and 2,455 against 1,362 at 16.
    assert chi2 <= chi2_upper(df), (chi2, df)


@pytest.mark.parametrize("num_slots", [4, 8, 16])
def test_slots_own_disjoint_equal_runs(skewed_index, num_slots):
    """A stream with at least as many utterances as slots is cut into one run per slot, sizes within
    one utterance, disjoint and covering it; a smaller stream is read whole by every slot."""
    specs, _, _ = build_stream_specs(skewed_config(skewed_index))
    plan = UnitPlan([spec.planned() for spec in specs], num_slots)
    for stream, spec in enumerate(specs):
        owned = [
            {(p.shard, i) for p in plan.pieces(stream, slot) for i in range(p.start, p.stop)}
            for slot in range(num_slots)
        ]
        every = {(shard, i) for shard, info in enumerate(spec.shards) for i in range(info.samples)}
        if spec.utterances >= num_slots:
            assert set().union(*owned) == every and sum(map(len, owned)) == len(every), spec.name
            assert max(map(len, owned)) - min(map(len, owned)) <= 1, spec.name
        else:
            assert all(run == every for run in owned), spec.name
    # Loads (each slot's share of the whole mixture) are balanced, so per-utterance rates are equal.
    assert plan.loads.max() / plan.loads.min() < 1.001


def test_slots_read_exactly_their_runs(skewed_index):
    """Through the real reader: one pass of every slot's pieces yields the planned keys, disjoint."""
    cfg = skewed_config(skewed_index)
    specs, _, _ = build_stream_specs(cfg)
    num_slots = 16
    streams = [i for i, spec in enumerate(specs) if spec.utterances <= 120]
    seen: dict[int, list[set[str]]] = {stream: [] for stream in streams}
    for slot in range(num_slots):
        pipeline = SlotPipeline(specs, cfg, slot=slot, num_slots=num_slots, seed=0)
        for stream in streams:
            reader, keys = pipeline.mixer.readers[stream], set()
            while (item := reader.next())[0][1] == 0:  # pass 0
                keys.add(item[1].key)
            seen[stream].append(keys)
    for stream in streams:
        spec, runs = specs[stream], seen[stream]
        every = set(keys_of(tuple(spec.name.split("/"))))
        if spec.utterances >= num_slots:
            assert set().union(*runs) == every and sum(map(len, runs)) == len(every), spec.name
        else:
            assert all(run == every for run in runs), spec.name


def test_plan_at_cluster_scale(tmp_path):
    """On an XLS-R-sized layout (1 GB shards, 215 streams, ~30k shards): slot loads, and so per-utterance
    rates, agree to 0.1% at 256 and 1,024 slots, and runs of a stream differ by at most one utterance."""
    specs, _, _ = stream_specs(xlsr_shards(tmp_path), 0.5, 0.5)
    streams = [spec.planned() for spec in specs]
    for num_slots in (256, 1024):
        plan = UnitPlan(streams, num_slots)
        assert plan.loads.max() / plan.loads.min() < 1.001
        for stream in range(len(streams)):
            if not plan.shared[stream]:
                sizes = np.diff(plan.bounds[stream])
                assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
