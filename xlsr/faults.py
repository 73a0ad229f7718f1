"""Fault injection for tests and drills: ``XLSR_FAULT``, read once at start-up (torch-free).

Forms, several joined by commas:

- ``nonfinite_loss@U[:N]``: the loss is non-finite at updates U .. U+N-1 (the batch is NaN);
- ``loss_spike@U[:N]``: the loss is ``SPIKE_FACTOR`` times larger at updates U .. U+N-1;
- ``hang@U:RANK``: that rank stops making progress before update U (it sleeps forever);
- ``slow@RANK:FACTOR``: that rank takes FACTOR times as long per update (it sleeps the difference).

Update U is the U-th update's worth of data the run draws: the step, until a health rollback
(`xlsr.engine.health`) goes back to an earlier step without going back in the data. So an injected
fault belongs to its data, as a real one would: the updates a rollback skips are not drawn again.

Any other value is refused in one line (exit code 2), so a typo never silently tests nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from xlsr.process import UserError

FAULT_ENV = "XLSR_FAULT"
SPIKE_FACTOR = 100.0
FORMS = "nonfinite_loss@U[:N], loss_spike@U[:N], hang@U:RANK or slow@RANK:FACTOR"
_NUMBER = "([0-9]{1,9})"  # ASCII digits, below 10^9
_SPAN = re.compile(rf"(nonfinite_loss|loss_spike)@{_NUMBER}(?::{_NUMBER})?")
_HANG = re.compile(rf"hang@{_NUMBER}:{_NUMBER}")
_SLOW = re.compile(rf"slow@{_NUMBER}:([0-9]{{1,4}}(?:\.[0-9]{{0,6}})?)")
MAX_SLOW_FACTOR = 1000.0


class FaultSpecError(UserError, ValueError):
    """``XLSR_FAULT`` holds something that is not one of ``FORMS``."""


@dataclass(frozen=True)
class Spans:
    """Updates U .. U+N-1 of each (U, N), without listing them."""

    spans: tuple[tuple[int, int], ...] = ()

    def __contains__(self, update: object) -> bool:
        return any(first <= update < first + count for first, count in self.spans)  # type: ignore[operator]

    def last(self) -> int:
        return max((first + count - 1 for first, count in self.spans), default=0)


@dataclass(frozen=True)
class Faults:
    nonfinite_loss: Spans = Spans()
    loss_spike: Spans = Spans()
    hangs: frozenset[tuple[int, int]] = frozenset()  # (update, rank)
    slow: dict[int, float] = field(default_factory=dict)  # rank -> factor

    def hangs_at(self, update: int, rank: int) -> bool:
        return (update, rank) in self.hangs

    def loss_factor(self, update: int) -> float:
        return SPIKE_FACTOR if update in self.loss_spike else 1.0

    def beyond(self, last_update: int, world_size: int) -> list[str]:
        """The faults that can never happen in this run (past its last update, or on no rank)."""
        late = max(self.nonfinite_loss.last(), self.loss_spike.last())
        found = [f"update {late} > the last update {last_update}"] if late > last_update else []
        found += [f"hang@{u}:{r}" for u, r in sorted(self.hangs) if u > last_update or r >= world_size]
        found += [f"slow@{r}" for r in sorted(self.slow) if r >= world_size]
        return found


def read_faults(environ: dict[str, str] | None = None) -> Faults:
    """The faults ``XLSR_FAULT`` asks for (none when unset or empty)."""
    text = (os.environ if environ is None else environ).get(FAULT_ENV, "").strip()
    spans: dict[str, list[tuple[int, int]]] = {"nonfinite_loss": [], "loss_spike": []}
    hangs, slow = set(), {}
    for part in (p.strip() for p in text.split(",")) if text else ():
        if match := _SPAN.fullmatch(part):
            first, count = int(match[2]), int(match[3] or 1)
            if first < 1 or count < 1:
                raise FaultSpecError(f"{FAULT_ENV}: {part!r}: U and N must be at least 1")
            spans[match[1]].append((first, count))
        elif match := _HANG.fullmatch(part):
            if int(match[1]) < 1:
                raise FaultSpecError(f"{FAULT_ENV}: {part!r}: U must be at least 1")
            hangs.add((int(match[1]), int(match[2])))
        elif (match := _SLOW.fullmatch(part)) and 1 <= float(match[2]) <= MAX_SLOW_FACTOR:
            if int(match[1]) in slow:
                raise FaultSpecError(f"{FAULT_ENV}: {part!r}: rank {match[1]} is slowed twice")
            slow[int(match[1])] = float(match[2])
        else:
            raise FaultSpecError(f"{FAULT_ENV}: cannot read {part!r}: expected {FORMS}, joined by commas")
    return Faults(
        Spans(tuple(spans["nonfinite_loss"])), Spans(tuple(spans["loss_spike"])), frozenset(hangs), slow
    )
