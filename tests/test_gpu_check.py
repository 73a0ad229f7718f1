"""The GPU check without a GPU: its dry run (every part at tiny sizes on the CPU), its capacity
search, and the host-sync-free update checked on the CPU.

On the CPU every tensor of the step lives where the GPU's would, so any read of a tensor's value by
the host inside an update (``.item()``, ``.tolist()``, ``bool()``, ``nonzero``, a tensor built from
host data) is what would stall the GPU. A dispatch mode catches them at the source: every host read
of a tensor value goes through ``aten._local_scalar_dense``, and the Python-level readers through
``Tensor.item/tolist/__bool__/…``. The data fetch is excluded (its tensors are host tensors by
design); on a GPU, tests/test_gpu.py checks the same with ``torch.cuda.set_sync_debug_mode``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from xlsr.engine.distributed import DistEnv
from xlsr.engine.trainer import Trainer
from xlsr.process import StopRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check_parts import _search_row, largest_fitting  # noqa: E402
from test_gpu import one_process_group, tiny_config  # noqa: E402

aten = torch.ops.aten
# Ops that read a value back (or size an output by the data, which needs the value on the host).
HOST_READ_OPS = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.lift_fresh.default,  # torch.tensor(host data): a blocking host→device copy on a GPU
    aten.equal.default,
    aten.is_nonzero.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
HOST_READ_METHODS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__float__,
    torch.Tensor.__index__,
    torch.Tensor.numpy,
}
# Host-side by construction (their tensors are made on the CPU even on a GPU machine).
HOST_SIDE_FUNCTIONS = ("any_rank_host", "any_rank_host_each")


class HostReadRecorder(TorchDispatchMode):
    """Records host reads of tensor values (with where they happened) while entered."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []
        self.paused = False
        recorder = self

        class Methods(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if func in HOST_READ_METHODS:
                    recorder.note(func.__name__)
                return func(*args, **(kwargs or {}))

        self.methods = Methods()

    def note(self, what: str) -> None:
        stack = traceback.format_stack(limit=24)[:-2]
        if not self.paused and not any(name in frame for frame in stack for name in HOST_SIDE_FUNCTIONS):
            self.reads.append(what + "\n" + "".join(f for f in stack if "site-packages" not in f))

    def _bool_index(self, func, args) -> bool:
        indices = args[1] if func is aten.index.Tensor and len(args) > 1 else ()
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READ_OPS or self._bool_index(func, args):
            self.note(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self.methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.methods.__exit__(*exc)


class PausedDuringFetch:
    """A data stream whose ``next`` is not recorded: batches are made on the host by design."""

    def __init__(self, data, recorder: HostReadRecorder):
        self.data, self.recorder = data, recorder

    def __getattr__(self, name):
        return getattr(self.data, name)

    def __iter__(self):
        return self

    def __next__(self):
        self.recorder.paused = True
        try:
            return next(self.data)
        finally:
            self.recorder.paused = False


@pytest.fixture(scope="module")
def env() -> Iterator[DistEnv]:
    with one_process_group() as group:
        yield group


def tiny(index: Path, run_dir: Path, *overrides: str):
    """The tiny recipe in-process (no loader workers) on short batches."""
    return tiny_config(
        index, run_dir, "data.num_workers=0", "data.max_tokens=64000", "data.max_sample_size=32000",
        "optim.clip_norm=1.0", *overrides,
    )  # fmt: skip


def test_the_recorder_sees_every_kind_of_host_read():
    x = torch.randn(6)
    with HostReadRecorder() as recorder:
        x.sum().item()
        x.tolist()
        bool(x[0] > 0)
        x[x > 0]
        x.nonzero()
        torch.tensor([1.0])
        torch.where(x > 0, 0.0, x).sum()  # device-side: not a read
    kinds = [read.splitlines()[0] for read in recorder.reads]
    assert kinds[:3] == ["item", "aten._local_scalar_dense.default", "tolist"]
    assert "__bool__" in kinds and "aten.index.Tensor" in kinds and "aten.nonzero.default" in kinds
    assert kinds[-1] == "aten.lift_fresh.default"


@pytest.mark.parametrize(
    "overrides",
    [
        ("distributed.backend=ddp", "distributed.precision=fp32"),
        ("distributed.backend=fsdp",),
        ("distributed.backend=fsdp", "objective.name=best_rq", "objective.best_rq.codebook_size=64"),
    ],
    ids=["ddp-fp32", "fsdp-bf16", "best_rq-fsdp-bf16"],
)
def test_train_update_never_reads_a_value_back(env, demo_index, tmp_path, overrides):
    with Trainer(tiny(demo_index, tmp_path, *overrides), env, StopRequest()) as trainer:
        trainer.step()  # the first update creates the optimizer state
        with HostReadRecorder() as recorder:
            trainer.data = PausedDuringFetch(trainer.data, recorder)
            for _ in range(3):
                trainer.step()
    assert recorder.reads == [], "\n\n".join(recorder.reads[:3])


class RecordedTrainer(Trainer):
    """Records host reads from update ``first`` on, except in logging intervals and checkpoints."""

    first = 2

    def step(self) -> None:
        if self.state.step == self.first:
            self.recorder = HostReadRecorder().__enter__()
            self.data = PausedDuringFetch(self.data, self.recorder)
        super().step()

    def interval_metrics(self) -> dict[str, float]:
        self.recorder.__exit__(None, None, None)
        return super().interval_metrics()


def test_update_loop_between_logging_intervals_never_reads_a_value_back(env, demo_index, tmp_path):
    cfg = tiny(demo_index, tmp_path, "optim.max_update=11", "logging.interval=11")  # reads at update 10
    trainer = RecordedTrainer(cfg, env, StopRequest())
    result = trainer.fit()
    assert result.step == 11
    assert trainer.recorder.reads == [], "\n\n".join(trainer.recorder.reads[:3])


# --------------------------------------------------------------------------------------------------
# The capacity search of part 4


def linear_peak(fixed: float, per_item: float, limit: float | None = None):
    probed: list[int] = []

    def probe(n: int) -> float | None:
        probed.append(n)
        peak = fixed + per_item * n
        return None if limit is not None and peak > limit else peak

    return probe, probed


def test_search_finds_the_largest_fitting_size_of_a_linear_memory_model():
    probe, probed = linear_peak(10.0, 3.0)
    result = largest_fitting(probe, 4, 8, capacity=100.0, full_card=200.0)
    assert (result.largest_fitting, result.smallest_failing) == (30, 31)  # 10 + 3·30 = 100
    assert result.peak_at_largest == 100.0 and len(probed) <= 6
    assert result.predicted_full_card == 4 + int((0.97 * 200 - 22) // 3)


def test_search_bisects_when_the_allocator_fails_before_the_line_says():
    probe, _ = linear_peak(10.0, 3.0, limit=70.0)  # out of memory past 20, though capacity says 30
    result = largest_fitting(probe, 4, 8, capacity=100.0, max_probes=10)
    assert (result.largest_fitting, result.smallest_failing) == (20, 21)


def test_search_steps_down_when_even_the_first_size_fails():
    probe, _ = linear_peak(10.0, 3.0, limit=20.0)
    result = largest_fitting(probe, 16, 32, capacity=100.0, max_probes=10)
    assert result.largest_fitting == 3 and result.smallest_failing == 4
    none_fits, _ = linear_peak(50.0, 3.0, limit=20.0)
    assert largest_fitting(none_fits, 2, 4, capacity=100.0).largest_fitting is None


def test_search_rows_put_the_memory_model_beside_every_measured_peak():
    from xlsr.config import load_config
    from xlsr.objectives import build_objective
    from xlsr.plan.memory import ParameterCounts, Ranks, estimate_memory, full_crops

    cfg = load_config("configs/xlsr_300m.yaml", ["distributed.activation_checkpointing=layers"])
    counts = ParameterCounts.of(build_objective(cfg))
    probe, _ = linear_peak(8 * 2**30, 0.5 * 2**30)
    row = _search_row(largest_fitting(probe, 4, 8, capacity=60 * 2**30), cfg, counts)
    batch = full_crops(cfg, row["largest_fitting_crops"])
    model = estimate_memory(cfg, Ranks(1, 1), "cuda", batch, counts).allocated
    assert row["model_peak_at_largest_gib"] == pytest.approx(model / 2**30)
    assert row["model_vs_measured"] == pytest.approx(model / 2**30 / row["peak_at_largest_gib"])
    assert all(len(entry) == 3 and entry[2] > 0 for entry in row["probes"])  # crops, measured, model


# --------------------------------------------------------------------------------------------------
# The dry run


def test_cpu_dry_run_runs_every_part(demo_index, tmp_path):
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--out", str(tmp_path)]
    result = subprocess.run(
        [*cmd, "--index", str(demo_index)], env=environ, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert {name: part["status"] for name, part in parts.items()} == {
        "tests": "skipped",
        "model_speed": "passed",
        "training": "passed",
        "host_overhead": "passed",
        "max_batch": "skipped",
    }
    assert "CUDA" in parts["tests"]["reason"] and "CUDA" in parts["max_batch"]["reason"]
    tests = parts["tests"]["rows"]
    assert len(tests) >= 10 and all(r["outcome"] == "skipped" for r in tests)
    speed = {row["contender"]: row for row in parts["model_speed"]["rows"]}
    assert set(speed) == {"xlsr", "hf_sdpa"} and speed["hf_sdpa"]["parity_rel_diff"] < 1e-5
    assert speed["xlsr"]["audio_s_per_s"] > 0
    training = parts["training"]["rows"]
    assert [r["activation_checkpointing"] for r in training] == ["none", "layers", "layers"]
    assert all(r["audio_s_per_s"] > 0 and 0 <= r["data_wait"] < 1 for r in training)
    assert [r["backend"] for r in parts["host_overhead"]["rows"]] == ["ddp", "fsdp"]
    assert parts["max_batch"]["rows"][0]["probe_steps"] == 2
    markdown = (tmp_path / "gpu_check.md").read_text()
    titles = ("pytest -m gpu", "xlsr vs HF", "FSDP2 bf16 training", "Largest micro-batch", "Host overhead")
    for title in titles:
        assert title in markdown
