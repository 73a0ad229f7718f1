"""What the trainer reads batches from: the `DataSource` protocol.

`xlsr.data.loader.DataStream` (sharded corpora, DataLoader workers) is the one every run uses;
`FixedSource` is the base of sources that hand out prepared batches (benchmarks, engine tests), so
that they implement the whole protocol with nothing to mix, skip or report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from xlsr.data.stages import Batch

Stream = tuple[str, str]  # (corpus, language)


@runtime_checkable
class DataSource(Protocol):
    """An infinite iterator of `Batch` for one rank, and a stateful part of every checkpoint."""

    hours: dict[Stream, float]  # hours of audio per stream
    hour_probs: dict[Stream, float]  # the upsampled probability of drawing each stream

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def probability_table(self) -> str:
        """The upsampling table the run prints at start."""
        ...

    def skipped(self) -> dict[str, int]:
        """Samples and units dropped so far on this rank, by reason."""
        ...

    def telemetry(self) -> torch.Tensor:
        """This rank's draws per stream (streams × counts, float64), to be summed over ranks."""
        ...

    def stream_report(self, totals: torch.Tensor) -> list[dict[str, Any]]:
        """Per stream, from ``telemetry()`` summed over ranks: shares, hours, passes."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(
        self, state: dict[str, Any], all_ranks: Callable[[], list[dict[str, Any]]] | None = None
    ) -> None:
        """Continue exactly where ``state`` was taken (or restart deterministically, saying why);
        ``all_ranks()`` gives every old rank's state, for a change of loader workers."""
        ...

    def carry_over(self, old: list[dict[str, Any]], updates_done: int, reason: str) -> None:
        """Go on from the states of every rank of another world size (``updates_done`` updates'
        worth of data drawn), or restart deterministically, saying why."""
        ...

    def close(self) -> None: ...


class FixedSource:
    """A source of prepared batches: subclasses define ``batch(index)``; the position is its state."""

    def __init__(self) -> None:
        self.consumed = 0
        self.hours: dict[Stream, float] = {("fixed", "xx"): 1.0}
        self.hour_probs: dict[Stream, float] = {("fixed", "xx"): 1.0}

    def batch(self, index: int) -> Batch:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = self.batch(self.consumed)
        self.consumed += 1
        return batch

    def probability_table(self) -> str:
        return "fixed batches (no corpora)"

    def skipped(self) -> dict[str, int]:
        return {}

    def telemetry(self) -> torch.Tensor:
        return torch.zeros(0, 3, dtype=torch.float64)

    def stream_report(self, totals: torch.Tensor) -> list[dict[str, Any]]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(
        self, state: dict[str, Any], all_ranks: Callable[[], list[dict[str, Any]]] | None = None
    ) -> None:
        self.consumed = state["consumed"]

    def carry_over(self, old: list[dict[str, Any]], updates_done: int, reason: str) -> None:
        self.reseed(updates_done, reason)

    def reseed(self, updates_done: int, reason: str) -> None:
        pass

    def close(self) -> None:
        pass
