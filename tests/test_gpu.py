"""GPU-only checks, part 1 of the GPU check (`benchmarks/gpu_check.py` runs ``pytest -m gpu``).

Every test here needs CUDA and skips without it; CI runs the same code paths on the CPU through the
check's dry run (tests/test_gpu_check.py). With ``XLSR_GPU_CHECK_OUT`` set, the tests also append
what they observed (kernels chosen, tolerances met) to ``gpu-findings.jsonl`` there, for the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from xlsr.config import MODEL_PRESETS, load_config
from xlsr.data.stages import Batch
from xlsr.engine.distributed import DistEnv, init_distributed, shutdown
from xlsr.engine.trainer import Trainer
from xlsr.model import Wav2Vec2Model, compute_mask_indices, pretraining_loss, sample_negatives
from xlsr.model.encoder import TransformerEncoder
from xlsr.process import StopRequest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ROOT = Path(__file__).resolve().parents[1]


def record(what: str, value) -> None:
    """Note an observation for the GPU check's report (no-op outside the check)."""
    out = os.environ.get("XLSR_GPU_CHECK_OUT")
    if out:
        with (Path(out) / "gpu-findings.jsonl").open("a") as sink:
            sink.write(json.dumps({"what": what, "value": value}) + "\n")


@contextlib.contextmanager
def one_process_group() -> Iterator[DistEnv]:
    """A process group of this process alone; the rendezvous variables it sets are removed afterwards,
    so that later tests' processes do not inherit them."""
    saved = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK"):  # DeepSpeed insists on seeing them
        os.environ.setdefault(name, "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    try:
        yield init_distributed(300)
    finally:
        shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def env() -> Iterator[DistEnv]:
    with one_process_group() as group:
        yield group


def tiny_config(index: Path, run_dir: Path, *overrides: str):
    return load_config(
        str(ROOT / "configs" / "tiny.yaml"),
        [
            f"run_dir={run_dir}", f"data.train=[{index}]", "data.num_workers=1", "optim.max_update=1000",
            "optim.warmup_updates=2", "logging.wandb_mode=disabled", "logging.progress=false",
            "checkpoint.interval_updates=1000", *overrides,
        ],
    )  # fmt: skip


def run_updates(env, cfg, updates: int) -> list[dict[str, float]]:
    """The real trainer and loader: the metrics of each of ``updates`` updates."""
    with Trainer(cfg, env, StopRequest()) as trainer:
        metrics = []
        for _ in range(updates):
            trainer.step()
            metrics.append(trainer.interval_metrics())
        return metrics


# --------------------------------------------------------------------------------------------------
# Mixed precision


def test_bf16_autocast_loss_is_within_tolerance_of_fp32():
    """The same batch, masks and negatives through XLS-R-width layers, in fp32 (TF32 off) and under
    bf16 autocast: the loss and the gradient agree to bf16's precision."""
    cfg = dataclasses.replace(MODEL_PRESETS["xlsr_300m"](), encoder_layers=4)
    recipe = load_config(str(ROOT / "configs" / "xlsr_300m.yaml"))
    w2v2 = loss_cfg = recipe.objective.wav2vec2
    model = Wav2Vec2Model(cfg, w2v2, init_seed=0).cuda().train()
    g = torch.Generator().manual_seed(0)
    source = torch.randn(4, 5 * 16_000, generator=g)
    frames = int(model.frame_lengths(torch.tensor(source.shape[1])))
    mask = compute_mask_indices(
        (4, frames), None, w2v2.mask_prob, w2v2.mask_length, w2v2.mask_min_masks, True, generator=g
    )
    negatives = sample_negatives(mask, w2v2.num_negatives, g)
    source, mask, negatives = source.cuda(), mask.cuda(), negatives.cuda()

    def loss_and_gradient(bf16: bool) -> tuple[float, torch.Tensor]:
        gumbel = torch.Generator("cuda").manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(source, mask_indices=mask, negative_indices=negatives, generator=gumbel)
            loss, _, _ = pretraining_loss(out, loss_cfg)
        loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        model.zero_grad(set_to_none=True)
        return loss.item(), gradient

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        loss32, grad32 = loss_and_gradient(bf16=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    loss16, grad16 = loss_and_gradient(bf16=True)
    relative = abs(loss16 - loss32) / abs(loss32)
    cosine = float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0))
    record("bf16 autocast vs fp32: loss relative difference, gradient cosine", f"{relative:.1e}, {cosine:.4}")
    # measured on the CPU (bf16 autocast, same sizes): 3.9e-5 and 0.9958
    assert relative < 1e-2
    assert cosine > 0.98


@pytest.mark.parametrize("backend", ["fsdp", "deepspeed"])
def test_one_process_bf16_updates_on_cuda(env, demo_index, tmp_path, backend):
    """FSDP2 and DeepSpeed ZeRO-2 in bf16 on one GPU: finite, moving, and the first loss (before any
    update: same data, masks and weights) equal to fp32 DDP's within bf16's precision."""
    if backend == "deepspeed":
        pytest.importorskip("deepspeed")
    reference = run_updates(env, tiny_config(demo_index, tmp_path / "ddp", "distributed.precision=fp32"), 1)
    extra = ("distributed.zero_stage=2",) if backend == "deepspeed" else ()
    cfg = tiny_config(
        demo_index, tmp_path / backend, f"distributed.backend={backend}", "distributed.precision=bf16", *extra
    )
    metrics = run_updates(env, cfg, 4)
    losses = [m["loss"] for m in metrics]
    assert all(math.isfinite(loss) for loss in losses) and len(set(losses)) == len(losses)
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics[1:])
    relative = abs(losses[0] - reference[0]["loss"]) / reference[0]["loss"]
    record(f"{backend} bf16 first loss vs DDP fp32, relative difference", f"{relative:.1e}")
    assert relative < 2e-2


