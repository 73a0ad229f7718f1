"""Fault injection (``XLSR_FAULT``) and the hang watchdog, on real multi-process runs."""

from __future__ import annotations

import json
import os
import time

import pytest
from run_helpers import train_args, xlsr

from xlsr.engine.watchdog import HANG_DIR, HANG_EXIT_CODE
from xlsr.faults import FAULT_ENV, SPIKE_FACTOR, Faults, FaultSpecError, read_faults


def faults(text: str) -> Faults:
    return read_faults({FAULT_ENV: text})


def test_every_fault_form_and_their_combination():
    assert faults("") == Faults()
    parsed = faults("nonfinite_loss@3:2, loss_spike@7,hang@9:1,slow@0:2.5")
    assert parsed.nonfinite_loss == {3, 4} and parsed.loss_spike == {7}
    assert parsed.hangs_at(9, 1) and not parsed.hangs_at(9, 0) and parsed.slow == {0: 2.5}
    assert parsed.loss_factor(7) == SPIKE_FACTOR and parsed.loss_factor(8) == 1.0


@pytest.mark.parametrize(
    "text", ["nan@3", "nonfinite_loss@0", "hang@3", "slow@1:0.5", "loss_spike@2:0", "hang@a:1"]
)
def test_anything_else_is_refused_naming_it(text):
    with pytest.raises(FaultSpecError, match=f"{FAULT_ENV}: .*{text.split(',')[0][:4]}"):
        faults(text)


def test_a_malformed_fault_is_one_line_before_any_process_starts(demo_index, tmp_path):
    result = xlsr(
        "launch",
        "local",
        "--nproc",
        "2",
        *train_args(demo_index, tmp_path / "run"),
        env_extra={FAULT_ENV: "nan@3"},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"xlsr launch: error: {FAULT_ENV}: cannot read 'nan@3': expected nonfinite_loss@U[:N], "
        "loss_spike@U[:N], hang@U:RANK or slow@RANK:FACTOR, joined by commas"
    ]
    assert not (tmp_path / "run").exists()


def test_injected_nonfinite_losses_are_skipped_updates(demo_index, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(demo_index, run_dir, "stop_at_update=10", "checkpoint.interval_updates=100")
    result = xlsr("launch", "local", "--nproc", "2", *args, env_extra={FAULT_ENV: "nonfinite_loss@3:2"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["last"]["skipped_updates_total"] == 2.0


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_with_its_stacks_and_one_line(demo_index, tmp_path):
    """Rank 1 stops before update 6; rank 0 waits for it in a collective. Both watchdogs fire within
    hang_s: every rank's stacks on disk, one line naming rank 1, exit 76 (run again to resume)."""
    run_dir = tmp_path / "run"
    args = train_args(
        demo_index, run_dir, "stop_at_update=20", "health.hang_s=5", "checkpoint.interval_updates=5"
    )
    started = time.monotonic()
    result = xlsr("launch", "local", "--nproc", "2", *args, env_extra={FAULT_ENV: "hang@6:1"}, timeout=300)
    assert result.returncode == HANG_EXIT_CODE, result.stderr
    hang_lines = [line for line in result.stderr.splitlines() if line.startswith("hang: ")]
    assert len(hang_lines) == 1 and hang_lines[0].startswith("hang: rank 1 on "), result.stderr
    assert "(data, update 5)" in hang_lines[0] and "Traceback" not in result.stderr
    stacks = sorted(p.name for p in (run_dir / HANG_DIR).iterdir())
    assert [name.split("-")[1] for name in stacks] == ["0", "1"]
    assert "_injected_hang" in next((run_dir / HANG_DIR).glob("rank-1-*.txt")).read_text()
    assert time.monotonic() - started < 120
    # the same command resumes from the checkpoint before the hang and finishes
    resumed = xlsr("launch", "local", "--nproc", "2", *args, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resum" in resumed.stderr.lower() and os.path.isdir(run_dir / "checkpoints" / "step-00000020")
