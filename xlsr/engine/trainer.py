"""The training loop: stream → objective (model + loss) → update, with checkpoints, logging and
clean stops. The objective (`xlsr.objectives`) is the only part that knows what is learned.

One update = ``optim.update_freq`` micro-batches. Before any forward pass, the objective draws the
masks of all micro-batches (`Objective.prepare`), so the total number of loss frames N over all
ranks is known up front and each micro-batch's loss is scaled by world_size / N: with DDP/FSDP
averaging, the gradient is the per-frame mean over the whole effective batch, as fairseq's trainer
normalises it (wav2vec 2.0, arXiv 2006.11477 §3.2; fairseq ``Trainer.train_step`` with
``sample_size`` = masked frames). The hot loop never waits on the device: metrics accumulate in
device tensors and are reduced once per logging interval, and non-finite updates are skipped by the
optimizer on the device.

The trainer is assembled from stateful parts, each with ``state_dict()/load_state_dict()``: the
train state and RNGs (`xlsr.engine.state`), the data stream (`xlsr.data.loader`) and the backend
(model, optimizer, schedule, scaler: `xlsr.engine.backends`). The checkpointer saves them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from xlsr.config import SAMPLE_RATE, TrainConfig, effective_batch_hours, for_world_size, save_config
from xlsr.data.loader import DataStream
from xlsr.data.source import DataSource
from xlsr.data.stages import Batch
from xlsr.engine.backends import build_backend
from xlsr.engine.backends.base import Weights
from xlsr.engine.best import BestCheckpoint
from xlsr.engine.checkpoint import Checkpointer, read_trainer_state
from xlsr.engine.distributed import DistEnv, any_rank_host_each
from xlsr.engine.health import HealthEvent, HealthSentinel, strongest
from xlsr.engine.metrics import IntervalMeter, stream_metrics
from xlsr.engine.optim import reapply_schedule
from xlsr.engine.probing import ProbeScheduler
from xlsr.engine.reporting import Reporter, TrainResult, wandb_run_id
from xlsr.engine.state import RNGState, TrainState
from xlsr.engine.watchdog import Watchdog, hung_before
from xlsr.evaluation.validate import Validator
from xlsr.faults import FAULT_ENV, Faults, read_faults
from xlsr.fileio import atomic_write_text
from xlsr.objectives import Objective, Prepared, build_objective
from xlsr.process import HEALTH_EXIT_CODE, StopRequest
from xlsr.run_dir import CONFIG_NAME, HEALTH_DIR, ProbeLog, RunHistory
from xlsr.seeding import derive_seed
from xlsr.weights import ENCODER_PREFIXES, UnreadableCheckpointError, read_weights

log = logging.getLogger("xlsr.train")
# A rollback's record names the utterances of at most this many of the updates it skips (per rank,
# the keys are held in memory until the save after next).
RECENT_KEYS_MAX_UPDATES = 10_000


class Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, stop: StopRequest, data: DataSource | None = None):
        self.recipe = cfg  # as given: what config.yaml records (update_freq may be derived below)
        cfg = for_world_size(cfg, env.world_size)
        self.cfg, self.env, self.stop = cfg, env, stop
        if env.is_main:
            _log_effective_batch(cfg, env.world_size)
        self.checkpointer = Checkpointer(cfg, env)
        self.probes = ProbeScheduler(cfg, env)
        self.checkpointer.on_published = self.probes.published
        self.checkpointer.pinned_steps = self.probes.pinned_steps
        hang_s = cfg.health.hang_seconds(cfg.distributed.timeout_s)
        self.watchdog = Watchdog(Path(cfg.run_dir), self.checkpointer.token, env.rank, env.world_size, hang_s)
        self.resume_from = self.checkpointer.resume_path()
        torch.manual_seed(cfg.seed)  # dropout and other draws from the global generators
        resume_world = read_trainer_state(self.resume_from)["world_size"] if self.resume_from else None
        self.objective: Objective = build_objective(cfg)
        initial = _init_from_weights(cfg, self.objective) if self.resume_from is None else None
        self.sentinel = HealthSentinel(cfg.health, cfg.optim.max_consecutive_nonfinite)
        lr_multiplier = self.sentinel.lr_multiplier
        self.backend = build_backend(cfg, env, self.objective, resume_world, initial, lr_multiplier)
        if initial is not None and env.is_main:
            log.info("initialized weights from %s", cfg.checkpoint.init_from)
        self.model = self.backend.model
        self.data: DataSource = data or DataStream(cfg.data, cfg.seed, env.rank, env.world_size)
        self.state = TrainState(env.device)
        self.rng = RNGState(env.device)
        self.meter = IntervalMeter(cfg, env, self.objective)
        self.best = BestCheckpoint(self.objective.spec.best_key, cfg.checkpoint_dir, env.is_main)
        self.validator = (
            Validator(cfg, self.objective, env.rank, env.world_size, env.device) if cfg.data.valid else None
        )
        self.streams: list[dict] = []  # the latest per-(corpus, language) draws, for the summary
        self.faults = read_faults()  # XLSR_FAULT, for tests and drills (xlsr/faults.py)
        if env.is_main and self.faults != Faults():  # a leftover variable must not go unnoticed
            log.warning("%s=%s: injecting faults into this run (docs/training.md, Health)",
                        FAULT_ENV, os.environ.get(FAULT_ENV))  # fmt: skip
        for never in self.faults.beyond(cfg.last_update, env.world_size) if env.is_main else []:
            log.warning("XLSR_FAULT: %s: this fault never happens in this run", never)
        # (step, keys) of every update since the save before the last one: what a health rollback
        # to either of the two newest checkpoints skips.
        self.recent_keys: list[tuple[int, list[str]]] = []
        self.keys_after = 0  # the step of the save before the last one
        self.rolled_back_to: Path | None = None
        self._failure: str | None = None  # the type of the error that ended fit, if one did

    def __enter__(self) -> Trainer:
        """Resume (`restore`) and hold the parts open for `step` / `interval_metrics` calls."""
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, failure: str | None = None) -> None:
        """Release the data loader and the backend (process groups, engines, threads); ``failure``
        names the error that ended the run, if one did."""
        self.watchdog.stop(failure)
        self.data.close()
        self.backend.close()

    def restore(self) -> None:
        """Resume from the newest complete checkpoint (model, optimizer, schedule, RNG, data)."""
        path = self.resume_from
        if path is not None:
            rank_state = self.checkpointer.load(path, self.backend, self._shared())
            # A checkpoint from before the health sentinel: its data position is its step.
            self.sentinel.updates_drawn = max(self.sentinel.updates_drawn, self.state.step)
            # On another topology, the data position carries over from every old rank's (xlsr.data.carry).
            every_rank = lambda: self.checkpointer.rank_parts(path, "data")  # noqa: E731
            if rank_state is not None:
                self.rng.load_state_dict(rank_state["rng"])
                self.data.load_state_dict(rank_state["data"], all_ranks=every_rank)
                self.meter.load_state_dict(rank_state["meter"])
            else:
                saved_world = read_trainer_state(path)["world_size"]
                log.warning("checkpoint %s was written by %d ranks, resuming on %d: model and optimizer "
                            "state resharded", path.name, saved_world, self.env.world_size)  # fmt: skip
                reason = f"checkpoint {path.name} was written by {saved_world} ranks"
                self.data.carry_over(every_rank(), self.sentinel.updates_drawn, reason)
            self.watchdog.beat("start-up", self.state.step)
            if self.env.is_main:
                log.info("resumed from %s at update %d", path, self.state.step)
        if self.state.run_uid is None:  # a new run
            self.state.run_uid = self.checkpointer.token
        self.checkpointer.run_uid = self.state.run_uid
        if self.env.is_main:
            if self.state.wandb_run_id is None:
                self.state.wandb_run_id = wandb_run_id(Path(self.cfg.run_dir))
            # A fresh start keeps nothing (not even an earlier attempt's validation at update 0).
            history = RunHistory(Path(self.cfg.run_dir))
            history.keep_until(self.state.step if path is not None else -1, self.sentinel.updates_drawn)
            kept = self.state.step if path is not None else -1
            ProbeLog(Path(self.cfg.run_dir)).set_aside_after(kept, self.checkpointer.token)

    def fit(self) -> TrainResult:
        self.watchdog.start()  # from here on, every way out of fit stops it (close)
        result = TrainResult(status="finished", step=self.state.step, checkpoint=self.resume_from)
        reporter: Reporter | None = None
        try:
            self.restore()
            result.step, result.checkpoint = self.state.step, self.resume_from
            if self._stop_agreed():  # stopped during start-up: nothing new to save
                result.status = "preempted"
                return result
            reporter = self._start_reporting(result)
            if self.validator is not None and self.state.step == 0:
                self._validate(reporter)  # the baseline: the model before any update
            self.probes.start(self._probe_beat)
            self._loop(reporter, result)
        except BaseException as exc:
            self.watchdog.exit_if_hung()  # an error from a collective whose peer the watchdog ended
            result.status = "failed"
            self._failure = type(exc).__name__
            raise
        finally:
            result.step = self.state.step
            self.watchdog.beat("closing", self.state.step)
            if reporter is not None:
                reporter.close(result, self.best.summary(), self.streams)
            self.close(self._failure)
        return result

    def _start_reporting(self, result: TrainResult) -> Reporter:
        """The plan, the reporter (console, metrics.jsonl, W&B), the saved config, the data mixture."""
        self.watchdog.beat("start-up", self.state.step)
        plan = _plan_figures(self.cfg, self.env) if self.env.is_main else None
        reporter = Reporter(
            self.cfg, self.objective, self.env.is_main, self.state.step, self.state.wandb_run_id, plan
        )
        result.wandb_dir = reporter.wandb_dir
        if self.env.is_main:
            save_config(self.recipe, Path(self.cfg.run_dir) / CONFIG_NAME)
        reporter.data_mixture(self.data.probability_table(), self.data.hours, self.data.hour_probs)
        return reporter

    def _loop(self, reporter: Reporter, result: TrainResult) -> None:
        cfg, last = self.cfg, self.cfg.last_update
        self.meter.restart_clock()
        last_save = time.monotonic()
        while self.state.step < last:
            self.step()
            step = self.state.step
            reporter.update_done()
            if step % cfg.logging.interval == 0 or step == last:
                self.watchdog.beat("metrics", step)
                metrics = self.interval_metrics()
                events = self._health_events(step, metrics)  # adds the interval's largest z-scores
                reporter.interval(step, metrics)
                verdict = self._act_on_health(events, reporter)
                if verdict == "stop":
                    result.status, result.checkpoint = "unhealthy", self.rolled_back_to
                    return
                if verdict == "rollback":
                    result.checkpoint = self.rolled_back_to
                    continue  # back at an earlier step: nothing of this one is validated or saved
            best = self._validation_due(step) and self._validate(reporter)
            waiting = time.perf_counter()
            stop, timed = self._agreed_flags(time.monotonic() - last_save)
            self.meter.add_wait(time.perf_counter() - waiting)
            if best or stop or timed or step % cfg.checkpoint.interval_updates == 0 or step == last:
                result.checkpoint = self._save(final=best or stop or step == last)
                reporter.note(f"saved checkpoint {result.checkpoint}")
                self.recent_keys = [entry for entry in self.recent_keys if entry[0] > self.keys_after]
                self.keys_after = step
                if not stop:
                    self.probes.probe_inline(self._probe_beat)
                last_save = time.monotonic()
            if best:
                self.best.record()
            if stop:
                result.status = "preempted"
                return

    def step(self) -> None:
        """One optimizer update over ``update_freq`` micro-batches."""
        drawn = self.sentinel.updates_drawn + 1  # the data's own update number: faults belong to it
        self.watchdog.beat("data", self.state.step)
        self._injected_hang(drawn)
        self.objective.set_num_updates(self.model, self.state.step)
        started = time.perf_counter()
        batches = [next(self.data) for _ in range(self.cfg.optim.update_freq)]
        data_wait = time.perf_counter() - started
        self.watchdog.beat("update", self.state.step)
        self.sentinel.updates_drawn = drawn
        self.recent_keys.append((self.state.step + 1, [key for batch in batches for key in batch.keys]))
        del self.recent_keys[:-RECENT_KEYS_MAX_UPDATES]
        if drawn in self.faults.nonfinite_loss:
            for batch in batches:
                batch.source.fill_(float("nan"))
        first_micro = self.env.rank * self.cfg.optim.update_freq
        prepared = [self.prepare(batch, first_micro + index) for index, batch in enumerate(batches)]
        total_frames = torch.stack([p.sample_size for p in prepared]).sum()
        waiting = time.perf_counter()
        dist.all_reduce(total_frames)
        self.meter.add_wait(time.perf_counter() - waiting)
        # Loss sums are scaled so that the backends' average over ranks yields Σ∂L / N_total.
        loss_factor = self.env.world_size * self.backend.loss_multiplier() / total_frames.clamp(min=1)
        layer_keep = self._layer_keep()
        losses = []
        for index, (batch, micro) in enumerate(zip(batches, prepared, strict=True)):
            with self.backend.micro_batch(last=index == len(prepared) - 1), self.backend.autocast():
                loss, metrics = self.objective.loss(self.backend.module, micro, layer_keep)
                if drawn in self.faults.loss_spike:
                    loss = loss * self.faults.loss_factor(drawn)
                self.backend.backward(loss * loss_factor)
            losses.append(loss.detach())
            self.meter.add_micro_batch(loss.detach(), metrics, batch.num_samples, batch.source.shape[0])
        skipped, grad_norm = self.backend.update(torch.stack(losses).sum())
        self.state.record_update(skipped)
        self.meter.add_update(skipped, grad_norm, data_wait)
        if self.env.rank in self.faults.slow:  # XLSR_FAULT=slow@RANK:FACTOR, as if FACTOR times slower
            time.sleep((self.faults.slow[self.env.rank] - 1) * (time.perf_counter() - started))

    def _injected_hang(self, drawn: int) -> None:
        """XLSR_FAULT=hang@U:RANK: this rank stops making progress (the watchdog ends the job). Once
        per run directory: the job after a hang goes on, as after a transient one."""
        if self.faults.hangs_at(drawn, self.env.rank) and not hung_before(Path(self.cfg.run_dir)):
            log.warning("XLSR_FAULT: rank %d hangs before update %d", self.env.rank, drawn)
            while True:
                time.sleep(60)

    def prepare(self, batch: Batch, micro_index: int) -> Prepared:
        """Move a batch to the device and let the objective draw its masks there.

        Masks, negatives and any noise of the forward pass come from a generator seeded by (seed,
        update, index of the micro-batch in the global batch): they do not depend on how the global
        batch is split over ranks and micro-batches, and need no checkpointed state.
        """
        device = self.env.device
        generator = torch.Generator(device).manual_seed(
            derive_seed(self.cfg.seed, "masks", self.state.step, micro_index)
        )
        source = batch.source.to(device, non_blocking=True)
        padding = None if batch.padding_mask is None else batch.padding_mask.to(device, non_blocking=True)
        return self.objective.prepare(self.model, source, padding, generator)

    def _layer_keep(self) -> list[bool] | None:
        """Layer-drop decisions shared by all ranks (FSDP needs every rank to run the same layers)."""
        p = self.cfg.model.encoder_layerdrop
        if p <= 0:
            return None
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "layerdrop", self.state.step))
        return (torch.rand(self.cfg.model.encoder_layers, generator=generator) >= p).tolist()

    def _validation_due(self, step: int) -> bool:
        every = self.cfg.validation.interval_updates
        return self.validator is not None and (step % every == 0 or step == self.cfg.last_update)

    def _validate(self, reporter: Reporter) -> bool:
        """Validate (and probe) now; True if this is the best validation so far (after update 0)."""
        step = self.state.step
        progress = lambda: self.watchdog.beat("validation", step)  # noqa: E731
        result = self.validator.run(self.backend.module, self.model, self.backend.autocast, progress)
        best = self.best.offer(self.state.step, result.metrics)
        reporter.validation(self.state.step, {**result.metrics, "valid_seconds": result.seconds})
        return best

    def _health_events(self, step: int, metrics: dict[str, float]) -> list[HealthEvent]:
        """The sentinel's judgement of the interval that ends at ``step``."""
        past_warmup = step >= 4 * max(self.cfg.optim.warmup_updates, 1)  # chance level is normal before
        alarms = [*self.objective.alarms(metrics, past_warmup), *self.sentinel.stragglers(metrics)]
        events = self.sentinel.observe(self.meter.updates, alarms, step)
        metrics.update({f"health_{signal}_z_max": z for signal, z in self.sentinel.largest_z.items()})
        return events

    def _act_on_health(self, events: list[HealthEvent], reporter: Reporter) -> str | None:
        """Report the events and act on the strongest. Returns "stop", "rollback" (done: the run is
        back at an earlier step) or None (go on)."""
        worst = strongest(events)
        for event in events:
            if event is not worst or event.action == "warn":
                reporter.health(event, self.sentinel.updates_drawn, "warning")
        if worst is None or worst.action == "warn":
            return None
        reason = None
        if worst.action == "rollback":
            reason = self.sentinel.rollback_refused() or self._rollback(worst, reporter)
            if reason is None:
                return "rollback"
        self._stop_unhealthy(worst, reason or f"health.{worst.signal}=stop", reporter)
        return "stop"

    def _stop_unhealthy(self, event: HealthEvent, reason: str, reporter: Reporter) -> None:
        """End the run without saving. This run's checkpoints from after the onset are set aside, so
        the same command (after a change) resumes from a healthy state."""
        self.watchdog.beat("closing", self.state.step)
        self.checkpointer.wait()
        target = self.checkpointer.newest_intact_before(event.onset)
        resume, drawn, self.rolled_back_to = "", 0, None
        if target is not None:
            saved = read_trainer_state(target)
            to_step = saved["train"]["step"]
            self.checkpointer.set_aside_newer_than(to_step)
            self.best.load_state_dict(saved["best"])
            self.best.rewound(to_step)
            self.rolled_back_to, resume = target, f" (a rerun resumes from {target.name})"
            drawn = (saved.get("health") or {}).get("updates_drawn", to_step)
        outcome = f"stopped: {reason}; nothing saved{resume}; exit {HEALTH_EXIT_CODE}"
        # Logged at the data position of the checkpoint a rerun resumes from, so the rerun keeps it.
        reporter.health(event, drawn, outcome)

    def _rollback(self, event: HealthEvent, reporter: Reporter) -> str | None:
        """Restore the newest intact checkpoint from before ``event.onset`` and go on from there with
        the data where it is now (past the updates in between). Returns why it cannot, or None."""
        self.watchdog.beat("rollback", self.state.step)
        self.checkpointer.wait()
        target = self.checkpointer.newest_intact_before(event.onset)
        if target is None:
            return f"no intact checkpoint from before update {event.onset} to roll back to"
        to_step = read_trainer_state(target)["train"]["step"]
        window = self._skipped_window(to_step, len(self.sentinel.rollbacks) + 1)
        self.checkpointer.set_aside_newer_than(to_step)
        # The sentinel takes the target's judging state itself, keeping its run-long records.
        shared = {name: part for name, part in self._shared().items() if part is not self.sentinel}
        rank_state = self.checkpointer.load(target, self.backend, shared)
        self.sentinel.rolled_back(read_trainer_state(target).get("health"), event.step, to_step)
        self.best.rewound(to_step)
        if rank_state is not None:
            self.rng.load_state_dict(rank_state["rng"])
        self.meter.reset()
        self.recent_keys, self.keys_after = [], to_step
        reapply_schedule(self.backend.scheduler)
        self.rolled_back_to = target
        reporter.rewind(to_step)
        outcome = (
            f"rolled back to {target.name}, skipping the data of updates {to_step + 1}-{event.step} "
            f"(rollback {len(self.sentinel.rollbacks)} of at most {self.cfg.health.max_rollbacks} per "
            f"{self.cfg.health.rollback_window} updates)"
        )
        reporter.health(event, window["updates_drawn"], outcome, window)
        if self.env.is_main:  # the undone updates' lines go (probes: aside); the health events stay
            RunHistory(Path(self.cfg.run_dir)).keep_until(to_step, window["updates_drawn"])
            label = f"{self.checkpointer.token}-{len(self.sentinel.rollbacks)}"
            ProbeLog(Path(self.cfg.run_dir)).set_aside_after(to_step, label)
        return None

    def _skipped_window(self, to_step: int, number: int) -> dict:
        """What a rollback to ``to_step`` skips: the updates, and the keys of their utterances (every
        rank's; those since the save before the last one), per stream; the keys go to
        ``<run_dir>/health/rollback-N.json``."""
        mine = [key for step, keys in self.recent_keys if step > to_step for key in keys]
        first = next((step for step, _ in self.recent_keys if step > to_step), None)
        gathered: list | None = [mine]
        if self.env.world_size > 1:
            gathered = [None] * self.env.world_size if self.env.is_main else None
            dist.gather_object(mine, gathered, dst=0, group=self.env.cpu_group)
        keys = sorted(key for part in gathered or [] for key in part)  # rank 0's alone
        streams = {
            f"{c}/{lang}": sum(k.startswith(f"{c}_{lang}_") for k in keys) for c, lang in self.data.hours
        }
        window = {
            "to_step": to_step,
            "updates_drawn": self.sentinel.updates_drawn,
            "skipped_updates": self.state.step - to_step,
            "keys_from_update": first,
            "utterances_by_stream": {name: n for name, n in streams.items() if n},
            "keys_file": str(Path(self.cfg.run_dir) / HEALTH_DIR / f"rollback-{number}.json"),
        }
        if self.env.is_main:
            path = Path(window["keys_file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps({**window, "keys": keys}, indent=1))
        return window

    def _stream_rows(self) -> list[dict]:
        """What the job has drawn per (corpus, language), summed over every rank and worker."""
        totals = self.data.telemetry()
        if self.env.world_size > 1:
            dist.all_reduce(totals, group=self.env.cpu_group)
        return self.data.stream_report(totals)

    def interval_metrics(self) -> dict[str, float]:
        metrics = self.meter.reduce(self.state.step, self.data.skipped())
        self.streams = self._stream_rows()
        metrics.update(stream_metrics(self.streams))
        metrics.update(self.objective.schedule_metrics(self.model))
        metrics.update(
            lr=self.backend.lr(),
            skipped_updates_total=float(self.state.skipped_total.item()),
            loss_scale=self.backend.loss_scale(),
            world_size=self.env.world_size,
            update_freq=self.cfg.optim.update_freq,
        )
        return metrics

    def _stop_agreed(self) -> bool:
        """True on every rank if any rank received a stop signal."""
        return self._agreed_flags(since_save_s=0.0)[0]

    def _agreed_flags(self, since_save_s: float) -> tuple[bool, bool]:
        """(a stop signal reached any rank, ``checkpoint.interval_minutes`` passed on any rank's
        clock), the same on every rank: one host-side exchange per update."""
        minutes = self.cfg.checkpoint.interval_minutes
        due = 0 < minutes <= since_save_s / 60
        stop, timed = any_rank_host_each([self.stop.requested, due], self.env)
        return stop, timed

    def _probe_beat(self) -> None:
        self.watchdog.beat("probes", self.state.step)

    def _shared(self) -> dict:
        """The stateful parts every rank shares, saved once per checkpoint (``trainer.pt``)."""
        return {"train": self.state, "backend": self.backend, "best": self.best, "health": self.sentinel}

    def _save(self, final: bool) -> Path:
        self.watchdog.beat("checkpoint save", self.state.step)
        # The last save of a run (finished or stopped) is synchronous: nothing may be left in flight.
        return self.checkpointer.save(
            self.state.step,
            self.backend,
            shared=self._shared(),
            per_rank={"rng": self.rng, "data": self.data, "meter": self.meter},
            asynchronous=self.cfg.checkpoint.async_save and not final,
        )


def _log_effective_batch(cfg: TrainConfig, world_size: int) -> None:
    hours = effective_batch_hours(cfg, world_size)
    if cfg.optim.batch_tokens:
        target = cfg.optim.batch_tokens / SAMPLE_RATE / 3600
        log.info(
            "optim.batch_tokens=%d on %d rank(s): update_freq %d, effective batch %.3f h of audio per "
            "update (target %.3f h)",
            cfg.optim.batch_tokens, world_size, cfg.optim.update_freq, hours, target,
        )  # fmt: skip
    else:
        log.info("effective batch %.3f h of audio per update (%d rank(s) × update_freq %d × max_tokens %d)",
                 hours, world_size, cfg.optim.update_freq, cfg.data.max_tokens)  # fmt: skip


def _plan_figures(cfg: TrainConfig, env: DistEnv) -> dict | None:
    """`xlsr plan`'s figures for this run (logged as one paragraph, kept in the W&B config). The plan
    is advice: a failure to make one is a warning, never a stop."""
    from xlsr.plan import plan_json, summary_paragraph
    from xlsr.plan.build import plan_of_run

    try:
        name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        plan = plan_of_run(cfg, env.world_size, per_node, name)
        log.info("%s", summary_paragraph(plan))
        return plan_json(plan)
    except Exception as exc:  # advice only: whatever went wrong, training goes on
        log.warning("no plan for this run (%s: %s)", type(exc).__name__, exc)
        return None


def _init_from_weights(cfg: TrainConfig, objective: Objective) -> Weights | None:
    """Weights named by ``checkpoint.init_from`` (any format `xlsr.weights` reads).

    Weights of the whole model, trained with the run's objective, initialise everything. Weights of
    another objective (e.g. a released wav2vec 2.0 model under a BEST-RQ run), or of an encoder
    alone (an encoder-only Hugging Face export), initialise the shared encoder, all of whose parameters
    they must hold; the run's objective head starts from its own init.
    """
    if not cfg.checkpoint.init_from:
        return None
    weights = read_weights(cfg.checkpoint.init_from)
    source = cfg.checkpoint.init_from
    if weights.objective.name == cfg.objective.name and not weights.encoder_only:
        return Weights(weights.state, source)
    encoder = weights.encoder_state()
    with torch.device("meta"):
        needed = [key for key in objective.build_model().state_dict() if key.startswith(ENCODER_PREFIXES)]
    missing = sorted(set(needed) - set(encoder))
    if missing:
        raise UnreadableCheckpointError(
            f"checkpoint.init_from={source} has no weights for {', '.join(missing[:5])}"
        )
    what = "holds only an encoder" if weights.encoder_only else f"was trained with {weights.objective.name}"
    log.info("checkpoint.init_from=%s %s: its encoder initialises this %s run, whose head starts fresh",
             source, what, cfg.objective.name)  # fmt: skip
    return Weights(encoder, source, strict=False)
