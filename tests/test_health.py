"""The health sentinel (`xlsr.engine.health`) and fault injection (``XLSR_FAULT``): the judging
rules on their own, then real multi-process runs that roll back past injected faults or stop."""

from __future__ import annotations

import json
import random
import time

import pytest
from run_helpers import ENV, metrics, train_args, training_metrics, xlsr

from xlsr.config import HealthConfig
from xlsr.engine.checkpoint import complete_checkpoints, free_sibling_name
from xlsr.engine.health import HealthSentinel, UpdateRecord, strongest
from xlsr.engine.watchdog import HANG_DIR
from xlsr.faults import FAULT_ENV, SPIKE_FACTOR, Faults, FaultSpecError, read_faults
from xlsr.objectives import Alarm
from xlsr.process import HANG_EXIT_CODE, HEALTH_EXIT_CODE
from xlsr.run_dir import HEALTH_KIND, RunHistory

# -- XLSR_FAULT ---------------------------------------------------------------------------------------


def faults(text: str) -> Faults:
    return read_faults({FAULT_ENV: text})


def test_every_fault_form_and_their_combination():
    assert faults("") == Faults()
    parsed = faults("nonfinite_loss@3:2, loss_spike@7,hang@9:1,slow@0:2.5")
    assert [u in parsed.nonfinite_loss for u in (2, 3, 4, 5)] == [False, True, True, False]
    assert 7 in parsed.loss_spike and 8 not in parsed.loss_spike
    assert parsed.hangs_at(9, 1) and not parsed.hangs_at(9, 0) and parsed.slow == {0: 2.5}
    assert parsed.loss_factor(7) == SPIKE_FACTOR and parsed.loss_factor(8) == 1.0
    assert parsed.beyond(last_update=8, world_size=2) == ["hang@9:1"]
    assert parsed.beyond(last_update=100, world_size=1) == ["hang@9:1"]  # no rank 1


@pytest.mark.parametrize(
    "text",
    ["nan@3", "nonfinite_loss@0", "hang@3", "hang@0:1", "slow@1:0.5", "loss_spike@2:0", "hang@a:1",
     "slow@0:1e9", "nonfinite_loss@1:10000000000", "hang@\u0661:1", "slow@0:2,slow@0:3", "hang@3:1,,"],
)  # fmt: skip
def test_anything_else_is_refused_naming_it(text):
    with pytest.raises(FaultSpecError, match=f"^{FAULT_ENV}: "):
        faults(text)


