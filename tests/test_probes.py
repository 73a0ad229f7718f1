"""Probes on every checkpoint: the probe set, probes.jsonl, side processes, `xlsr evaluate`.

The probe learning itself (weighted layer sum, CTC, LID, bootstrap) is tested on synthetic features
in test_layer_probes.py; here the probes run on the eSpeak speech corpus's held-out shards, on real
checkpoints of real (tiny) runs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from run_helpers import TRAINING_KEYS, metrics, train_args, xlsr

from xlsr.evaluation.probe_set import WORD_BOUNDARY, characters, load_probe_set
from xlsr.run_dir import PROBES_NAME, ProbeLog, probe_summary

PROBE_RUN = (
    "optim.max_update=10", "checkpoint.interval_updates=5", "checkpoint.keep_last=1",
    "validation.interval_updates=10", "validation.max_seconds_per_language=20",
)  # fmt: skip


def record(step: int, probe: str, value: float, **extra) -> dict:
    return {"step": step, "probe": probe, "value": value, "interval": [value - 0.1, value + 0.1],
            "per_language": {"en": {"value": value, "interval": [0, 1]}}, **extra}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Pieces


def test_probe_log_keeps_the_first_line_of_a_step_and_survives_a_torn_line(tmp_path):
    log = ProbeLog(tmp_path)
    with log.locked():
        log.append(record(0, "phones", 0.9))
        log.append(record(5, "phones", 0.7))
    with open(log.path, "a") as handle:
        handle.write('{"step": 10, "probe": "pho')  # a kill mid-write
    with log.locked():
        log.append(record(5, "phones", 0.1))  # a second prober's late duplicate: ignored
        log.append(record(10, "phones", 0.6))
    assert [(r["step"], r["value"]) for r in log.records()] == [(0, 0.9), (5, 0.7), (10, 0.6)]
    assert log.done(10, "phones") and not log.done(10, "lid")


def test_summary_gets_the_newest_probe_and_the_baseline_without_losing_other_fields(tmp_path):
    log = ProbeLog(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "probe_stale": 1}))
    with log.locked():
        for step, value in ((0, 0.9), (10, 0.5), (5, 0.7)):
            log.append(record(step, "phones", value))
        log.merge_into_summary()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and "probe_stale" not in summary
    assert summary["probe_phone_error_rate"] == 0.5 and summary["probe_phone_error_rate_step"] == 10
    assert summary["probe_phone_error_rate_baseline"] == 0.9
    assert summary["probe_phone_error_rate_interval"] == pytest.approx([0.4, 0.6])
    assert probe_summary([]) == {}


def test_lines_of_retrained_steps_are_set_aside_with_their_claims(tmp_path):
    """A rollback to update 5 (or a fresh start: -1): later lines and SLURM claims move aside, so
    the retrained checkpoints get probed; nothing is deleted."""
    log = ProbeLog(tmp_path)
    claims = tmp_path / "probes" / "claims"
    claims.mkdir(parents=True)
    with log.locked():
        for step in (0, 5, 10):
            log.append(record(step, "phones", 0.5))
            (claims / f"step-{step:08d}").write_text("123\n")
    log.set_aside_after(5, "job1-1")
    assert [r["step"] for r in log.records()] == [0, 5]
    aside = tmp_path / "probes" / "set-aside-job1-1.jsonl"
    assert [json.loads(line)["step"] for line in aside.read_text().splitlines()] == [10]
    assert sorted(p.name for p in claims.iterdir()) == [
        "step-00000000",
        "step-00000005",
        "step-00000010.set-aside-job1-1",
    ]
    log.set_aside_after(-1, "job2")
    assert (
        log.records() == []
        and len((tmp_path / "probes" / "set-aside-job2.jsonl").read_text().splitlines()) == 2
    )


def test_characters_of_a_transcript():
    assert characters("Hello, wörld!") == (*"hello", WORD_BOUNDARY, *"wörld")
    assert characters("नमस्ते दुनिया")[:6] == tuple("नमस्ते")  # combining marks are kept
    assert characters("  ...  ") is None and characters(None) is None


def test_probe_set_is_whole_utterances_with_phones_and_speakers(speech_shards):
    _, valid = speech_shards
    audio = load_probe_set([str(valid)], 20.0, 20.0, normalize=True)
    languages = {a.language for a in audio}
    assert len(languages) >= 8
    assert all(a.phones and a.chars and a.speaker for a in audio)
    for language in languages:
        assert len({a.speaker for a in audio if a.language == language}) >= 2, language
    assert load_probe_set([str(valid)], 20.0, 20.0, normalize=True)[3].key == audio[3].key
    short = load_probe_set([str(valid)], 20.0, 3.0, normalize=True)
    assert short and all(len(a.audio) <= 3 * 16000 for a in short)


# --------------------------------------------------------------------------------------------------
# On real runs


@pytest.fixture(scope="module")
def without_probes(speech_shards, tmp_path_factory) -> Path:
    train, valid = speech_shards
    run_dir = tmp_path_factory.mktemp("probe_runs") / "without"
    args = train_args(train, run_dir, f"data.valid=[{valid}]", "validation.probe=false", *PROBE_RUN)
    result = xlsr("launch", "local", "--nproc", "1", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (run_dir / PROBES_NAME).exists()
    return run_dir


@pytest.fixture(scope="module")
def with_probes(speech_shards, tmp_path_factory) -> tuple[Path, str]:
    """The same run with probes beside training (a local side process); (run dir, its stderr), once
    the side process has recorded every checkpoint and merged them into summary.json."""
    train, valid = speech_shards
    run_dir = tmp_path_factory.mktemp("probe_runs") / "with"
    args = train_args(train, run_dir, f"data.valid=[{valid}]", "validation.probes_async=true", *PROBE_RUN)
    result = xlsr("launch", "local", "--nproc", "1", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    wait_for_lines(run_dir, 6)  # steps 0, 5, 10 × phones, lid: the side process ends after
    deadline = time.monotonic() + 60
    while json.loads((run_dir / "summary.json").read_text()).get("probe_lid_accuracy_step") != 10:
        assert time.monotonic() < deadline, "summary.json never got the probes"
        time.sleep(1)
    return run_dir, result.stderr


def wait_for_lines(run_dir: Path, count: int, timeout_s: float = 240) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = ProbeLog(run_dir).records()
        if len(records) >= count:
            return records
        time.sleep(1)
    raise AssertionError(f"{run_dir}: {len(ProbeLog(run_dir).records())} probe lines, expected {count}")


@pytest.mark.slow
def test_probes_beside_training_record_every_checkpoint_once_and_change_no_update(
    with_probes, without_probes
):
    run_dir, stderr = with_probes
    assert "probing checkpoints beside training" in stderr
    ours, reference = metrics(run_dir), metrics(without_probes)
    assert [[m[k] for k in TRAINING_KEYS] for m in ours] == [[m[k] for k in TRAINING_KEYS] for m in reference]
    records = ProbeLog(run_dir).records()
    assert sorted((r["step"], r["probe"]) for r in records) == [
        (step, probe) for step in (0, 5, 10) for probe in ("lid", "phones")
    ]
    raw = (run_dir / PROBES_NAME).read_text().splitlines()
    assert len(raw) == 6  # each once
    phones = {r["step"]: r for r in records if r["probe"] == "phones"}
    assert phones[5]["baseline"] == phones[0]["value"] and phones[5]["checkpoint"] == "step-00000005"
    low, high = phones[0]["interval"]
    assert 0 < low <= phones[0]["value"] <= high
    assert len(phones[10]["layer_weights"]) == 3 and phones[10]["test_speakers"] >= 8
    # keep_last=1: step 5 stays while it waits for its probe (pruned at the next save, if any)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert checkpoints[-1] == "step-00000010" and set(checkpoints) <= {"step-00000005", "step-00000010"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["probe_phone_error_rate_step"] == 10
    assert summary["probe_phone_error_rate_baseline"] == phones[0]["value"]


@pytest.mark.slow
def test_evaluate_fills_in_a_copied_run_directory(with_probes, tmp_path):
    """A copy of the run (elsewhere, as on another machine) that lost its later probe lines: `xlsr
    evaluate --every 10` probes update 10 again, and only that."""
    original, _ = with_probes
    copy = tmp_path / "copied"
    shutil.copytree(original, copy)
    baseline_only = [line for line in (copy / PROBES_NAME).read_text().splitlines() if '"step": 0,' in line]
    (copy / PROBES_NAME).write_text("\n".join(baseline_only) + "\n")
    summary = json.loads((copy / "summary.json").read_text())
    (copy / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if "probe" not in k}))
    result = xlsr("evaluate", str(copy), "--every", "10", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted((r["step"], r["probe"]) for r in ProbeLog(copy).records()) == [
        (step, probe) for step in (0, 10) for probe in ("lid", "phones")
    ]
    assert "update 10: phone error rate" in result.stdout and "random-init baseline" in result.stdout
    assert "2 probe result(s) written" in result.stdout
    assert len((original / PROBES_NAME).read_text().splitlines()) == 6  # the original is untouched
    again = xlsr("evaluate", str(copy), "--every", "10")
    assert again.returncode == 0 and "0 probe result(s) written" in again.stdout
    assert json.loads((copy / "summary.json").read_text())["probe_phone_error_rate_step"] == 10
    bad = xlsr("evaluate", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr and "Traceback" not in bad.stderr
