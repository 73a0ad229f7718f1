"""One rule for deriving random seeds: ``derive_seed(seed, purpose, *coordinates)``.

Every random stream in xlsr (weight init per unit, masks per micro-batch, layer drop per update,
each loader slot, the data reseed after a world-size change) is a pure function of the run's
``seed``, a purpose and integer coordinates, hashed by numpy's SeedSequence. Streams of different
purposes or coordinates are statistically independent, and none depends on how work is split over
ranks, so a run is reproducible from its config alone and resumes need no extra state.
"""

from __future__ import annotations

import numpy as np

# A distinct constant per use, so that e.g. the masks of update 3 and the init of unit 3 differ.
PURPOSES = {
    "init": 1,  # weight initialisation, per unit of the model
    "masks": 2,  # time masks, negatives and Gumbel noise, per (update, global micro-batch)
    "layerdrop": 3,  # which transformer layers run, per update (identical on every rank)
    "data_slot": 4,  # a loader slot's sampling generator, per slot
    "data_reseed": 5,  # the data stream after a world-size change, per update reached
    "valid": 6,  # masks and negatives of a validation utterance, per key
}


def derive_seed(seed: int, purpose: str, *coordinates: int) -> int:
    """A 63-bit seed for ``purpose`` at ``coordinates`` (e.g. ``derive_seed(1, "masks", step, micro)``)."""
    entropy = [int(seed) & (2**64 - 1), PURPOSES[purpose], *(int(c) for c in coordinates)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1
