"""Which utterances each loader slot owns, and how often each slot draws from each stream.

A *slot* is one (rank, dataloader worker) pair; ``num_slots`` = world size × workers. The plan makes
every utterance of a stream equally likely to be drawn, whichever slot owns it, and keeps each
stream's share of the sampled audio at its upsampling probability p_s, for any number of slots:

- **Equal cuts.** A stream with at least as many utterances as slots is cut into ``num_slots``
  consecutive runs of its utterances (its shards in index order, then their samples in stored order),
  whose sizes differ by at most one utterance. A run is read as *pieces*: a whole shard, or a
  contiguous range of samples of one shard, so a slot reads its share sequentially and only the
  shards at the ends of its run are shared with a neighbouring slot. Slots own disjoint utterances.
- **Shared small streams.** A stream with fewer utterances than slots cannot give every slot one:
  every slot reads all of it (each in its own order), and draws it at 1/num_slots of its rate.
- **Draws weighted by ownership.** A slot draws an utterance of stream s with weight
  p_s · n_ks / A_s, where n_ks is how many utterances it owns (or n_s / num_slots when shared) and
  A_s the stream's seconds (those the model can see: each utterance at most one crop). Each slot's
  expected audio from s is then proportional to the audio it owns, so an utterance's expected draw
  rate is the same in every slot as long as every slot emits the same amount of audio: batches are
  round-robin over slots and each holds about ``max_tokens`` samples.
- **Balanced load.** A slot's *load*, Σ_s p_s a_ks / A_s (a_ks: seconds it owns), is its share of the
  whole mixture; per-utterance rates differ between slots exactly as much as loads do. Runs of one
  stream differ by one utterance and shards by their mean duration, so runs are dealt to slots
  largest first onto the least-loaded slot (streams in decreasing p_s), which evens the loads out.

The plan depends only on the index and ``num_slots``, so every process computes the same one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xlsr.data.shard_format import ShardInfo

_REFINING_SWEEPS = 2


@dataclass(frozen=True)
class Piece:
    """Samples ``start <= i < stop`` (in stored order) of the stream's shard ``shard``."""

    shard: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class PlannedStream:
    """What the planner needs of a stream: its shards and its share of the sampled audio."""

    shards: tuple[ShardInfo, ...]
    hour_prob: float
    # Seconds of each shard as the upsampling counts them (what the model can see of it); None: stored.
    shard_seconds: tuple[float, ...] | None = None

    def seconds_of_shards(self) -> tuple[float, ...]:
        return self.shard_seconds if self.shard_seconds is not None else tuple(s.seconds for s in self.shards)


