"""The data position across a change of topology (`xlsr.data.carry`): a run resumed on another
number of ranks or loader workers goes on with the rest of every stream's pass instead of starting
the streams over."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from shard_helpers import skewed_config

from sharding.layouts import write_skewed_shard_set
from xlsr.data.loader import DataStream

# Two cut streams (utterances of 200 samples, 48 per shard): large enough that the draws below stay
# within their first pass.
LAYOUT = {("corpus", "big"): (900, 200), ("corpus", "small"): (300, 200)}
BATCHES_PER_RANK = 4


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory):
    return write_skewed_shard_set(tmp_path_factory.mktemp("carry"), LAYOUT)


def keys_drawn(index, topologies: list[tuple[int, int]], carry: bool) -> list[str]:
    """Every key each rank's stream yields, over a run resumed on each (world size, workers) in turn;
    ``carry=False`` restarts the streams on every change (what xlsr did before)."""
    keys: list[str] = []
    states: list[dict] | None = None
    for world, workers in topologies:
        cfg = skewed_config(index, num_workers=workers)
        streams = [DataStream(cfg, seed=3, rank=rank, world_size=world) for rank in range(world)]
        for stream in streams if states is not None else []:
            every_rank: Callable[[], list[dict]] | None = (lambda old=states: old) if carry else None
            stream.load_state_dict(states[min(stream.rank, len(states) - 1)], all_ranks=every_rank)
        for stream in streams:
            keys += [key for _ in range(BATCHES_PER_RANK) for key in next(stream).keys]
        states = [stream.state_dict() for stream in streams]
        for stream in streams:
            stream.close()
    return keys


@pytest.mark.parametrize("topologies", [[(2, 1), (1, 1), (3, 1)], [(1, 2), (2, 1), (1, 3)]])
def test_no_utterance_is_drawn_twice_within_a_pass_across_topologies(two_streams, topologies):
    carried = Counter(keys_drawn(two_streams, topologies, carry=True))
    assert sum(carried.values()) > 150 and max(carried.values()) == 1
    restarted = Counter(keys_drawn(two_streams, topologies, carry=False))
    assert max(restarted.values()) > 1  # the streams started over: some drawn again, others never


def test_counts_carry_on_and_the_same_topology_still_resumes_exactly(two_streams):
    cfg = skewed_config(two_streams, num_workers=0)
    old = [DataStream(cfg, seed=3, rank=rank, world_size=2) for rank in range(2)]
    drawn = sum(len(next(stream).keys) for stream in old for _ in range(BATCHES_PER_RANK))
    states = [stream.state_dict() for stream in old]
    new = DataStream(cfg, seed=3, rank=0, world_size=1)
    new.load_state_dict(states[0], all_ranks=lambda: states)
    next(new)
    assert new.telemetry()[:, 0].sum().item() > drawn  # the old ranks' draws, and this one's
    again = DataStream(cfg, seed=3, rank=0, world_size=1)
    again.load_state_dict(new.state_dict())
    assert next(again).keys == next(new).keys  # a carry is part of the state
