"""The training loop: stream → model → loss → update, with checkpoints, logging and clean stops.

One update = ``optim.update_freq`` micro-batches. Before any forward pass, the masks of all
micro-batches are drawn, so the total number of masked frames N over all ranks is known up front
and each micro-batch's loss is scaled by world_size / N: with DDP/FSDP averaging, the gradient is
the per-masked-frame mean over the whole effective batch, exactly as fairseq's trainer normalizes
it (reference spec §2.4). The hot loop never waits on the device: metrics accumulate in device
tensors and are reduced once per logging interval, and non-finite updates are skipped by the
optimizer on the device.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from tqdm import tqdm

from xlsr.config import TrainConfig, atomic_write_text, save_config
from xlsr.data.loader import DataStream
from xlsr.data.stream import Batch
from xlsr.engine.backends import build_backend
from xlsr.engine.checkpoint import Checkpointer, complete_checkpoints, read_trainer_state
from xlsr.engine.distributed import DistEnv
from xlsr.engine.flops import SAMPLE_RATE, conv_output_lengths, peak_flops, train_flops_per_crop
from xlsr.engine.metrics import BITS, MetricsLogger, collapse_alarms, format_console_line, wandb_run_id
from xlsr.engine.parallel import PRECISION_DTYPES
from xlsr.model.loss import pretraining_loss
from xlsr.model.masking import compute_mask_indices
from xlsr.model.wav2vec2 import Wav2Vec2Model

log = logging.getLogger("xlsr.train")

# sysexits EX_TEMPFAIL: stopped by a signal after saving; run the same command again to continue.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
# Per-micro-batch sums that pretraining_loss returns in its metrics.
LOSS_METRICS = (
    "loss_contrastive",
    "loss_diversity",
    "loss_feature_penalty",
    "correct",
    "count",
    "sample_size",
    "prob_perplexity",
    "code_perplexity",
)
DATA_SKIP_REASONS = ("too_short", "undecodable", "broken_units")
# Device-side sums kept between logging intervals, in this order.
SUM_KEYS = ("loss", *LOSS_METRICS, "micro_batches", "audio_samples", "crops", "grad_norm", "skipped_updates")


class NonFiniteError(RuntimeError):
    pass


@dataclass
class TrainResult:
    status: str  # "finished" or "preempted"
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    wandb_dir: str | None = None


class Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, data: DataStream | None = None):
        self.cfg, self.env = cfg, env
        self.checkpointer = Checkpointer(cfg, env)
        self.resume_from = self.checkpointer.resume_path()
        torch.manual_seed(cfg.seed)
        if cfg.distributed.backend == "fsdp":  # sharded first, then initialised shard by shard
            with torch.device("meta"):
                self.model = Wav2Vec2Model(cfg.model)
        else:  # identical initial weights on every rank: the init depends on the seed alone
            self.model = Wav2Vec2Model(cfg.model, init_seed=cfg.seed).to(env.device)
        imported = self._imported_weights() if self.resume_from is None else None
        if imported is not None and cfg.distributed.backend == "deepspeed":
            self._load_imported(self.model, imported, full_state_dict=False)  # before ZeRO partitions it
        resume_world = read_trainer_state(self.resume_from)["world_size"] if self.resume_from else None
        self.backend = build_backend(self.model, cfg, env, resume_world)
        if imported is not None and cfg.distributed.backend != "deepspeed":
            self._load_imported(self.backend.module, imported, full_state_dict=True)
        self.data = data or DataStream(cfg.data, cfg.seed, env.rank, env.world_size)
        self.step = 0
        self.consecutive_nonfinite = torch.zeros((), device=env.device)
        self.skipped_total = torch.zeros((), device=env.device)
        self.sums = torch.zeros(len(SUM_KEYS), device=env.device)
        self.stop_requested = False
        self.run_id: str | None = None

    # -- setup --------------------------------------------------------------------------------------

    def restore(self) -> None:
        """Resume from the newest complete checkpoint (model, optimizer, schedule, RNG, data)."""
        path = self.resume_from
        if path is None:
            self.run_id = wandb_run_id(self.cfg) if self.env.is_main else None
            self._forget_history_after(0)
            return
        trainer_state, rank_state = self.checkpointer.load(path, self.backend)
        self.step = trainer_state["step"]
        self.skipped_total.copy_(trainer_state["skipped_total"])
        self.run_id = trainer_state.get("wandb_run_id")
        if rank_state is not None:
            self._set_rng_state(rank_state["rng"])
            self.data.load_state_dict(rank_state["data"], updates_done=self.step)
        else:
            reason = f"checkpoint {path.name} was written by {trainer_state['world_size']} ranks"
            log.warning(
                "%s, resuming on %d: model and optimizer state resharded", reason, self.env.world_size
            )
            self.data.reseed(self.step, reason)
        if self.env.is_main:
            log.info("resumed from %s at update %d", path, self.step)
        self._forget_history_after(self.step)

    def _forget_history_after(self, step: int) -> None:
        """Drop metrics.jsonl lines past the resumed update (a kill after them lost those updates;
        they are trained again), so the history has each update once."""
        history = Path(self.cfg.run_dir) / "metrics.jsonl"
        if not self.env.is_main or not history.is_file():
            return
        lines = history.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) < len(lines):
            log.warning(
                "metrics.jsonl: dropped %d line(s) after update %d (retrained)", len(lines) - len(kept), step
            )
            atomic_write_text(history, "".join(line + "\n" for line in kept))

    def _imported_weights(self) -> dict[str, torch.Tensor] | None:
        """Weights named by ``checkpoint.init_from`` (an `xlsr import` file, HF directory or checkpoint)."""
        if not self.cfg.checkpoint.init_from:
            return None
        from xlsr.pretrained import load_model_weights

        return load_model_weights(self.cfg.checkpoint.init_from)[1]

    def _load_imported(self, module: torch.nn.Module, state: dict, full_state_dict: bool) -> None:
        path = self.cfg.checkpoint.init_from
        try:
            if full_state_dict:  # DDP or FSDP2: each rank keeps its shard of the full state
                set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))
            else:
                module.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise ValueError(
                f"checkpoint.init_from={path} does not fit the configured model: {exc}"
            ) from None
        if self.env.is_main:
            log.info("initialized weights from %s", path)

    def _rng_state(self) -> dict[str, Any]:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
        }
        if self.env.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.env.device)
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        kind, keys, *rest = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        random.setstate(state["python"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.env.device)

    def _install_signal_handlers(self) -> None:
        def request_stop(signum, _frame):
            self.stop_requested = True
            log.warning(
                "rank %d got %s: saving a checkpoint after this update",
                self.env.rank,
                signal.Signals(signum).name,
            )

        for signum in STOP_SIGNALS:
            signal.signal(signum, request_stop)

    # -- the loop -----------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        self.restore()
        self._install_signal_handlers()
        logger = MetricsLogger(self.cfg, self.env.is_main, self.run_id)
        result = TrainResult(status="finished", step=self.step, wandb_dir=logger.wandb_dir)
        if self.env.is_main:
            save_config(self.cfg, Path(self.cfg.run_dir) / "config.yaml")
            print(
                "Upsampled data mixture (hours, natural share, sampled share):\n"
                + self.data.probability_table()
            )
            logger.log_probability_table(self.data.hours, self.data.hour_probs)
        last = self.cfg.last_update
        progress = tqdm(
            total=last,
            initial=self.step,
            disable=not (self.env.is_main and self.cfg.logging.progress) or None,
            desc="pretraining",
            unit="upd",
            dynamic_ncols=True,
        )
        interval_start, data_wait = time.perf_counter(), 0.0
        try:
            while self.step < last:
                data_wait += self._train_update()
                self.step += 1
                progress.update(1)
                if self.step % self.cfg.logging.interval == 0 or self.step == last:
                    metrics = self._reduce_metrics(time.perf_counter() - interval_start, data_wait)
                    interval_start, data_wait = time.perf_counter(), 0.0
                    result.history.append(metrics)
                    self._report(metrics, logger, progress)
                elif self.step % max(1, self.cfg.optim.max_consecutive_nonfinite) == 0:
                    self._check_nonfinite()
                stop = self._stop_agreed()
                if stop or self.step % self.cfg.checkpoint.interval_updates == 0 or self.step == last:
                    result.checkpoint = self._save(final=stop or self.step == last)
                if stop:
                    result.status = "preempted"
                    break
        finally:
            progress.close()
            logger.close()
        result.step = self.step
        if self.env.is_main:
            self._write_summary(result)
        return result

    def _write_summary(self, result: TrainResult) -> None:
        """summary.json: first and last logged metrics of the whole run (across resumes)."""
        run_dir = Path(self.cfg.run_dir)
        history_file = run_dir / "metrics.jsonl"
        lines = history_file.read_text().splitlines() if history_file.exists() else []
        if not lines:
            return
        latest = complete_checkpoints(self.cfg.checkpoint_dir)
        summary = {
            "status": result.status,
            "step": result.step,
            "first": json.loads(lines[0]),
            "last": json.loads(lines[-1]),
            "checkpoint": str(latest[-1][1]) if latest else None,
            "wandb_dir": result.wandb_dir,
        }
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))

    def _train_update(self) -> float:
        """One optimizer update; returns the seconds spent waiting for data."""
        cfg = self.cfg
        self.model.set_num_updates(self.step)
        started = time.perf_counter()
        batches = [next(self.data) for _ in range(cfg.optim.update_freq)]
        data_wait = time.perf_counter() - started
        first_micro = self.env.rank * cfg.optim.update_freq
        prepared = [self._prepare(batch, first_micro + index) for index, batch in enumerate(batches)]
        total_masked = torch.stack([masks.sum() for _, _, masks, _ in prepared]).sum().float()
        dist.all_reduce(total_masked)
        # Loss sums are scaled so that the backends' average over ranks yields Σ∂L / N_total.
        loss_factor = self.env.world_size * self.backend.loss_multiplier() / total_masked.clamp(min=1)
        layer_keep = self._layer_keep()
        losses = []
        for index, (batch, (source, padding_mask, masks, generator)) in enumerate(
            zip(batches, prepared, strict=True)
        ):
            with self.backend.micro_batch(last=index == len(prepared) - 1), self._autocast():
                output = self.backend.module(
                    source, padding_mask, mask_indices=masks, generator=generator, layer_keep=layer_keep
                )
                loss, _, metrics = pretraining_loss(output, cfg.loss)
                self.backend.backward(loss * loss_factor)
            losses.append(loss.detach())
            self._accumulate(loss.detach(), metrics, batch)
        found_inf, grad_norm = self.backend.update(torch.stack(losses).sum())
        self.consecutive_nonfinite.mul_(found_inf).add_(found_inf.float())
        self.skipped_total.add_(found_inf.float())
        self.sums[SUM_KEYS.index("grad_norm")] += torch.where(found_inf, 0.0, grad_norm)
        self.sums[SUM_KEYS.index("skipped_updates")] += found_inf.float()
        return data_wait

    def _prepare(
        self, batch: Batch, micro_index: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Generator]:
        """Move a batch to the device and draw its time masks (fairseq semantics, on the device).

        Masks, negatives and Gumbel noise come from a generator seeded by (seed, update, index of the
        micro-batch in the global batch): they do not depend on how the global batch is split over
        ranks and micro-batches, and need no checkpointed state.
        """
        device = self.env.device
        generator = torch.Generator(device).manual_seed(
            (self.cfg.seed * 1_000_003 + self.step) * 10_007 + micro_index
        )
        source = batch.source.to(device, non_blocking=True)
        padding_mask = (
            None if batch.padding_mask is None else batch.padding_mask.to(device, non_blocking=True)
        )
        frames = conv_output_lengths(source.shape[1], self.cfg.model)[-1]
        m = self.cfg.model
        masks = compute_mask_indices(
            (source.shape[0], frames),
            self.model.frame_padding_mask(padding_mask, frames),
            m.mask_prob,
            m.mask_length,
            m.mask_min_masks,
            m.require_same_masks,
            generator=generator,
            device=device,
        )
        return source, padding_mask, masks, generator

    def _layer_keep(self) -> list[bool] | None:
        """Layer-drop decisions shared by all ranks (FSDP needs every rank to run the same layers)."""
        p = self.cfg.model.encoder_layerdrop
        if p <= 0:
            return None
        draws = torch.rand(
            self.cfg.model.encoder_layers, generator=torch.Generator().manual_seed(self.cfg.seed + self.step)
        )
        return (draws >= p).tolist()

    def _autocast(self):
        precision = self.cfg.distributed.precision
        if precision == "fp32" or self.cfg.distributed.backend != "ddp":
            return contextlib.nullcontext()  # FSDP's policy and DeepSpeed cast parameters themselves
        return torch.autocast(self.env.device.type, dtype=PRECISION_DTYPES[precision])

    def _data_skips(self) -> dict[str, float]:
        """Utterances and shard units skipped so far by every rank's loader, by reason."""
        skipped = self.data.skipped()
        counts = torch.tensor([float(skipped.get(reason, 0)) for reason in DATA_SKIP_REASONS])
        if self.env.world_size > 1:
            dist.all_reduce(counts, group=self.env.cpu_group)
        totals = zip(DATA_SKIP_REASONS, counts.tolist(), strict=True)
        return {f"data_skipped_{reason}": count for reason, count in totals}

    def _accumulate(self, loss, metrics, batch: Batch) -> None:
        # Host-side counts stay Python numbers: a new device tensor from a host value would sync.
        values = {
            "loss": loss,
            **{k: metrics[k] for k in LOSS_METRICS},
            "micro_batches": 1.0,
            "audio_samples": float(batch.num_samples),
            "crops": float(batch.source.shape[0]),
        }
        for key, value in values.items():
            self.sums[SUM_KEYS.index(key)] += value.float() if torch.is_tensor(value) else value

    # -- logging --------------------------------------------------------------------------------------

    def _reduce_metrics(self, elapsed: float, data_wait: float) -> dict[str, float]:
        sums = self.sums.clone()
        dist.all_reduce(sums)
        self.sums.zero_()
        s = dict(zip(SUM_KEYS, sums.tolist(), strict=True))
        self._check_nonfinite()
        world, micro = self.env.world_size, max(s["micro_batches"], 1)
        masked = max(s["sample_size"], 1)
        updates = (
            self.cfg.logging.interval
            if self.step % self.cfg.logging.interval == 0
            else self.step % self.cfg.logging.interval
        )
        audio_seconds = s["audio_samples"] / SAMPLE_RATE
        metrics = {
            "loss": s["loss"] / masked * BITS,
            "loss_contrastive": s["loss_contrastive"] / masked * BITS,
            "loss_diversity": s["loss_diversity"] / masked * BITS,
            "loss_feature_penalty": s["loss_feature_penalty"] / masked * BITS,
            "accuracy": s["correct"] / max(s["count"], 1),
            "prob_perplexity": s["prob_perplexity"] / micro,
            "code_perplexity": s["code_perplexity"] / micro,
            "temperature": self.model.quantizer.curr_temp,
            "lr": self.backend.lr(),
            "grad_norm": s["grad_norm"] / max(updates - s["skipped_updates"] / world, 1) / world,
            "skipped_updates_total": float(self.skipped_total.item()),
            "loss_scale": self.backend.loss_scale(),
            "audio_s_per_s": audio_seconds / elapsed / world,
            "frames_per_s": audio_seconds * 50 / elapsed / world,
            "data_wait": data_wait / elapsed,
            "eta_s": elapsed / max(updates, 1) * (self.cfg.last_update - self.step),
            "masked_frames_per_update": s["sample_size"] / updates,
            "crops_per_update": s["crops"] / updates,
        }
        metrics.update(self._data_skips())
        metrics["diversity"] = metrics["loss_diversity"] / BITS / max(self.cfg.loss.diversity_weight, 1e-12)
        mean_crop = s["audio_samples"] / max(s["crops"], 1)
        flops_per_audio_s = train_flops_per_crop(self.cfg.model, int(mean_crop)) / (mean_crop / SAMPLE_RATE)
        metrics["tflops_per_s"] = flops_per_audio_s * metrics["audio_s_per_s"] / 1e12
        peak = peak_flops(self.env.device)
        if peak:
            metrics["mfu"] = metrics["tflops_per_s"] * 1e12 / peak
        metrics["peak_memory_gb"] = _peak_memory_gb(self.env.device)
        return metrics

    def _report(self, metrics: dict[str, float], logger: MetricsLogger, progress: tqdm) -> None:
        if not self.env.is_main:
            return
        progress.write(format_console_line(self.step, self.cfg.last_update, metrics))
        with open(Path(self.cfg.run_dir) / "metrics.jsonl", "a") as history:
            history.write(json.dumps({"step": self.step, **metrics}) + "\n")
        logger.log(self.step, {f"train/{k}": v for k, v in metrics.items()})
        m = self.cfg.model
        # Uniform logits are normal for a while after warmup; "stuck" means still there at 4x warmup.
        past_warmup = self.step >= 4 * max(self.cfg.optim.warmup_updates, 1)
        for alarm in collapse_alarms(metrics, m.num_negatives, m.latent_groups * m.latent_vars, past_warmup):
            progress.write(f"WARNING collapse alarm: {alarm}")
            logger.log(self.step, {"alarms/collapse": alarm})

    def _check_nonfinite(self) -> None:
        count = int(self.consecutive_nonfinite.item())
        limit = self.cfg.optim.max_consecutive_nonfinite
        if count >= limit:
            raise NonFiniteError(
                f"{count} consecutive updates had a non-finite loss or gradient (limit "
                f"optim.max_consecutive_nonfinite={limit}); stopping without saving. Lower optim.lr, "
                "set optim.clip_norm, or use bf16."
            )

    # -- stopping and saving -----------------------------------------------------------------------

    def _stop_agreed(self) -> bool:
        """True on every rank if any rank received a stop signal (a host-side collective, no GPU sync)."""
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        if self.env.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.env.cpu_group)
        return bool(flag.item())

    def _save(self, final: bool) -> Path:
        self._check_nonfinite()
        trainer_state = {
            "step": self.step,
            "skipped_total": self.skipped_total.cpu(),
            "wandb_run_id": self.run_id,
        }
        rank_state = {"rng": self._rng_state(), "data": self.data.state_dict()}
        # The last save of a run (finished or stopped) is synchronous: nothing may be left in flight.
        asynchronous = self.cfg.checkpoint.async_save and not final
        path = self.checkpointer.save(self.step, self.backend, trainer_state, rank_state, asynchronous)
        if self.env.is_main:
            tqdm.write(f"saved checkpoint {path}")
        return path


def _numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's legacy RNG state without arrays, so checkpoints load with ``weights_only=True``."""
    kind, keys, *rest = state
    return (kind, keys.tolist(), *rest)


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilobytes / 2**20 if sys.platform != "darwin" else kilobytes / 2**30


def run_training(cfg: TrainConfig, env: DistEnv) -> TrainResult:
    if env.is_main:
        log.info("training %s on %d rank(s), device %s", cfg.run_dir, env.world_size, env.device)
    return Trainer(cfg, env).fit()
