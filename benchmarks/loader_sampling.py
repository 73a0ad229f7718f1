"""How evenly the loader samples at cluster scale: 256 and 1,024 slots on an XLS-R-shaped layout.

No audio is read: the layout is an index of 1 GB shards with XLS-R's hours per (corpus, language)
(``sharding.layouts.xlsr_hours``: 215 streams, ~30k shards), and the figures follow from the unit plan
(``xlsr.data.planning.UnitPlan``) and each slot's draw weights, exactly as the loader computes them.
Every slot emits the same audio per unit of time (batches are round-robin and hold ``max_tokens``
samples each), so in slot k an utterance of stream s is drawn at a rate proportional to
w_ks / (n_ks · d_k), where w_ks is the slot's draw weight of s, n_ks the utterances of s it owns
(a shared stream: all of them, each slot drawing it at 1/slots of the rate) and d_k the mean seconds
per draw in slot k.

Reported per number of slots, for the current plan and for the plan before issue 11 (units dealt by
count, every slot drawing every stream at the same rate) as ``before``:

- **rate ratio**: max / min expected per-utterance draw rate within each stream (1.0 = uniform);
  the worst stream, and the share of sampled hours in streams with a ratio >= 1.5, 2 and 10;
- **share error**: each stream's expected share of the sampled audio against its upsampling target,
  as a relative error and in units of the sampling noise of a run drawing ``--draws`` utterances
  (binomial standard deviation); plus one simulated run of that length (multinomial draws per slot);
- **disjointness**: streams with at least as many utterances as slots whose slots share data;
- **open readers** (current plan): the fraction of draws that reopen a closed shard reader with
  ``data.max_open_shards`` = 16, 64, 256 (the least drawn open reader is closed first), and, for
  ``pipe:`` URLs, how many bytes such reopening re-reads per byte drawn.

    .venv/bin/python benchmarks/loader_sampling.py                 # 256 and 1,024 slots
    .venv/bin/python benchmarks/loader_sampling.py --slots 64 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sharding.layouts import xlsr_shards  # noqa: E402
from xlsr.data.loader import stream_specs  # noqa: E402
from xlsr.data.planning import PlannedStream, UnitPlan  # noqa: E402

CAPS = (16, 64, 256)


@dataclass
class Ownership:
    """Per slot and stream: draw weight, utterances and seconds owned (slots x streams arrays), and per
    stream the per-utterance rate in each group of utterances (slot or unit) that holds some."""

    weights: np.ndarray
    utterances: np.ndarray
    seconds: np.ndarray
    rates: list[np.ndarray]


def layout() -> tuple[list[PlannedStream], list[tuple[str, str]]]:
    with tempfile.TemporaryDirectory() as directory:
        specs, _, _ = stream_specs(xlsr_shards(directory), 0.5, 0.5)
    return [spec.planned() for spec in specs], [tuple(spec.name.split("/")) for spec in specs]


def current_ownership(plan: UnitPlan) -> Ownership:
    slots, streams = plan.num_slots, len(plan.streams)
    weights = np.stack([plan.draw_weights(k) for k in range(slots)])
    utterances = np.empty((slots, streams))
    seconds = np.empty((slots, streams))
    for s in range(streams):
        if plan.shared[s]:
            utterances[:, s], seconds[:, s] = plan.utterances[s], plan.seconds[s]  # each slot reads all
            continue
        runs = plan.run_of_slot[s]
        utterances[:, s] = np.diff(plan.bounds[s])[runs]
        seconds[:, s] = plan.run_seconds[s][runs]
    per_draw = (weights * seconds / utterances).sum(axis=1)  # mean seconds per draw, per slot
    rates = []
    for s in range(streams):
        per_slot = weights[:, s] / (utterances[:, s] * per_draw)
        rates.append(np.array([per_slot.sum()]) if plan.shared[s] else per_slot)
    return Ownership(weights, utterances, seconds, rates)


def before_ownership(streams: list[PlannedStream], num_slots: int) -> Ownership:
    """The plan before issue 11: whole shards when a stream has >= slots shards, else every shard cut
    into ceil(slots / shards) interleaved slices; unit u to slot u mod slots (shared when fewer units
    than slots); every slot draws stream s with the same weight p_s / mean utterance seconds."""
    count = len(streams)
    utterances, seconds = np.zeros((num_slots, count)), np.zeros((num_slots, count))
    holders = []
    global_weights = np.empty(count)
    for s, stream in enumerate(streams):
        samples = np.array([shard.samples for shard in stream.shards])
        secs = np.array([shard.seconds for shard in stream.shards])
        global_weights[s] = stream.hour_prob * samples.sum() / secs.sum()
        target = math.ceil(num_slots / len(samples))
        parts = np.maximum(1, np.minimum(target, samples))
        units = [
            (i, part, parts[i]) for part in range(parts.max()) for i in range(len(samples)) if part < parts[i]
        ]
        size = np.array([len(range(part, samples[i], n)) for i, part, n in units], dtype=float)
        unit_seconds = size * secs[[i for i, _, _ in units]] / samples[[i for i, _, _ in units]]
        owner_units = [
            list(range(k, len(units), num_slots)) if len(units) >= num_slots else [k % len(units)]
            for k in range(num_slots)
        ]
        for k, owned in enumerate(owner_units):
            utterances[k, s], seconds[k, s] = size[owned].sum(), unit_seconds[owned].sum()
        holders.append((owner_units, len(units)))
    weights = np.tile(global_weights / global_weights.sum(), (num_slots, 1))
    per_draw = (weights * seconds / utterances).sum(axis=1)
    rates = []
    for s, (owner_units, num_units) in enumerate(holders):
        per_unit = np.zeros(num_units)
        for k, owned in enumerate(owner_units):
            per_unit[owned] += weights[k, s] / (utterances[k, s] * per_draw[k])
        rates.append(per_unit)
    return Ownership(weights, utterances, seconds, rates)


def expected_shares(own: Ownership) -> np.ndarray:
    per_draw = (own.weights * own.seconds / own.utterances).sum(axis=1, keepdims=True)
    audio = own.weights * (own.seconds / own.utterances) / per_draw  # share of each slot's audio
    return audio.sum(axis=0) / audio.sum()


def simulated_shares(own: Ownership, draws: int, seed: int = 0) -> np.ndarray:
    """One run: each slot makes draws / slots multinomial draws, each worth its mean seconds."""
    rng = np.random.default_rng(seed)
    per_slot = draws // len(own.weights)
    counts = np.stack([rng.multinomial(per_slot, w / w.sum()) for w in own.weights])
    audio = (counts * own.seconds / own.utterances).sum(axis=0)
    return audio / audio.sum()


def reopening(plan: UnitPlan, own: Ownership, cap: int, bytes_per_second: float) -> tuple[float, float]:
    """(fraction of draws that reopen a reader, bytes re-read per byte drawn for pipe: URLs)."""
    misses, reread, drawn = [], [], []
    for k in range(plan.num_slots):
        w = own.weights[k]
        order = np.argsort(-w)
        outside = order[cap - 1 :]  # the cap - 1 most drawn stay open, the rest take turns
        misses.append(w[outside].sum())
        # A reopened pipe re-reads its shard up to where it stopped: on average the piece's start in
        # the shard plus half the piece.
        per_miss = 0.0
        for s in outside:
            pieces = plan.pieces(int(s), k)
            sizes = np.array([p.size for p in pieces], dtype=float)
            before = np.array([p.start + p.size / 2 for p in pieces])
            seconds_per_utterance = own.seconds[k, s] / own.utterances[k, s]
            per_miss += w[s] * float((sizes * before).sum() / sizes.sum()) * seconds_per_utterance
        reread.append(per_miss * bytes_per_second)
        drawn.append((w * own.seconds[k] / own.utterances[k]).sum() * bytes_per_second)
    return float(np.mean(misses)), float(np.sum(reread) / np.sum(drawn))


def summarize(name: str, own: Ownership, target: np.ndarray, draws: int, hours: np.ndarray) -> dict:
    ratios = np.array([r.max() / r.min() for r in own.rates])
    share = expected_shares(own)
    noise = np.sqrt(target * (1 - target) / draws)
    simulated = simulated_shares(own, draws)
    sampled_hours = target  # share of sampled hours per stream
    return {
        "plan": name,
        "worst_rate_ratio": float(ratios.max()),
        "worst_stream": int(ratios.argmax()),
        "hours_share_ratio_ge_1.5": float(sampled_hours[ratios >= 1.5].sum()),
        "hours_share_ratio_ge_2": float(sampled_hours[ratios >= 2].sum()),
        "hours_share_ratio_ge_10": float(sampled_hours[ratios >= 10].sum()),
        "max_relative_share_error": float(np.abs(share / target - 1).max()),
        "max_share_error_in_noise_sd": float((np.abs(share - target) / noise).max()),
        "simulated_max_abs_z": float((np.abs(simulated - target) / noise).max()),
        "natural_hours": float(hours.sum()),
    }


def run(num_slots: int, draws: int, streams: list[PlannedStream], keys: list) -> dict:
    target = np.array([s.hour_prob for s in streams])
    hours = np.array([sum(shard.seconds for shard in s.shards) / 3600 for s in streams])
    started = time.perf_counter()
    plan = UnitPlan(streams, num_slots)
    plan_seconds = time.perf_counter() - started
    current = current_ownership(plan)
    before = before_ownership(streams, num_slots)
    shared_big = lambda own: int(  # noqa: E731
        sum(
            1
            for s, stream in enumerate(streams)
            if sum(x.samples for x in stream.shards) >= num_slots and len(own.rates[s]) < num_slots
        )
    )
    result = {
        "slots": num_slots,
        "streams": len(streams),
        "shards": sum(len(s.shards) for s in streams),
        "plan_seconds": plan_seconds,
        "load_ratio": float(plan.loads.max() / plan.loads.min()),
        "shared_streams": int(plan.shared.sum()),
        "current": {**summarize("current", current, target, draws, hours), "shared_big_streams": 0},
        "before": {
            **summarize("before", before, target, draws, hours),
            "shared_big_streams": shared_big(before),
        },
        "open_readers": {},
    }
    for name in ("current", "before"):
        worst = result[name]["worst_stream"]
        result[name]["worst_stream"] = "/".join(keys[worst])
    bytes_per_second = 0.6 * 2 * 16_000  # FLAC
    for cap in CAPS:
        miss, reread = reopening(plan, current, cap, bytes_per_second)
        result["open_readers"][cap] = {"reopen_fraction": miss, "pipe_reread_per_byte": reread}
    return result


def print_result(result: dict, draws: int) -> None:
    print(
        f"\n{result['slots']} slots: {result['streams']} streams, {result['shards']} shards of 1 GB; plan "
        f"{result['plan_seconds']:.2f} s, slot loads max/min {result['load_ratio']:.6f}, "
        f"{result['shared_streams']} streams smaller than the slot count shared"
    )
    header = (
        f"{'':<9}{'worst ratio':>12}{'hours >=1.5x':>14}{'>=2x':>8}{'>=10x':>8}{'share err':>11}{'err/sd':>8}"
    )
    print(header + f"{'sim |z|':>9}{'shared':>8}")
    for name in ("before", "current"):
        r = result[name]
        print(
            f"{name:<9}{r['worst_rate_ratio']:>12.6g}{100 * r['hours_share_ratio_ge_1.5']:>13.1f}%"
            f"{100 * r['hours_share_ratio_ge_2']:>7.1f}%{100 * r['hours_share_ratio_ge_10']:>7.1f}%"
            f"{r['max_relative_share_error']:>11.1e}{r['max_share_error_in_noise_sd']:>8.3f}"
            f"{r['simulated_max_abs_z']:>9.2f}{r['shared_big_streams']:>8}"
        )
        print(f"{'':<9}worst stream: {r['worst_stream']}")
    print(
        f"(hours: share of the sampled hours in streams with that rate ratio; share err: largest relative "
        f"error of a stream's expected share; err/sd: the same in sampling-noise sd over {draws:,} draws; "
        "sim |z|: largest |z| of one simulated run of that length)"
    )
    for cap, figures in result["open_readers"].items():
        print(
            f"max_open_shards={cap:<4} reopen {100 * figures['reopen_fraction']:5.1f}% of draws; plain pipe: "
            f"re-reads {figures['pipe_reread_per_byte']:,.0f} bytes per byte drawn "
            "({offset} pipes and files: 0)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--draws", type=int, default=10_000_000, help="utterances drawn by the simulated run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    streams, keys = layout()
    results = [run(slots, args.draws, streams, keys) for slots in args.slots]
    for result in results:
        print_result(result, args.draws)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