class UnitPlan:
    """The ownership plan of every slot for every stream (see the module docstring)."""

    def __init__(self, streams: Sequence[PlannedStream], num_slots: int):
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        self.streams, self.num_slots = list(streams), num_slots
        self.samples = [np.array([s.samples for s in st.shards], dtype=np.int64) for st in self.streams]
        self.seconds = np.array([sum(st.seconds_of_shards()) for st in self.streams], dtype=np.float64)
        self.utterances = np.array([int(n.sum()) for n in self.samples], dtype=np.int64)
        self.shared = self.utterances < num_slots
        # Per stream (cut streams only): run boundaries over the stream's concatenated samples, the
        # run each slot owns, and the estimated seconds of each run.
        self.bounds: dict[int, np.ndarray] = {}
        self.run_of_slot: dict[int, np.ndarray] = {}
        self.run_seconds: dict[int, np.ndarray] = {}
        self.loads = np.zeros(num_slots, dtype=np.float64)
        self._deal_runs()

    def _deal_runs(self) -> None:
        order = sorted(range(len(self.streams)), key=lambda s: (-self.streams[s].hour_prob, s))
        for s in order:
            if self.shared[s]:
                self.loads += self.streams[s].hour_prob / self.num_slots
                continue
            bounds = (np.arange(self.num_slots + 1, dtype=np.int64) * self.utterances[s]) // self.num_slots
            self.bounds[s] = bounds
            self.run_seconds[s] = np.diff(self._cumulative_seconds(s, bounds))
            self._deal(s)
        # Streams dealt early could not see the residue of later ones: deal each again against the rest.
        for _ in range(_REFINING_SWEEPS):
            for s in order:
                if not self.shared[s]:
                    self.loads -= self._run_loads(s)
                    self._deal(s)

    def _deal(self, s: int) -> None:
        runs = np.argsort(-self.run_seconds[s], kind="stable")  # largest run first ...
        slots = np.argsort(self.loads, kind="stable")  # ... onto the least-loaded slot
        self.run_of_slot[s] = np.empty(self.num_slots, dtype=np.int64)
        self.run_of_slot[s][slots] = runs
        self.loads += self._run_loads(s)

    def _run_loads(self, s: int) -> np.ndarray:
        """Each slot's share of the whole mixture from its run of stream ``s``."""
        return self.streams[s].hour_prob * self.run_seconds[s][self.run_of_slot[s]] / self.seconds[s]

    def _cumulative_seconds(self, stream: int, positions: np.ndarray) -> np.ndarray:
        """Estimated seconds before each sample position (mean duration within each shard)."""
        counts = self.samples[stream]
        seconds = np.array(self.streams[stream].seconds_of_shards(), dtype=np.float64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        seconds_before = np.concatenate([[0.0], np.cumsum(seconds)])
        shard = np.clip(np.searchsorted(starts, positions, side="right") - 1, 0, len(counts) - 1)
        per_sample = np.divide(seconds, counts, out=np.zeros_like(seconds), where=counts > 0)
        return seconds_before[shard] + (positions - starts[shard]) * per_sample[shard]

    def fingerprint(self) -> str:
        """Identifies who owns what: equal fingerprints mean a slot's read positions name the same
        samples (the shards, their counts, the slot count and the run each slot owns)."""
        digest = hashlib.sha256(str(self.num_slots).encode())
        for s, stream in enumerate(self.streams):
            digest.update(repr([(shard.url, shard.samples) for shard in stream.shards]).encode())
            if not self.shared[s]:
                digest.update(self.bounds[s].tobytes() + self.run_of_slot[s].tobytes())
        return digest.hexdigest()[:16]

    # -- one slot's view ----------------------------------------------------------------------------

    def pieces(self, stream: int, slot: int) -> tuple[Piece, ...]:
        """The pieces ``slot`` reads of ``stream``, in index order."""
        counts = self.samples[stream]
        if self.shared[stream]:
            return tuple(Piece(i, 0, int(n)) for i, n in enumerate(counts) if n > 0)
        run = int(self.run_of_slot[stream][slot])
        first, last = int(self.bounds[stream][run]), int(self.bounds[stream][run + 1])
        starts = np.concatenate([[0], np.cumsum(counts)])
        pieces = []
        for shard in range(len(counts)):
            lo, hi = max(first, int(starts[shard])), min(last, int(starts[shard + 1]))
            if lo < hi:
                pieces.append(Piece(shard, lo - int(starts[shard]), hi - int(starts[shard])))
        return tuple(pieces)

    def owned_utterances(self, stream: int, slot: int) -> float:
        """Utterances of ``stream`` ``slot`` owns; a shared stream counts 1/num_slots of its own."""
        if self.shared[stream]:
            return float(self.utterances[stream]) / self.num_slots
        run = int(self.run_of_slot[stream][slot])
        return float(self.bounds[stream][run + 1] - self.bounds[stream][run])

    def owned_seconds(self, stream: int, slot: int) -> float:
        if self.shared[stream]:
            return float(self.seconds[stream]) / self.num_slots
        return float(self.run_seconds[stream][int(self.run_of_slot[stream][slot])])

    def draw_weights(self, slot: int) -> np.ndarray:
        """Probability that ``slot`` draws its next utterance from each stream (sums to 1)."""
        weights = np.array(
            [
                st.hour_prob * self.owned_utterances(s, slot) / self.seconds[s]
                for s, st in enumerate(self.streams)
            ]
        )
        return weights / weights.sum()
