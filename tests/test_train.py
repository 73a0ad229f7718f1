"""End to end, with real processes: the demo path, exact resume, and stopping on a signal."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import ENV, metrics, train_args, xlsr

from xlsr.data.loader import SKIP_COUNTERS
from xlsr.engine.checkpoint import complete_checkpoints
from xlsr.process import PREEMPTED_EXIT_CODE

pytestmark = pytest.mark.slow


def summary_run_id(demo_out: Path) -> str:
    return (demo_out / "run" / "wandb_run_id").read_text().strip()


def test_demo_path_shards_trains_on_two_processes_and_saves(tmp_path):
    out = tmp_path / "demo"
    result = xlsr(
        "demo",
        "--out",
        str(out),
        "--corpus-scale",
        "0.3",
        "optim.max_update=75",
        "logging.interval=25",
        "checkpoint.interval_updates=75",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    # the per-language hours table, the skipped corrupt and too-short files, the paths it wrote
    assert "demo" in text and "ta" in text and "sampled %" in text
    assert "unreadable" in text and "too_short" in text
    summary = json.loads((out / "run" / "summary.json").read_text())
    # The objective falls from the start (the demo's LR and warmup, a shorter run).
    losses = [line["loss"] for line in metrics(out / "run")]
    assert losses[-1] < losses[0] - 0.2 and summary["last"]["loss"] == losses[-1]
    # held-out validation at update 0 and 75, per language, the curves
    valid = metrics(out / "run", kind="valid")
    assert [line["step"] for line in valid] == [0, 75]
    assert valid[-1]["valid_loss_prediction"] < valid[0]["valid_loss_prediction"]
    assert summary["valid_loss_prediction"] == valid[-1]["valid_loss_prediction"]
    assert "valid/demo/en/loss_prediction" in summary and "valid loss prediction" in text
    # BEST-RQ's loss against its chance level, the best checkpoint (it learns: the newest is the best)
    assert (
        f"prediction {valid[0]['valid_loss_prediction']:.3f} bits (chance 9.000)"
        in result.stdout + result.stderr
    )
    best = json.loads((out / "run" / "checkpoints" / "best.json").read_text())
    assert summary["best"]["step"] == best["step"] == 75 and "valid_loss_prediction" in best
    assert summary["valid_loss_prediction_update_0"] == valid[0]["valid_loss_prediction"]
    # the probes, in the loop (the local default): the initial model and the checkpoint, with intervals
    for key in ("probe_phone_error_rate", "probe_lid_accuracy"):
        assert summary[f"{key}_step"] == 75 and f"{key}_baseline" in summary
        low, high = summary[f"{key}_interval"]
        assert low <= summary[key] <= high
    assert "phone error rate" in text and "random-init baseline" in text and "LID accuracy" in text
    assert "probe update 75: phone error rate" in result.stderr
    assert (out / "run" / "curves.png").stat().st_size > 20_000
    # per-language telemetry: what the job drew against the upsampling target
    streams = {row["language"]: row for row in summary["data"]["streams"]}
    assert set(streams) == {"en", "es", "ru", "hi", "tr", "fi", "ar", "ta", "id"}
    assert sum(row["realised_share"] for row in streams.values()) == pytest.approx(1.0)
    assert all(row["utterances"] > 0 and row["passes"] > 0 for row in streams.values())
    skips = {k: v for k, v in summary["last"].items() if k.startswith("data_skipped_")}
    assert set(skips) == {f"data_skipped_{r}" for r in SKIP_COUNTERS}
    assert skips["data_skipped_undecodable"] == skips["data_skipped_broken_units"] == 0  # clean shards
    assert [step for step, _ in complete_checkpoints(out / "run" / "checkpoints")] == [75]
    wandb_dir = Path(summary["wandb_dir"])
    # a real W&B offline run: its history holds our metrics, its console log our progress lines
    assert wandb_dir.name.startswith("offline-run-") and wandb_dir.name.endswith(summary_run_id(out))
    history = next(wandb_dir.glob("run-*.wandb")).read_bytes()
    assert b"train/loss_prediction" in history and b"train/mfu" not in history  # no MFU on CPU
    assert b"valid/valid_loss_prediction" in history and b"data/realised_share" in history
    assert b"time_per_update_seconds" in history  # `xlsr plan`'s figures, in the run config
    assert "plan: " in result.stdout + result.stderr
    assert "update 75/75" in (wandb_dir / "files" / "output.log").read_text()
    # the probes' linked W&B run, in the training run's group
    probes_run = list((out / "run" / "wandb").glob(f"offline-run-*-{summary_run_id(out)}-probes"))
    assert probes_run and b"probe/phone_error_rate" in next(probes_run[-1].glob("run-*.wandb")).read_bytes()
    assert f"checkpoint:      {summary['checkpoint']}" in text
    # the checkpoint exports to a directory that Hugging Face transformers loads, with the same outputs
    exported = xlsr("export", "--to", "hf", summary["checkpoint"], str(tmp_path / "hf"))
    assert exported.returncode == 0, exported.stderr
    assert_hf_matches(Path(summary["checkpoint"]), tmp_path / "hf")
    # a second run reuses the corpus, the shards and the finished training
    started = time.monotonic()
    again = xlsr("demo", "--out", str(out), "--corpus-scale", "0.3", "optim.max_update=75")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "update 25/75" not in again.stdout  # resumed at the final checkpoint: nothing to redo
    assert time.monotonic() - started < 60


def assert_hf_matches(checkpoint: Path, hf_dir: Path) -> None:
    import torch
    from transformers import Wav2Vec2Model

    from xlsr.weights import load_pretrained

    ours = load_pretrained(checkpoint)
    theirs = Wav2Vec2Model.from_pretrained(hf_dir).eval()  # BEST-RQ exports the bare encoder
    audio = torch.randn(2, 24_000)
    with torch.no_grad():
        hidden, _ = ours.encode(audio)
        expected = theirs(audio).last_hidden_state
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)


def test_resume_reproduces_the_uninterrupted_losses(demo_index, tmp_path):
    """Kill-and-resume on the same topology gives bit-identical losses (2 processes, gloo)."""
    whole = tmp_path / "whole"
    assert (
        xlsr(
            "launch", "local", "--nproc", "2", *train_args(demo_index, whole, "stop_at_update=20")
        ).returncode
        == 0
    )
    split = tmp_path / "split"
    every_5 = "checkpoint.interval_updates=5"
    first = xlsr(
        "launch", "local", "--nproc", "2", *train_args(demo_index, split, "stop_at_update=15", every_5)
    )
    assert first.returncode == 0, first.stderr
    # As if killed at update 15 before its checkpoint was complete: updates 11-15 are lost, and their
    # lines in metrics.jsonl must not stay beside the retrained ones.
    shutil.rmtree(split / "checkpoints" / "step-00000015")
    second = xlsr(
        "launch", "local", "--nproc", "2", *train_args(demo_index, split, "stop_at_update=20", every_5)
    )
    assert second.returncode == 0, second.stderr
    assert (
        "step-00000010 at update 10" in second.stderr and "dropped 1 line(s) after update 10" in second.stderr
    )
    keys = ("loss", "loss_contrastive", "accuracy", "prob_perplexity", "code_perplexity", "grad_norm", "lr")
    for a, b in zip(metrics(split), metrics(whole), strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_stop_signal_saves_and_exits_for_requeue(demo_index, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(demo_index, run_dir, "optim.max_update=100000", "checkpoint.interval_updates=100000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr", "launch", "local", "--nproc", "2", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGUSR2)  # what SLURM/submitit send before preemption or the time limit
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output
    saved = complete_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 1 and saved[0][0] >= 5
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_a_dead_wandb_run_never_stops_training(tmp_path, monkeypatch, caplog):
    """W&B is an observer: a run whose service went away (here: finished behind the logger's back, a real
    wandb UsageError) turns W&B off with a warning; logging and closing go on."""
    from xlsr.config import load_config
    from xlsr.engine.reporting import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(
        Path(__file__).parents[1] / "configs/tiny.yaml", [f"run_dir={tmp_path}", "logging.wandb_mode=offline"]
    )
    logger = WandbLogger(cfg, run_id="deadrun")
    logger.run.finish()
    logger.log(1, {"loss": 1.0})
    assert logger.run is None and "W&B log failed (UsageError" in caplog.text
    logger.log(2, {"loss": 0.5})
    logger.close()