def test_a_malformed_fault_is_one_line_before_any_process_starts(demo_index, tmp_path):
    args = train_args(demo_index, tmp_path / "run")
    result = xlsr("launch", "local", "--nproc", "2", *args, env={**ENV, FAULT_ENV: "nan@3"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        f"xlsr launch: error: {FAULT_ENV}: cannot read 'nan@3': expected nonfinite_loss@U[:N], "
        "loss_spike@U[:N], hang@U:RANK or slow@RANK:FACTOR, joined by commas"
    ]
    assert not (tmp_path / "run").exists()


# -- judging ------------------------------------------------------------------------------------------


def healthy(first: int, count: int, seed: int = 0, loss: float = 6.5) -> list[UpdateRecord]:
    """Noisy, slowly falling losses and gradient norms, as a healthy run logs them."""
    rng = random.Random(seed)
    return [
        UpdateRecord(step, loss - 0.002 * step + rng.gauss(0, 0.05), 1.0 + rng.uniform(-0.3, 0.3), False)
        for step in range(first, first + count)
    ]


def sentinel(**changes) -> HealthSentinel:
    return HealthSentinel(HealthConfig(window=40, **changes), nonfinite_limit=3)


def test_a_healthy_run_raises_nothing():
    judge = sentinel()
    for start in range(1, 2000, 20):
        assert judge.observe(healthy(start, 20, seed=start), [], start + 19) == []
    assert len(judge.losses) == 40  # the window keeps the last ``window`` updates


def test_a_loss_spike_is_found_with_its_onset_and_kept_out_of_the_reference():
    judge = sentinel()
    judge.observe(healthy(1, 40), [], 40)
    reference = list(judge.losses)
    updates = healthy(41, 10)
    updates[3] = UpdateRecord(44, 6.4 * SPIKE_FACTOR, 1.0, False)
    [event] = judge.observe(updates, [], 50)
    assert (event.signal, event.action, event.onset, event.step) == ("loss_spike", "rollback", 44, 50)
    assert "robust sd above the median" in event.message
    assert judge.losses == reference[9:] + [u.loss for u in updates if u.step != 44]


def test_nothing_is_judged_before_a_quarter_window():
    judge = sentinel()
    assert judge.observe([*healthy(1, 5), UpdateRecord(6, 1e4, 1e4, False)], [], 6) == []


def test_a_non_finite_streak_starts_where_the_first_skip_was():
    judge = sentinel()
    judge.observe(healthy(1, 10), [], 10)
    skips = [UpdateRecord(step, float("nan"), 0.0, True) for step in range(11, 15)]
    [event] = judge.observe([*skips, *healthy(15, 1)], [], 15)
    assert (event.signal, event.onset) == ("nonfinite", 11) and "(updates 11-13)" in event.message
    assert judge.streak == 0
    assert judge.observe([UpdateRecord(16, float("nan"), 0.0, True)] * 2, [], 17) == []  # 2 < 3


def test_a_gradient_norm_explosion_warns_by_default():
    judge = sentinel()
    judge.observe(healthy(1, 40), [], 40)
    [event] = judge.observe([UpdateRecord(41, 6.4, 5e4, False)], [], 41)
    assert (event.signal, event.action) == ("grad_norm", "warn")


def test_objective_alarms_keep_the_onset_of_their_first_interval():
    judge = sentinel(at_chance="stop")
    stuck = [Alarm("at_chance", "loss at chance")]
    [first] = judge.observe(healthy(1, 10), stuck, 10)
    [again] = judge.observe(healthy(11, 10), stuck, 20)
    assert (first.onset, again.onset, again.action) == (1, 1, "stop")
    judge.observe(healthy(21, 10), [], 30)
    [later] = judge.observe(healthy(31, 10), stuck, 40)
    assert later.onset == 31


def test_the_strongest_action_wins_then_the_earliest_onset():
    judge = sentinel(codebook="stop")
    judge.observe(healthy(1, 40), [], 40)
    spike = [UpdateRecord(41, 640.0, 1.0, False)]
    events = judge.observe(spike, [Alarm("codebook", "collapse")], 41)
    assert [e.signal for e in events] == ["loss_spike", "codebook"]
    assert strongest(events).signal == "codebook" and strongest([]) is None


def test_rollbacks_are_limited_per_window_of_data():
    judge = sentinel(max_rollbacks=2, rollback_window=100, rollback_lr_scale=0.5, rollback_lr_updates=10)
    judge.updates_drawn = 50
    judge.rolled_back(None, step=50, to_step=40)
    assert judge.lr_multiplier(45) == 0.5 and judge.lr_multiplier(50) == 1.0
    judge.updates_drawn = 90
    judge.rolled_back(None, step=80, to_step=70)
    assert "2 rollback(s) within the last 100 updates" in judge.rollback_refused()
    judge.updates_drawn = 151  # the first rollback is out of the window
    assert judge.rollback_refused() is None
    assert judge.updates_drawn == 151 and len(judge.rollbacks) == 2


def test_a_rollback_takes_the_judging_state_of_its_checkpoint():
    judge = sentinel()
    judge.observe(healthy(1, 20), [], 20)
    saved = judge.state_dict()
    judge.observe(healthy(21, 20), [], 40)
    judge.updates_drawn = 40
    judge.rolled_back(saved, step=40, to_step=20)
    assert judge.losses == saved["losses"] and judge.updates_drawn == 40 and judge.rollbacks == [(40, 40, 20)]
    fresh = sentinel()
    fresh.load_state_dict(json.loads(json.dumps(judge.state_dict())))  # plain values only
    assert fresh.state_dict() == judge.state_dict()


def test_history_keeps_health_events_by_their_data_position(tmp_path):
    history = RunHistory(tmp_path)
    for step in (5, 10, 15):
        history.append(step, {"loss": 1.0})
    history.append(15, {"kind": HEALTH_KIND, "updates_drawn": 15})
    history.keep_until(5, updates_drawn=15)  # a rollback to update 5
    assert [(r["step"], r.get("kind")) for r in history.lines()] == [(5, None), (15, HEALTH_KIND)]
    history.keep_until(5)  # a resume from update 5: the event is in the future again
    assert [r["step"] for r in history.lines()] == [5]


# -- real runs ---------------------------------------------------------------------------------------


def rollback_run(demo_index, run_dir):
    args = train_args(
        demo_index, run_dir, "stop_at_update=20", "checkpoint.interval_updates=5", "checkpoint.keep_last=3",
        "logging.wandb_mode=offline",
    )  # fmt: skip
    return xlsr("launch", "local", "--nproc", "2", *args, env={**ENV, FAULT_ENV: "nonfinite_loss@8:10"})


def test_a_run_rolls_back_past_non_finite_updates_and_finishes_the_same_twice(demo_index, tmp_path):
    """Updates 8-17 are NaN: the streak (optim.max_consecutive_nonfinite=10) is judged at update 20,
    the run goes back to step-5, skips the data of updates 6-20, and finishes."""
    first, second = tmp_path / "a", tmp_path / "b"
    for run_dir in (first, second):
        result = rollback_run(demo_index, run_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("health: ")]
    assert line.startswith("health: nonfinite (onset update 8): 10 updates in a row had a non-finite")
    assert "rolled back to step-00000005, skipping the data of updates 6-20" in line
    assert training_metrics(first) == training_metrics(second)  # deterministic, rollback included
    assert [m["step"] for m in metrics(first)] == [5, 10, 15, 20]  # the undone lines are gone
    [event] = metrics(first, HEALTH_KIND)
    assert (event["step"], event["onset"], event["action"]) == (20, 8, "rollback")
    assert event["updates_drawn"] == 20
    window = event["window"]
    # keys are kept since the save before the last one (step-10): those of updates 11-20
    assert (window["to_step"], window["skipped_updates"], window["keys_from_update"]) == (5, 15, 11)
    keys = json.loads((first / "health" / "rollback-1.json").read_text())["keys"]
    assert len(keys) == sum(window["utterances_by_stream"].values()) > 0
    summary = json.loads((first / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["health"]["rollbacks"] == 1
    assert summary["health"]["events"][0]["signal"] == "nonfinite"
    assert [step for step, _ in complete_checkpoints(first / "checkpoints")] == [10, 15, 20]
    set_aside = sorted(p.name.split(".")[0] for p in (first / "checkpoints").glob("*.rolled-back-*"))
    assert set_aside == ["step-00000010", "step-00000015"]
    history = next((first / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"health/nonfinite" in history and b"train/loss" in history


def test_a_loss_spike_with_policy_stop_ends_the_run_in_one_line(demo_index, tmp_path):
    run_dir = tmp_path / "run"
    args = train_args(
        demo_index, run_dir, "stop_at_update=30", "checkpoint.interval_updates=10", "health.window=32",
        "health.loss_spike=stop",
    )  # fmt: skip
    result = xlsr("train", *args, env={**ENV, FAULT_ENV: "loss_spike@18"})
    assert result.returncode == HEALTH_EXIT_CODE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("health: ")]
    assert line.startswith("health: loss_spike (onset update 18): loss ")
    assert line.endswith(
        "stopped: health.loss_spike=stop; nothing saved (a rerun resumes from step-00000010); exit 78"
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "unhealthy"
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == [10]


def test_a_rank_that_works_longer_in_three_intervals_in_a_row_is_named():
    judge = sentinel()
    slow = {"slowest_rank": 1.0, "rank_work_s_median": 1.0, "rank_work_s_max": 2.0}
    even = {**slow, "rank_work_s_max": 1.1}
    assert judge.stragglers(slow) == judge.stragglers(slow) == [] and judge.stragglers(even) == []
    assert judge.stragglers(slow) == judge.stragglers(slow) == []
    [alarm] = judge.stragglers(slow)
    assert alarm.signal == "straggler" and alarm.message.startswith("rank 1 works 2.00 x the median")
    assert all(judge.stragglers(slow) == [] for _ in range(19)) and judge.stragglers(slow) != []


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_with_every_stack_and_one_line(demo_index, tmp_path):
    """Rank 1 stops before update 8; rank 0 waits for it in a collective. Within hang_s: every rank's
    stacks on disk, one line naming rank 1, exit 76, no traceback (the resume, and the requeue under
    SLURM: tests/test_slurm_training.py)."""
    run_dir = tmp_path / "run"
    args = train_args(
        demo_index, run_dir, "stop_at_update=12", "health.hang_s=5", "checkpoint.interval_updates=5"
    )
    started = time.monotonic()
    result = xlsr("launch", "local", "--nproc", "2", *args, env={**ENV, FAULT_ENV: "hang@8:1"}, timeout=300)
    assert result.returncode == HANG_EXIT_CODE, result.stderr[-3000:]
    assert time.monotonic() - started < 120 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("hang: ")]
    assert line.startswith("hang: rank 1 on ") and "(data, after update 7)" in line, line
    [job] = (run_dir / HANG_DIR).iterdir()
    assert sorted(p.name for p in job.iterdir()) == ["HANG", "rank-0.txt", "rank-1.txt"]
    assert "_injected_hang" in (job / "rank-1.txt").read_text()


def test_a_step_set_aside_twice_keeps_both(tmp_path):
    """Two rollbacks over the same step (persistent bad data) set aside two checkpoints of it."""
    first = tmp_path / "step-00000020"
    first.mkdir()
    aside = free_sibling_name(first, "rolled-back-job")
    first.rename(aside)
    first.mkdir()
    assert free_sibling_name(first, "rolled-back-job").name == "step-00000020.rolled-back-job-2"
