"""BEST-RQ trained by the real engine: the same backends, checkpoints and resume as wav2vec 2.0,
through nothing but the objective seam (objective.name=best_rq). Its learning, validation and best
checkpoint are checked by the demo, which trains BEST-RQ (tests/test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from run_helpers import metrics, train_args, xlsr
from test_engine import assert_trajectories_close, global_batches, run_job  # noqa: F401 (fixture)

from xlsr.config import load_config
from xlsr.engine.checkpoint import complete_checkpoints
from xlsr.objectives import build_objective
from xlsr.weights import load_model_state

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BEST_RQ = ("objective.name=best_rq", "objective.best_rq.codebook_size=64", "objective.best_rq.mask_prob=0.5",
           "objective.best_rq.mask_length=5")  # fmt: skip
COMPARED = ("loss", "loss_prediction", "accuracy", "code_perplexity")


def trajectory(run_dir: Path) -> list[dict]:
    return [{k: line[k] for k in ("step", *COMPARED)} for line in metrics(run_dir)]


@pytest.fixture(scope="module")
def best_rq_reference(global_batches, tmp_path_factory) -> list[dict]:  # noqa: F811
    run_dir = tmp_path_factory.mktemp("best_rq_reference")
    result = run_job(global_batches, run_dir, 1, "optim.update_freq=2", *BEST_RQ)
    assert result.returncode == 0, result.stderr[-3000:]
    return trajectory(run_dir)


@pytest.mark.parametrize(
    "backend",
    [("distributed.backend=ddp",), ("distributed.backend=fsdp",),
     ("distributed.backend=deepspeed", "distributed.zero_stage=2")],
    ids=["ddp", "fsdp", "zero2"],
)  # fmt: skip
def test_two_process_backends_match_single_process(global_batches, best_rq_reference, tmp_path, backend):  # noqa: F811
    run_dir = tmp_path / "run"
    result = run_job(global_batches, run_dir, 2, *backend, *BEST_RQ)
    assert result.returncode == 0, result.stderr[-3000:]
    actual = trajectory(run_dir)
    assert [m["step"] for m in actual] == [m["step"] for m in best_rq_reference]
    for a, e in zip(actual, best_rq_reference, strict=True):
        for key in COMPARED:
            assert a[key] == pytest.approx(e[key], rel=1e-5, abs=0), (a["step"], key)
    assert best_rq_reference[-1]["loss"] < best_rq_reference[0]["loss"] - 0.5
    # the frozen quantizer is saved, and it is exactly the initial one after training
    [(_, checkpoint)] = complete_checkpoints(run_dir / "checkpoints")
    saved = load_model_state(checkpoint)
    cfg = load_config(ROOT / "configs/tiny.yaml", list(BEST_RQ))
    initial = build_objective(cfg).build_model(init_seed=cfg.seed).state_dict()
    for name in ("quantizer.projection", "quantizer.codebooks"):
        assert torch.equal(saved[name], initial[name]), name
    assert not torch.equal(saved["head.weight"], initial["head.weight"])  # the rest trained


def test_resume_reproduces_the_uninterrupted_losses(demo_index, tmp_path):
    best_rq = ("--config", "configs/tiny_best_rq.yaml")

    def run(run_dir: Path, *overrides: str):
        args = train_args(demo_index, run_dir, "checkpoint.interval_updates=5", *overrides)[2:]
        result = xlsr("launch", "local", "--nproc", "2", *best_rq, *args)
        assert result.returncode == 0, result.stderr[-3000:]

    run(tmp_path / "whole", "stop_at_update=10")
    run(tmp_path / "split", "stop_at_update=5")
    run(tmp_path / "split", "stop_at_update=10")
    assert trajectory(tmp_path / "split") == trajectory(tmp_path / "whole")
