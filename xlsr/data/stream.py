"""The stateful, deterministic sample stream of one loader slot: the stages of
`xlsr.data.stages` composed.

A *slot* is one (rank, dataloader worker) pair. Which utterances each slot owns, and how often it draws
each stream, is planned in ``xlsr.data.planning``: slots own disjoint equal runs of every stream with
at least as many utterances as slots (and share the smaller ones), and draw streams in proportion to
what they own, so every utterance of a stream has the same expected draw rate whichever slot owns it.
A slot reads its pieces in a fresh seeded order each pass, forever (`xlsr.data.units`): there are no
epochs for ranks to disagree on, and the trainer owns the step count.

Per slot, one seeded RNG drives, in a fixed order: the choice of stream for the next utterance
(upsampling), the shuffle buffer, and the random crop. Every buffered sample carries a reference
(stream, pass, piece position, offset), so the slot's state is small — RNG state, read positions and
buffer references — and restoring it re-reads exactly the buffered samples: a resumed run sees
the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from xlsr.config import DataConfig
from xlsr.data.planning import UnitPlan
from xlsr.data.stages import Batch, Bucketer, Collator, Mixer, ShuffleBuffer
from xlsr.data.units import StreamSpec
from xlsr.seeding import derive_seed


class SlotPipeline:
    """Mixer → shuffle buffer → length buckets → collator: cropped, padded batches."""

    def __init__(
        self,
        specs: list[StreamSpec],
        cfg: DataConfig,
        slot: int,
        num_slots: int,
        seed: int,
        plan: UnitPlan | None = None,
    ):
        if cfg.max_sample_size > cfg.max_tokens:
            raise ValueError(
                f"data.max_sample_size ({cfg.max_sample_size}) must not exceed "
                f"data.max_tokens ({cfg.max_tokens})"
            )
        self.counters: Counter[str] = Counter()  # samples batched, and skips by reason (shared)
        self.plan = plan or UnitPlan([spec.planned() for spec in specs], num_slots)
        # Its state is checkpointed, so changing how it is seeded only changes fresh starts.
        self.rng = np.random.default_rng(derive_seed(seed, "data_slot", slot))
        self.mixer = Mixer(specs, cfg, self.plan, slot, seed, self.rng, self.counters)
        self.shuffle = ShuffleBuffer(self.mixer, cfg.shuffle_buffer, self.rng)
        self.bucketer = Bucketer(self.shuffle, cfg)
        self.collator = Collator(cfg, self.rng, self.counters)

    def next_batch(self) -> Batch:
        while True:
            batch = self.collator([sample for _, sample in self.bucketer()])
            if batch is not None:
                return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            **self.mixer.state_dict(),  # "readers", "streams"
            "shuffle": self.shuffle.refs(),
            "buckets": self.bucketer.refs(),
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mixer.load_state_dict(state)
        self.rng.bit_generator.state = state["rng"]
        buffered = [tuple(ref) for ref in state["shuffle"]] + [tuple(r) for b in state["buckets"] for r in b]
        samples = self.mixer.fetch(buffered)
        self.shuffle.restore(state["shuffle"], samples)
        self.bucketer.restore(state["buckets"], samples)
        self.counters.clear()  # in place: the readers share it
        self.counters.update(state["counters"])

    def close(self) -> None:
        """Close every open shard (files and `pipe:` processes)."""
        self.mixer.close()
