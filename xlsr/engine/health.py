"""The health sentinel: what a sick run looks like, and what to do about it (``health`` config).

Once per logging interval the trainer hands the sentinel the interval's per-update values (loss,
gradient norm, skipped or not: fetched with the interval's metrics, so no extra host sync) and the
objective's alarms. The sentinel answers with events, each naming a signal, the update where the
anomaly began (its onset) and the action the config gives that signal:

- ``nonfinite``: ``optim.max_consecutive_nonfinite`` skipped updates in a row;
- ``loss_spike`` / ``grad_norm``: an update's loss (or log gradient norm) more than ``z`` robust
  standard deviations (1.4826 x the median absolute deviation) above the median of the last
  ``window`` healthy updates;
- ``at_chance`` / ``codebook``: the objective's failure signatures (its ``alarms``), after warmup.

Every rank sees the same all-reduced values, so every rank reaches the same decision without a
collective. The sentinel is a stateful part of the checkpoint: a resumed run judges exactly as the
uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from xlsr.config import HealthConfig
from xlsr.objectives import Alarm

SIGNALS = ("nonfinite", "loss_spike", "grad_norm", "at_chance", "codebook", "straggler")
# A rank whose own work per update is this much above the median over ranks, in this many logging
# intervals in a row, is named in a warning (then every ``STRAGGLER_REPEAT`` intervals it stays so).
STRAGGLER_RATIO, STRAGGLER_INTERVALS, STRAGGLER_REPEAT = 1.25, 3, 20
ACTION_ORDER = {"warn": 0, "rollback": 1, "stop": 2}
MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class UpdateRecord:
    """One update as the whole job saw it."""

    step: int  # the step the update took the run to
    loss: float  # bits per loss frame, over all ranks (NaN when not finite)
    grad_norm: float
    skipped: bool


@dataclass
class HealthEvent:
    signal: str
    action: str  # "warn", "stop" or "rollback"
    onset: int  # the first update of the anomaly
    step: int  # the update at which it was judged (the end of a logging interval)
    message: str

    def record(self) -> dict[str, Any]:
        return asdict(self)


class HealthSentinel:
    def __init__(self, cfg: HealthConfig, nonfinite_limit: int):
        self.cfg, self.nonfinite_limit = cfg, nonfinite_limit
        self._start_judging()
        # Kept across rollbacks: the rollbacks so far, and the updates' worth of data drawn (which a
        # rollback does not take back). Each rollback: (data position when it happened, step, to).
        self.rollbacks: list[tuple[int, int, int]] = []
        self.updates_drawn = 0
        self._straggler = (-1, 0)  # (rank, intervals in a row it was the slowest by far)
        # The last interval's largest z-scores (logged: how close a healthy run comes to a threshold).
        self.largest_z = {"loss_spike": 0.0, "grad_norm": 0.0}

    def _start_judging(self) -> None:
        self.losses: list[float] = []  # the last ``window`` healthy updates
        self.log_grad_norms: list[float] = []
        self.streak, self.streak_onset = 0, 0
        self.alarm_onsets: dict[str, int] = {}
        self.lr_scale, self.lr_scale_until = 1.0, 0

    # -- judging ------------------------------------------------------------------------------------

    def observe(self, updates: list[UpdateRecord], alarms: list[Alarm], step: int) -> list[HealthEvent]:
        """The events of one logging interval, at most one per signal, ordered by onset."""
        events: dict[str, HealthEvent] = {}
        self.largest_z = {"loss_spike": 0.0, "grad_norm": 0.0}
        for update in updates:
            for signal, onset, message in self._judge(update):
                if signal not in events:
                    events[signal] = self._event(signal, onset, step, message)
        first = updates[0].step if updates else step
        active = {alarm.signal for alarm in alarms}
        self.alarm_onsets = {s: self.alarm_onsets.get(s, first) for s in active}
        for alarm in alarms:
            events.setdefault(alarm.signal, self._event(alarm.signal, self.alarm_onsets[alarm.signal], step,
                                                        alarm.message))  # fmt: skip
        return sorted(events.values(), key=lambda e: (e.onset, SIGNALS.index(e.signal)))

    def _event(self, signal: str, onset: int, step: int, message: str) -> HealthEvent:
        return HealthEvent(signal, getattr(self.cfg, signal, "warn"), onset, step, message)

    def stragglers(self, metrics: dict[str, float]) -> list[Alarm]:
        """A warning when the same rank works persistently longer than the others (the metrics'
        ``rank_work_s_*``, `xlsr.engine.metrics`); they wait for it in every collective."""
        slowest = int(metrics["slowest_rank"])
        ratio = metrics["rank_work_s_max"] / max(metrics["rank_work_s_median"], 1e-9)
        if ratio < STRAGGLER_RATIO:
            self._straggler = (-1, 0)
            return []
        rank, count = self._straggler
        self._straggler = (slowest, count + 1 if rank == slowest else 1)
        count = self._straggler[1]
        if count < STRAGGLER_INTERVALS or (count - STRAGGLER_INTERVALS) % STRAGGLER_REPEAT:
            return []
        message = (f"rank {slowest} works {ratio:.2f} x the median rank's time per update for {count} "
                   "logging intervals: every other rank waits for it")  # fmt: skip
        return [Alarm("straggler", message)]

    def _judge(self, update: UpdateRecord) -> list[tuple[str, int, str]]:
        """(signal, onset, message) of each anomaly this update shows."""
        # A non-finite gradient norm without the skip flag: DeepSpeed's own fp16 overflow skip.
        if update.skipped or not (math.isfinite(update.loss) and math.isfinite(update.grad_norm)):
            self.streak += 1
            if self.streak == 1:
                self.streak_onset = update.step
            if self.streak == self.nonfinite_limit:
                message = (f"{self.streak} updates in a row had a non-finite loss or gradient "
                           f"(updates {self.streak_onset}-{update.step})")  # fmt: skip
                return [("nonfinite", self.streak_onset, message)]
            return []
        self.streak = 0
        found = []
        z = self._z(self.losses, update.loss)
        self.largest_z["loss_spike"] = max(self.largest_z["loss_spike"], z)
        if z > self.cfg.loss_spike_z:
            found.append(("loss_spike", update.step, f"loss {update.loss:.3f} bits at update {update.step}: "
                          f"{z:.1f} robust sd above the median {statistics.median(self.losses):.3f} of "
                          f"the last {len(self.losses)} updates"))  # fmt: skip
        log_norm = math.log(max(update.grad_norm, 1e-12))
        z_grad = self._z(self.log_grad_norms, log_norm)
        self.largest_z["grad_norm"] = max(self.largest_z["grad_norm"], z_grad)
        if z_grad > self.cfg.grad_norm_z:
            message = f"gradient norm {update.grad_norm:.3g} at update {update.step}: {z_grad:.1f} robust sd"
            found.append(("grad_norm", update.step, message + " above the recent median"))
        if not found:  # only healthy updates make the reference
            self._remember(self.losses, update.loss)
            self._remember(self.log_grad_norms, log_norm)
        return found

    def _z(self, window: list[float], value: float) -> float:
        """How many robust standard deviations ``value`` lies above the window's median."""
        if len(window) < max(self.cfg.window // 4, 8):
            return 0.0
        median = statistics.median(window)
        mad = statistics.median(abs(v - median) for v in window)
        # A floor on the spread: a window of near-equal values must not make noise look like a spike.
        sigma = max(MAD_TO_SIGMA * mad, 1e-3 * abs(median), 1e-6)
        return (value - median) / sigma

    def _remember(self, window: list[float], value: float) -> None:
        window.append(value)
        del window[: -self.cfg.window]

    # -- rollbacks ----------------------------------------------------------------------------------

    def rollback_refused(self) -> str | None:
        """Why another rollback would be one too many, or None."""
        recent = [r for r in self.rollbacks if r[0] > self.updates_drawn - self.cfg.rollback_window]
        if len(recent) >= self.cfg.max_rollbacks:
            return (f"{len(recent)} rollback(s) within the last {self.cfg.rollback_window} updates "
                    f"(health.max_rollbacks={self.cfg.max_rollbacks})")  # fmt: skip
        return None

    def rolled_back(self, saved: dict[str, Any] | None, step: int, to_step: int) -> None:
        """Take the judging state of the checkpoint rolled back to; keep the run-long records."""
        rollbacks, drawn = [*self.rollbacks, (self.updates_drawn, step, to_step)], self.updates_drawn
        self._start_judging()
        if saved is not None:
            self.load_state_dict(saved)
        self.rollbacks, self.updates_drawn = rollbacks, drawn
        if self.cfg.rollback_lr_scale < 1 and self.cfg.rollback_lr_updates > 0:
            self.lr_scale = self.cfg.rollback_lr_scale
            self.lr_scale_until = to_step + self.cfg.rollback_lr_updates

    def lr_multiplier(self, num_updates: int) -> float:
        """The factor on the scheduled LR at ``num_updates`` (below 1 for a while after a rollback)."""
        return self.lr_scale if num_updates < self.lr_scale_until else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "log_grad_norms": list(self.log_grad_norms),
            "streak": [self.streak, self.streak_onset],
            "alarm_onsets": dict(self.alarm_onsets),
            "rollbacks": [list(r) for r in self.rollbacks],
            "updates_drawn": self.updates_drawn,
            "lr_scale": [self.lr_scale, self.lr_scale_until],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses, self.log_grad_norms = list(state["losses"]), list(state["log_grad_norms"])
        self.streak, self.streak_onset = state["streak"]
        self.alarm_onsets = dict(state["alarm_onsets"])
        self.rollbacks = [tuple(r) for r in state["rollbacks"]]
        self.updates_drawn = state["updates_drawn"]
        self.lr_scale, self.lr_scale_until = state["lr_scale"]


def strongest(events: list[HealthEvent]) -> HealthEvent | None:
    """The event whose action weighs most (stop > rollback > warn); the earliest onset on ties."""
    return max(events, key=lambda e: (ACTION_ORDER[e.action], -e.onset), default=None)
