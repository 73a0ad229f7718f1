"""The data position across a change of topology (`xlsr.data.carry`): a run resumed on another
number of ranks or loader workers goes on with the rest of every stream's pass instead of starting
the streams over."""

from __future__ import annotations

from collections import Counter

import pytest
from shard_helpers import skewed_config

from sharding.layouts import write_skewed_shard_set
from xlsr.data.carry import old_carry
from xlsr.data.loader import DataStream
from xlsr.data.planning import Piece, UnitPlan

# Two cut streams of 200-sample utterances, 48 per shard, large enough that the draws below stay
# within their first pass.
LAYOUT = {("corpus", "big"): (900, 200), ("corpus", "small"): (300, 200)}
PER_SHARD = 48


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    return write_skewed_shard_set(tmp_path_factory.mktemp("carry"), LAYOUT, utterances_per_shard=PER_SHARD)


def run(index, phases: list[tuple[int, int, int]], carry: bool = True) -> tuple[list[str], list[dict]]:
    """Every key the ranks' streams yield over a run resumed on each (world size, workers, batches
    per rank) in turn, and the last states; ``carry=False`` restarts the streams on every change."""
    keys: list[str] = []
    states: list[dict] = []
    for world, workers, batches in phases:
        streams = [
            DataStream(skewed_config(index, num_workers=workers), seed=3, rank=rank, world_size=world)
            for rank in range(world)
        ]
        for stream in streams if states else []:
            every_rank = (lambda old=states: old) if carry else None
            stream.load_state_dict(states[min(stream.rank, len(states) - 1)], all_ranks=every_rank)
        for stream in streams:
            keys += [key for _ in range(batches) for key in next(stream).keys]
        states = [stream.state_dict() for stream in streams]
        for stream in streams:
            stream.close()
    return keys, states


def keys_left(index, states: list[dict]) -> list[str]:
    """The keys the last states had not drawn yet in the current pass (what a next carry holds)."""
    stream = DataStream(skewed_config(index, num_workers=states[0]["workers"]), seed=3)
    plan = UnitPlan(stream.dataset.plan.streams, states[0]["world_size"] * states[0]["workers"])
    slots, pending = {}, {}
    for rank, state in enumerate(states):
        slots |= {rank * state["workers"] + int(w): slot for w, slot in state["slots"].items()}
        pending |= {rank * state["workers"] + int(w): [[Piece(*p) for p in s] for s in c]
                    for w, c in state["pending_carry"].items()}  # fmt: skip
    carry = old_carry(plan, states[0]["seed"], slots, pending)
    names = [spec.name.replace("/", "_") for spec in stream.specs]
    return [
        f"{names[s]}_{piece.shard * PER_SHARD + i:016x}_0000"
        for s, pieces in enumerate(carry)
        for piece in pieces
        for i in range(piece.start, piece.stop)
    ]


@pytest.mark.parametrize(
    "phases",
    [
        [(2, 1, 4), (1, 1, 4), (3, 1, 4)],
        [(1, 2, 4), (2, 1, 4), (1, 3, 4)],
        # saved before every new loader worker produced a batch: the carries not started yet are kept
        [(2, 1, 4), (1, 3, 1), (1, 3, 3), (2, 2, 2)],
    ],
)
def test_every_utterance_once_per_pass_across_topologies(two_streams, phases):
    drawn, states = run(two_streams, phases)
    left = keys_left(two_streams, states)
    assert len(drawn) > 150 and Counter(drawn).most_common(1)[0][1] == 1  # nothing drawn twice
    every_key = [
        f"corpus_{name}_{n:016x}_0000" for (_, name), (count, _) in LAYOUT.items() for n in range(count)
    ]
    assert sorted(drawn + left) == sorted(every_key)  # nothing lost: drawn + left of the pass = all, once
    restarted, _ = run(two_streams, phases, carry=False)
    assert Counter(restarted).most_common(1)[0][1] > 1  # started over: some drawn again, others never


def test_counts_carry_on_and_the_same_topology_still_resumes_exactly(two_streams):
    drawn, states = run(two_streams, [(2, 0, 4)])
    new = DataStream(skewed_config(two_streams, num_workers=0), seed=3, rank=0, world_size=1)
    new.load_state_dict(states[0], all_ranks=lambda: states)
    batch = next(new)
    assert new.telemetry()[:, 0].sum().item() >= len(drawn) + len(batch.keys)  # the old ranks' too
    again = DataStream(skewed_config(two_streams, num_workers=0), seed=3, rank=0, world_size=1)
    again.load_state_dict(new.state_dict())
    assert next(again).keys == next(new).keys  # a carry is part of the state
