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


def old_carry(
    plan: UnitPlan, seed: int, slot_states: dict[int, dict[str, Any]], pending: dict[int, Carry]
) -> Carry:
    """What the slots of ``plan`` had left of their current pass, per stream. ``slot_states`` are
    the slots that drew; ``pending`` the carries of slots that had not started on them yet; any
    other slot never drew: all of its pieces are left."""
    carry: Carry = [[] for _ in plan.streams]
    for stream in range(len(plan.streams)):
        if plan.shared[stream]:
            continue
        for slot in range(plan.num_slots):
            pieces = plan.pieces(stream, slot)
            state = slot_states.get(slot)
            if state is None:
                carry[stream].extend(pending[slot][stream] if slot in pending else pieces)
                continue
            carry[stream].extend(_rest_of_pass(pieces, seed, stream, slot, state["readers"][stream]))
            carry[stream].extend(_buffered(pieces, seed, stream, slot, state))
    return [_merged(pieces) for pieces in carry]


def _merged(pieces: list[Piece]) -> list[Piece]:
    """In index order, with adjacent pieces of one shard joined (fewer, longer reads)."""
    merged: list[Piece] = []
    for piece in sorted(pieces, key=lambda p: (p.shard, p.start)):
        if merged and merged[-1].shard == piece.shard and merged[-1].stop == piece.start:
            merged[-1] = Piece(piece.shard, merged[-1].start, piece.stop)
        elif piece.size > 0:
            merged.append(piece)
    return merged


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
        starts = np.concatenate([[0], np.cumsum([p.size for p in pieces], dtype=np.int64)])
        bounds = (np.arange(num_slots + 1, dtype=np.int64) * int(starts[-1])) // num_slots
        for slot in range(num_slots):
            first, last = int(bounds[slot]), int(bounds[slot + 1])
            # Only the pieces that overlap [first, last): found by bisection, not by a scan.
            for index in range(max(int(np.searchsorted(starts, first, side="right")) - 1, 0), len(pieces)):
                begin, end = int(starts[index]), int(starts[index + 1])
                if begin >= last:
                    break
                lo, hi = max(first, begin), min(last, end)
                if lo < hi:
                    piece = pieces[index]
                    per_slot[slot][stream].append(
                        Piece(piece.shard, piece.start + lo - begin, piece.start + hi - begin)
                    )
    return per_slot


def old_totals(slot_states: list[dict[str, Any]]) -> tuple[np.ndarray, Counter[str]]:
    """The old slots' draws per stream and skip counts, summed. (The utterances that sat in their
    buffers are counted again when the new slots read them: at most the buffers' size per slot.)"""
    streams = sum(np.array(state["streams"], dtype=np.int64) for state in slot_states)
    counters: Counter[str] = Counter()
    for state in slot_states:
        counters.update(state["counters"])
    return streams, counters