# --------------------------------------------------------------------------------------------------
# Attention kernels

FUSED = {
    "flash": "_scaled_dot_product_flash_attention",
    "efficient": "_scaled_dot_product_efficient_attention",
    "cudnn": "_scaled_dot_product_cudnn_attention",
    "math": "_scaled_dot_product_attention_math",
}


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("preset", ["base", "xlsr_300m", "xlsr_1b", "xlsr_2b"])
def test_attention_runs_a_fused_kernel(preset, padded):
    """One layer of each size at a 20 s crop (999 frames) in bf16, forward and backward. Unpadded
    batches must reach FlashAttention (or cuDNN's); a padded batch carries a key-padding mask, which
    flash cannot take, and must still get a fused kernel (memory-efficient or cuDNN), never the
    O(T²)-memory math fallback."""
    cfg = dataclasses.replace(MODEL_PRESETS[preset](), encoder_layers=1, encoder_layerdrop=0.0)
    encoder = TransformerEncoder(cfg).cuda().to(torch.bfloat16).train()
    x = torch.randn(2, 999, cfg.encoder_embed_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    padding = None
    if padded:
        padding = torch.arange(999, device="cuda") >= torch.tensor([[999], [700]], device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        encoder(x, padding).float().square().mean().backward()
        torch.cuda.synchronize()
    names = {event.name for event in prof.events()}
    used = sorted(kind for kind, op in FUSED.items() if any(op in name for name in names))
    head_dim = cfg.encoder_embed_dim // cfg.encoder_attention_heads
    record(f"SDPA kernels, {preset} (head dim {head_dim}), {'padded' if padded else 'unpadded'}", used)
    assert "math" not in used
    assert set(used) & ({"efficient", "cudnn"} if padded else {"flash", "cudnn"}), used


# --------------------------------------------------------------------------------------------------
# Host synchronisation and host-to-device copies


class SyncCheckedTrainer(Trainer):
    """The real trainer with CUDA's sync debug mode at "error" from update ``first`` on: any
    device→host read, blocking copy or stream sync in the loop raises. Logging intervals and
    checkpoints read metrics back by design; the mode is off inside them."""

    first = 3

    def step(self) -> None:
        if self.state.step == self.first:
            torch.cuda.set_sync_debug_mode("error")
        super().step()

    def interval_metrics(self) -> dict[str, float]:
        torch.cuda.set_sync_debug_mode(0)
        return super().interval_metrics()

    def _save(self, final: bool):
        torch.cuda.set_sync_debug_mode(0)
        return super()._save(final)

    def _validate(self, reporter) -> bool:
        torch.cuda.set_sync_debug_mode(0)
        return super()._validate(reporter)


@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_steady_state_updates_never_sync_the_host(env, demo_index, tmp_path, backend):
    """Updates 4-14 of a real run (loader with a worker, masks, forward, loss, backward, clipping,
    the update, metric sums, the loop's checks between logging intervals) under
    ``torch.cuda.set_sync_debug_mode("error")``."""
    cfg = tiny_config(
        demo_index, tmp_path, f"distributed.backend={backend}", "distributed.precision=bf16",
        "optim.max_update=14", "logging.interval=14", "optim.clip_norm=1.0",
    )  # fmt: skip
    trainer = SyncCheckedTrainer(cfg, env, StopRequest())
    try:
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.status == "finished" and result.step == 14


def test_loader_batches_are_pinned_and_copied_without_blocking_the_host(env, demo_index, tmp_path):
    """DataLoader workers hand out pinned batches, and `Trainer.prepare` enqueues their copy (and the
    masks) behind queued GPU work instead of waiting for it: the GPU is still busy when it returns."""
    trainer = Trainer(tiny_config(demo_index, tmp_path), env, StopRequest())
    try:
        batch = next(trainer.data)
        assert batch.source.is_pinned()
        assert batch.padding_mask is None or batch.padding_mask.is_pinned()
        torch.cuda.synchronize()
        torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time at 2 GHz
        started = time.perf_counter()
        prepared = trainer.prepare(batch, 0)
        source, masks = prepared.source, prepared.draws["mask_indices"]
        host_ms = 1e3 * (time.perf_counter() - started)
        still_busy = not torch.cuda.current_stream().query()
        torch.cuda.synchronize()
        record("Trainer.prepare of a pinned batch behind 0.2 s of GPU work: host time", f"{host_ms:.2f} ms")
        assert still_busy and source.is_cuda and masks.is_cuda
        pageable = Batch(source=batch.source.clone(), padding_mask=None, num_samples=batch.num_samples)
        torch.cuda._sleep(400_000_000)
        started = time.perf_counter()
        trainer.prepare(pageable, 0)
        record(
            "the same with a pageable batch (data.num_workers=0 does not pin): host time",
            f"{1e3 * (time.perf_counter() - started):.2f} ms, GPU still busy: "
            f"{not torch.cuda.current_stream().query()}",
        )
        torch.cuda.synchronize()
    finally:
        trainer.close()
