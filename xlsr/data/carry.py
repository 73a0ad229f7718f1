"""The data position across a change of topology (world size or loader workers).

Every slot reads its pieces of a stream in a seeded order per pass (`xlsr.data.units`). When a run
resumes with another number of slots, the old slots' pieces no longer exist; instead of starting
every stream over (which draws some utterances again before others once), the new slots first read
what the old slots had not yet drawn in their current pass — the *carry* — and only then start their
own passes:

1. From every old slot's state (all old ranks' checkpoint files): per cut stream, the rest of its
   current pass (the piece it was in, from its offset, and the pieces after it in that pass's order),
   plus the samples it had read but not yet put in a batch (shuffle and bucket buffers).
2. The carry of each stream, in index order, is cut into equal runs over the new slots
   (`split_carry`), like the plan's own runs.

Streams shared by every slot (fewer utterances than slots) have no carry: each slot reads all of
such a stream each pass anyway. Counts (draws per stream, skips) move to the new rank 0's first slot,
so the run's totals stay whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from xlsr.data.planning import Piece, UnitPlan
from xlsr.data.units import CARRY_PASS, pass_order

Carry = list[list[Piece]]  # per stream, the pieces left of the current pass


def old_carry(plan: UnitPlan, seed: int, slot_states: dict[int, dict[str, Any]]) -> Carry:
    """What the slots of ``plan`` (keyed by slot; absent: never drew) had left of their current
    pass, per stream."""
    carry: Carry = [[] for _ in plan.streams]
    for stream in range(len(plan.streams)):
        if plan.shared[stream]:
            continue
        for slot in range(plan.num_slots):
            pieces = plan.pieces(stream, slot)
            state = slot_states.get(slot)
            if state is None:  # a slot that never drew: all of its pieces are left
                carry[stream].extend(pieces)
                continue
            carry[stream].extend(_rest_of_pass(pieces, seed, stream, slot, state["readers"][stream]))
            carry[stream].extend(_buffered(pieces, seed, stream, slot, state))
    return [sorted(pieces, key=lambda p: (p.shard, p.start)) for pieces in carry]


def _rest_of_pass(pieces: Sequence[Piece], seed: int, stream: int, slot: int, reader: dict) -> list[Piece]:
    """What the slot had not read of its current pass: the piece it was in, from its offset, and the
    pieces after it in that pass's order."""
    position, offset = reader["position"], reader["offset"]
    if reader["pass"] == CARRY_PASS:  # still in an earlier carry: the rest of the pass is its rest
        pieces = [Piece(*p) for p in reader["carry"]]
    order = pass_order(len(pieces), (seed, stream, slot), reader["pass"])
    rest = [pieces[i] for i in order[position + 1 :]]
    return [*_tail(pieces[order[position]], offset), *rest]


def _tail(piece: Piece, offset: int) -> list[Piece]:
    return [Piece(piece.shard, piece.start + offset, piece.stop)] if offset < piece.size else []


def _buffered(pieces: Sequence[Piece], seed: int, stream: int, slot: int, state: dict) -> list[Piece]:
    """The samples of ``stream`` the slot had read into its buffers but not yet batched."""
    refs = [tuple(r) for r in state["shuffle"]] + [tuple(r) for b in state["buckets"] for r in b]
    found = []
    for ref_stream, pass_, position, offset in refs:
        if ref_stream != stream:
            continue
        reader = state["readers"][stream]
        if pass_ == CARRY_PASS:  # read from a carry
            carried = [Piece(*p) for p in reader.get("carry") or []]
            piece = carried[pass_order(len(carried), (seed, stream, slot), pass_)[position]]
        else:
            piece = pieces[pass_order(len(pieces), (seed, stream, slot), pass_)[position]]
        found.append(Piece(piece.shard, piece.start + offset, piece.start + offset + 1))
    return found


def split_carry(carry: Carry, num_slots: int) -> list[Carry]:
    """Per new slot, its equal run (±1 utterance) of each stream's carry, in index order."""
    per_slot: list[Carry] = [[[] for _ in carry] for _ in range(num_slots)]
    for stream, pieces in enumerate(carry):
        sizes = np.array([p.size for p in pieces], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        bounds = (np.arange(num_slots + 1, dtype=np.int64) * int(starts[-1])) // num_slots
        for slot in range(num_slots):
            first, last = int(bounds[slot]), int(bounds[slot + 1])
            for piece, begin, end in zip(pieces, starts[:-1], starts[1:], strict=True):
                lo, hi = max(first, int(begin)), min(last, int(end))
                if lo < hi:
                    per_slot[slot][stream].append(Piece(piece.shard, piece.start + lo - int(begin),
                                                        piece.start + hi - int(begin)))  # fmt: skip
    return per_slot


def old_totals(slot_states: list[dict[str, Any]]) -> tuple[np.ndarray, Counter[str]]:
    """The old slots' draws per stream and skip counts, summed."""
    streams = sum(np.array(state["streams"], dtype=np.int64) for state in slot_states)
    counters: Counter[str] = Counter()
    for state in slot_states:
        counters.update(state["counters"])
    return streams, counters
