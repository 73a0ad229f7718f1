"""Training-step speed of xlsr's model against Hugging Face ``Wav2Vec2ForPreTraining`` (issue 3).

Both models get the same config, the same weights (ours converted with ``to_hf_state_dict`` and loaded
strictly), the same batch and the same ``mask_time_indices`` / negatives, in one process, in train mode.
One iteration = forward + pretraining loss + backward (+ ``zero_grad``). Each contender is timed ``--iters``
times after ``--warmup`` untimed iterations; the repeats of the contenders are interleaved (ABAB…, order
alternating) so that load from other processes hits both alike, and the median is reported. The figure of
merit is the ratio HF / xlsr measured in the same run, not the absolute times.

Layer drop is switched off for both (it would make the step time random); every other dropout stays as
configured. The loss is each framework's own: ours adds the feature penalty (HF has none), a negligible cost.

    .venv/bin/python benchmarks/model_speed.py                         # CPU: BASE, 2 × 4 s, fp32
    .venv/bin/python benchmarks/model_speed.py --device cuda --json out.json   # GPU: bf16, 20 s crops
    .venv/bin/python benchmarks/model_speed.py --config configs/xlsr_300m.yaml --batch-size 8 --eager

`measure(argv)` returns the result dict without printing (benchmarks/gpu_check.py calls it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from xlsr.config import load_config
from xlsr.hardware import peak_flops
from xlsr.model import Wav2Vec2Model, compute_mask_indices, pretraining_loss, sample_negatives
from xlsr.model.interop import hf_config_dict, to_hf_state_dict
from xlsr.objectives.wav2vec2 import train_flops_per_crop

SAMPLE_RATE = 16_000
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "base.yaml"), help="recipe whose model to use")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=None, help="crops per batch (default: 2 CPU, 8 GPU)")
    p.add_argument(
        "--crop-seconds", type=float, default=None, help="seconds per crop (default: 4 CPU, 20 GPU)"
    )
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: fp32 CPU, bf16 GPU")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per contender (5 CPU, 20 GPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per contender")
    p.add_argument("--eager", action="store_true", help="also time HF with eager attention")
    p.add_argument("--no-sdpa", action="store_true", help="do not time HF with SDPA attention")
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.batch_size = args.batch_size or (8 if gpu else 2)
    args.crop_seconds = args.crop_seconds or (20.0 if gpu else 4.0)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.iters = args.iters or (20 if gpu else 5)
    return args


def build_models(args: argparse.Namespace, device: torch.device):
    import transformers

    cfg = load_config(args.config)
    model_cfg = dataclasses.replace(cfg.model, encoder_layerdrop=0.0)
    ours = Wav2Vec2Model(model_cfg, cfg.objective.wav2vec2, init_seed=args.seed).to(device).train()
    state = to_hf_state_dict(ours.state_dict())
    hf_config = hf_config_dict(model_cfg, cfg.objective.wav2vec2)
    hf_fields = {k: v for k, v in hf_config.items() if k != "model_type"}
    hf_models = {}
    impls = ([] if args.no_sdpa else ["sdpa"]) + (["eager"] if args.eager else [])
    for impl in impls:
        hf_cfg = transformers.Wav2Vec2Config(**hf_fields, attn_implementation=impl)
        hf = transformers.Wav2Vec2ForPreTraining(hf_cfg)
        hf.load_state_dict(state, strict=True)
        hf_models[f"hf_{impl}"] = hf.to(device).train()
    return cfg, ours, hf_models


def make_batch(model: Wav2Vec2Model, args: argparse.Namespace, device: torch.device):
    g = torch.Generator().manual_seed(args.seed + 1)
    num_samples = round(args.crop_seconds * SAMPLE_RATE)
    source = torch.randn(args.batch_size, num_samples, generator=g)
    frames = int(model.frame_lengths(torch.tensor(num_samples)))
    c = model.w2v2
    mask = compute_mask_indices(
        (args.batch_size, frames), None, c.mask_prob, c.mask_length, c.mask_min_masks, True, generator=g
    )
    neg = sample_negatives(mask, c.num_negatives, g)
    flat_neg = neg + (torch.arange(args.batch_size) * frames)[:, None, None]  # HF: indices into B·T
    return source.to(device), mask.to(device), neg.to(device), flat_neg.to(device)


def step_functions(cfg, ours, hf_models, batch, device, dtype) -> dict[str, Callable[[], torch.Tensor]]:
    source, mask, neg, flat_neg = batch

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def xlsr_step() -> torch.Tensor:
        with autocast():
            out = ours(source, mask_indices=mask, negative_indices=neg)
            loss, _, _ = pretraining_loss(out, cfg.objective.wav2vec2)
        loss.backward()
        ours.zero_grad(set_to_none=True)
        return loss.detach()

    def hf_step(model) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            with autocast():
                loss = model(source, mask_time_indices=mask, sampled_negative_indices=flat_neg).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss.detach()

        return step

    return {"xlsr": xlsr_step, **{name: hf_step(m) for name, m in hf_models.items()}}


def parity_check(cfg, ours, hf_models, batch) -> dict[str, float]:
    """Eval-mode, fp32 contrastive loss of both (same weights, masks, negatives): relative difference.

    Run in true fp32 on every device (TF32 off for the check), whatever precision is timed."""
    source, mask, neg, flat_neg = batch
    result = {}
    ours.eval()
    with torch.no_grad(), _no_tf32():
        out = ours(source, mask_indices=mask, negative_indices=neg)
        _, _, metrics = pretraining_loss(out, cfg.objective.wav2vec2)
        for name, hf in hf_models.items():
            hf.eval()
            theirs = hf(source, mask_time_indices=mask, sampled_negative_indices=flat_neg).contrastive_loss
            result[name] = float((metrics["loss_contrastive"] - theirs).abs() / theirs.abs())
            hf.train()
    ours.train()
    return result


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def time_interleaved(steps: dict[str, Callable], iters: int, warmup: int, device: torch.device):
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    peak: dict[str, int] = {}
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            if device.type == "cuda":
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated(device))
    return times, cpu, peak


def set_up_device(args: argparse.Namespace) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def measure(argv: list[str] | None = None) -> dict:
    """Build, check parity, time; the result dict that ``--json`` writes."""
    args = parse_args(argv)
    device = set_up_device(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(args.seed)
    cfg, ours, hf_models = build_models(args, device)
    batch = make_batch(ours, args, device)
    parity = parity_check(cfg, ours, hf_models, batch)
    steps = step_functions(cfg, ours, hf_models, batch, device, dtype)
    times, cpu, peak_memory = time_interleaved(steps, args.iters, args.warmup, device)

    audio_seconds = args.batch_size * args.crop_seconds
    # Model FLOPs (same architecture for every contender) and MFU where the device's peak is known.
    crop = round(args.crop_seconds * SAMPLE_RATE)
    step_flops = args.batch_size * train_flops_per_crop(ours.cfg, ours.w2v2, crop)
    peak = peak_flops(device)
    median = {name: statistics.median(t) for name, t in times.items()}
    import transformers

    result = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "crop_seconds": args.crop_seconds,
        "iters": args.iters,
        "warmup": args.warmup,
        "params": sum(p.numel() for p in ours.parameters()),
        "train_flops_per_step": step_flops,
        "peak_flops": peak,
        "parity_rel_diff_contrastive_loss_eval": parity,
        "results": {
            name: {
                "median_ms": 1e3 * median[name],
                "min_ms": 1e3 * min(times[name]),
                "max_ms": 1e3 * max(times[name]),
                "audio_s_per_s": audio_seconds / median[name],
                "ratio_vs_xlsr": median[name] / median["xlsr"],
                # Process CPU time (all threads): less sensitive than wall time to other processes' load.
                "median_cpu_ms": 1e3 * statistics.median(cpu[name]),
                "cpu_ratio_vs_xlsr": statistics.median(cpu[name]) / statistics.median(cpu["xlsr"]),
                "tflops": step_flops / median[name] / 1e12,
                "mfu": step_flops / median[name] / peak if peak else None,
                "peak_memory_gib": peak_memory[name] / 2**30 if name in peak_memory else None,
                "all_ms": [1e3 * t for t in times[name]],
            }
            for name in times
        },
    }
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = measure(argv)
    import transformers

    peak, parity = result["peak_flops"], result["parity_rel_diff_contrastive_loss_eval"]
    peak_memory = any(r["peak_memory_gib"] is not None for r in result["results"].values())
    print(
        f"{Path(args.config).name}: {result['params'] / 1e6:.1f}M params, batch {args.batch_size} × "
        f"{args.crop_seconds:g} s, {args.dtype}, {result['device']}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
        + (f", {result['threads']} threads" if result["threads"] else "")
    )
    print(f"median of {args.iters} interleaved iterations (forward + loss + backward), {args.warmup} warmup")
    header = f"{'model':<10}{'median ms':>11}{'min ms':>9}{'max ms':>9}{'audio s/s':>11}{'ratio':>8}"
    header += f"{'CPU ms':>10}{'CPU ratio':>11}"
    if peak:
        header += f"{'MFU %':>8}"
    if peak_memory:
        header += f"{'peak GiB':>10}"
    print(header)
    print("-" * len(header))
    for name, r in result["results"].items():
        line = (
            f"{name:<10}{r['median_ms']:>11.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}"
            f"{r['audio_s_per_s']:>11.1f}{r['ratio_vs_xlsr']:>8.2f}"
            f"{r['median_cpu_ms']:>10.1f}{r['cpu_ratio_vs_xlsr']:>11.2f}"
        )
        if peak:
            line += f"{100 * r['mfu']:>8.1f}"
        if peak_memory:
            line += f"{r['peak_memory_gib']:>10.2f}"
        print(line)
    print("ratio = model's median time / xlsr's median time (> 1: xlsr is faster); CPU = process CPU time")
    if parity:
        print(
            "eval-mode contrastive-loss relative difference vs HF: "
            + ", ".join(f"{k} {v:.1e}" for k, v in parity.items())
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
