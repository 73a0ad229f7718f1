"""Nothing lost: fault injection on a run directory's lifecycle, with real processes and real files.

One uninterrupted 2-process run is the reference; every faulty run must end with exactly its
metrics (timings aside), or be refused in one line without touching anything.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from run_helpers import ENV, ROOT, metrics, train_args, training_metrics, xlsr

from xlsr.checkpoint_files import complete_checkpoints, verify_slice
from xlsr.process import (
    ABORTED_EXIT_CODE,
    CTRL_C_ABORTED,
    CTRL_C_STOPPING,
    PREEMPTED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
)

pytestmark = pytest.mark.slow

UPDATES = 20
STEP_20, STEP_15 = "step-00000020", "step-00000015"


def run_args(index: Path, run_dir: Path, *overrides: str) -> list[str]:
    every_5 = ("checkpoint.interval_updates=5", "checkpoint.keep_last=10")
    return train_args(index, run_dir, f"stop_at_update={UPDATES}", *every_5, *overrides)


def launch(index: Path, run_dir: Path, *overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return xlsr("launch", "local", "--nproc", str(nproc), *run_args(index, run_dir, *overrides))


def one_line(stderr: str) -> str:
    """The whole of ``stderr`` is one line (commands that log nothing before failing)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def error_line(stderr: str) -> str:
    """The one error line among a training command's log lines, and no traceback."""
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture(scope="module")
def reference(demo_index, tmp_path_factory) -> Path:
    """The uninterrupted run: 20 updates, a line and a checkpoint every 5."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = launch(demo_index, run_dir)
    assert result.returncode == 0, result.stderr
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == [5, 10, 15, 20]
    return run_dir


def copy_run(reference: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / ".xlsr.lock").unlink()
    return run_dir


def rewrite_manifest_entry(checkpoint: Path, name: str) -> None:
    """Make the manifest describe the file as it is now (as a forger would)."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "crc32": zlib.crc32(data)}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------------
# One job per run directory


def test_a_second_job_on_the_same_run_dir_is_refused(demo_index, reference, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "xlsr", "launch", "local", "--nproc", "2", *run_args(demo_index, run_dir)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, "the first job ended before the second could start"
    second = xlsr("train", *run_args(demo_index, run_dir, "seed=7"))
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == USER_ERROR_EXIT_CODE
    assert "is in use by another job (host" in error_line(second.stderr)
    assert training_metrics(run_dir) == training_metrics(reference)


# --------------------------------------------------------------------------------------------------
# Pruning and resume=never


def test_checkpoints_by_the_clock_as_well(demo_index, reference, tmp_path):
    """checkpoint.interval_minutes: whichever comes first. Every update here takes longer than 30 ms,
    so both ranks agree to save after each one; the training itself is unchanged."""
    run_dir = tmp_path / "run"
    clock = ("checkpoint.interval_updates=1000", "checkpoint.interval_minutes=0.0005")
    result = launch(demo_index, run_dir, *clock)
    assert result.returncode == 0, result.stderr
    assert [step for step, _ in complete_checkpoints(run_dir / "checkpoints")] == list(range(11, 21))
    assert training_metrics(run_dir) == training_metrics(reference)


def test_resume_never_on_a_run_dir_with_checkpoints_refuses_to_start(demo_index, reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    history = (run_dir / "metrics.jsonl").read_text()
    result = xlsr("train", *run_args(demo_index, run_dir, "checkpoint.resume=never"))
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert "checkpoint.resume=never, but" in error_line(result.stderr)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert (run_dir / "metrics.jsonl").read_text() == history


def test_pruning_keeps_new_checkpoints_and_ignores_foreign_directories(demo_index, reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    junk = run_dir / "checkpoints" / "step-00000099"
    junk.mkdir()
    (junk / "trainer.pt").write_bytes(os.urandom(300))
    result = xlsr("train", *run_args(demo_index, run_dir, "stop_at_update=25", "checkpoint.keep_last=1"))
    assert result.returncode == 0, result.stderr
    assert "step-00000099 is damaged" in result.stderr
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # the new checkpoint survives its own pruning; the junk (newer, not ours) is untouched
    assert left == ["step-00000025", "step-00000099"]


# --------------------------------------------------------------------------------------------------
# Damaged checkpoints: fall back to the newest intact one


def _garbage_distcp(checkpoint: Path) -> None:
    shard = next(checkpoint.glob("*.distcp"))
    shard.write_bytes(os.urandom(shard.stat().st_size))


def _truncated_distcp(checkpoint: Path) -> None:
    shard = next(checkpoint.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


DAMAGE = {
    "garbage-distcp": _garbage_distcp,
    "truncated-distcp": _truncated_distcp,
    "missing-metadata": lambda c: (c / ".metadata").unlink(),
    "garbage-trainer-state": lambda c: (c / "trainer.pt").write_bytes(b"not a pickle" * 10),
    "garbage-rank-state": lambda c: (c / "rank-00001.pt").write_bytes(os.urandom(64)),
    "missing-manifest": lambda c: (c / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_every_kind_of_damage_is_found(reference, tmp_path, damage):
    """The check a resume makes on every rank (each verifies its slice of the files)."""
    run_dir = copy_run(reference, tmp_path)
    checkpoint = run_dir / "checkpoints" / STEP_20
    assert verify_slice(checkpoint, 0, 1) is None
    damage(checkpoint)
    assert verify_slice(checkpoint, 0, 1) is not None


# Resumed end to end for two kinds (the fallback is the same for every kind found above).
@pytest.mark.parametrize("damage", [DAMAGE["truncated-distcp"], DAMAGE["missing-manifest"]],
                         ids=["truncated-distcp", "missing-manifest"])  # fmt: skip
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(demo_index, reference, tmp_path, damage):
    run_dir = copy_run(reference, tmp_path)
    damage(run_dir / "checkpoints" / STEP_20)
    result = launch(demo_index, run_dir)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(warnings) == 1 and STEP_20 in warnings[0], result.stderr
    assert f"{STEP_15} at update 15" in result.stderr
    assert training_metrics(run_dir) == training_metrics(reference)
    # the damaged directory is kept for the user to inspect
    assert len(list((run_dir / "checkpoints").glob(f"{STEP_20}.damaged-*"))) == 1


def test_no_intact_checkpoint_is_one_error_line(demo_index, reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    for _, checkpoint in complete_checkpoints(run_dir / "checkpoints"):
        (checkpoint / "trainer.pt").write_bytes(b"junk")
    result = xlsr("train", *run_args(demo_index, run_dir))
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert "no intact checkpoint" in error_line(result.stderr)


def test_a_checkpoint_of_another_format_is_one_error_line(demo_index, reference, tmp_path):
    """Before 1.0 checkpoints do not carry over between formats: refused, saying what to do."""
    run_dir = copy_run(reference, tmp_path)
    newest = run_dir / "checkpoints" / STEP_20
    state = torch.load(newest / "trainer.pt", weights_only=True)
    torch.save({**state, "format": 2}, newest / "trainer.pt")
    rewrite_manifest_entry(newest, "trainer.pt")  # intact, only older
    result = xlsr("train", *run_args(demo_index, run_dir))
    assert result.returncode == USER_ERROR_EXIT_CODE
    line = error_line(result.stderr)
    assert "checkpoint format 2, this xlsr reads format 3" in line and "checkpoint.init_from" in line


# --------------------------------------------------------------------------------------------------
# Loading never executes code from a checkpoint


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("use", ["export", "init_from", "resume"])
def test_a_malicious_metadata_file_is_refused_and_never_run(demo_index, reference, tmp_path, use):
    run_dir = copy_run(reference, tmp_path)
    checkpoint = run_dir / "checkpoints" / STEP_20
    marker = tmp_path / "pwned"
    with open(checkpoint / ".metadata", "wb") as handle:
        pickle.dump(_Payload(marker), handle)
    rewrite_manifest_entry(checkpoint, ".metadata")
    if use == "export":
        result = xlsr("export", "--to", "hf", str(checkpoint), str(tmp_path / "hf"))
    elif use == "init_from":
        result = xlsr("train", *run_args(demo_index, tmp_path / "new", f"checkpoint.init_from={checkpoint}"))
    else:
        result = xlsr("train", *run_args(demo_index, run_dir, "stop_at_update=25"))
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    assert ".metadata: refusing to load posix.system" in error_line(result.stderr)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Export and import never replace what they did not write


def test_export_refuses_foreign_directories_and_the_checkpoint_itself(reference, tmp_path):
    checkpoint = reference / "checkpoints" / STEP_20
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for target in (foreign, checkpoint, checkpoint / "hf"):
        result = xlsr("export", "--to", "hf", str(checkpoint), str(target), "--overwrite")
        assert result.returncode == USER_ERROR_EXIT_CODE
        assert "refusing" in one_line(result.stderr) or "choose another" in result.stderr
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(os.listdir(foreign)) == ["notes.txt"]
    assert not (checkpoint / "hf").exists()

    out = tmp_path / "hf"
    assert xlsr("export", "--to", "hf", str(checkpoint), str(out)).returncode == 0
    again = xlsr("export", "--to", "hf", str(checkpoint), str(out))
    assert again.returncode == USER_ERROR_EXIT_CODE and "--overwrite" in one_line(again.stderr)
    assert xlsr("export", "--to", "hf", str(checkpoint), str(out), "--overwrite").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "hf"]  # no temporary left behind


def test_import_refuses_to_replace_and_leaves_no_temporary(reference, tmp_path):
    hf = tmp_path / "hf"
    assert xlsr("export", "--to", "hf", str(reference / "checkpoints" / STEP_20), str(hf)).returncode == 0
    out = tmp_path / "model.pt"
    out.write_text("someone's file")
    result = xlsr("import", "--from", "hf", str(hf), str(out))
    assert result.returncode == USER_ERROR_EXIT_CODE and "--overwrite" in one_line(result.stderr)
    result = xlsr("import", "--from", "hf", str(hf), str(out), "--overwrite")  # not an xlsr model file
    assert result.returncode == USER_ERROR_EXIT_CODE and "not an xlsr model file" in one_line(result.stderr)
    assert out.read_text() == "someone's file"
    for garbage in (tmp_path / "model.pt", hf / "config.json", tmp_path):
        result = xlsr("import", "--from", "fairseq", str(garbage), str(tmp_path / "new.pt"))
        assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
        one_line(result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.pt"]


# --------------------------------------------------------------------------------------------------
# Signals


def start_in_own_group(index: Path, run_dir: Path) -> subprocess.Popen:
    """`xlsr launch local --nproc 2` as a shell's foreground job: its own process group, which the
    terminal signals as a whole; returns once the first metrics are written."""
    job = subprocess.Popen(
        [sys.executable, "-m", "xlsr", "launch", "local", "--nproc", "2", *run_args(index, run_dir)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


def assert_stopped_then_resumes_exactly(index: Path, run_dir: Path, reference: Path, output: str) -> None:
    """The stop left a checkpoint mid-run; the same command finishes with the uninterrupted metrics."""
    stopped = complete_checkpoints(run_dir / "checkpoints")[-1][0]
    assert 5 <= stopped < UPDATES, output
    resumed = launch(index, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert training_metrics(run_dir) == training_metrics(reference)


def test_sigterm_to_the_process_group_saves_and_resumes_exactly(demo_index, reference, tmp_path):
    """What systemd, `kill -- -PGID` or scancel under a plain srun do: every process, DataLoader
    workers included, gets the signal. Also stops between logging intervals (metrics stay exact)."""
    run_dir = tmp_path / "run"
    job = start_in_own_group(demo_index, run_dir)
    os.killpg(job.pid, signal.SIGTERM)
    output, _ = job.communicate(timeout=300)
    assert job.returncode == PREEMPTED_EXIT_CODE, output
    assert "DataLoader worker" not in output
    assert_stopped_then_resumes_exactly(demo_index, run_dir, reference, output)


def test_ctrl_c_saves_says_so_once_and_resumes_exactly(demo_index, reference, tmp_path):
    """Ctrl-C reaches every process of the foreground group, DataLoader workers included: the job
    stops like on SIGTERM (exit 75, a checkpoint), one line says so, no rank prints a traceback."""
    run_dir = tmp_path / "run"
    job = start_in_own_group(demo_index, run_dir)
    os.killpg(job.pid, signal.SIGINT)
    output, _ = job.communicate(timeout=300)
    assert job.returncode == PREEMPTED_EXIT_CODE, output
    assert output.count(CTRL_C_STOPPING) == 1, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert_stopped_then_resumes_exactly(demo_index, run_dir, reference, output)


def test_a_second_ctrl_c_aborts_at_once_in_one_line(demo_index, tmp_path):
    run_dir = tmp_path / "run"
    job = start_in_own_group(demo_index, run_dir)
    os.killpg(job.pid, signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    os.killpg(job.pid, signal.SIGINT)
    output, _ = job.communicate(timeout=60)
    assert job.returncode == ABORTED_EXIT_CODE and time.monotonic() - started < 10, output
    assert output.count(CTRL_C_ABORTED) == 1 and output.count(CTRL_C_STOPPING) == 1, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


def test_the_command_line_parser_imports_no_torch():
    """`xlsr train` installs its stop handlers after parsing, before torch: a parser that imported
    torch (seconds) would leave a SIGTERM during that time to the default handler."""
    check = "import sys; from xlsr.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stdout + result.stderr


@pytest.mark.parametrize("when", ["importing", "building"])
def test_a_stop_signal_during_start_up_exits_75(demo_index, tmp_path, when):
    """While torch is imported, or while the model and data stream are built."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xlsr", "train", *run_args(demo_index, run_dir)],
        env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if when == "importing":
        time.sleep(1.0)
    else:  # the line logged once the process group and the run lock are in place
        while "training " not in (proc.stdout.readline() or "training "):
            pass
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, output
    assert complete_checkpoints(run_dir / "checkpoints") == []


# --------------------------------------------------------------------------------------------------
# The metrics history


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(demo_index, reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    shutil.rmtree(run_dir / "checkpoints" / STEP_20)
    with open(run_dir / "metrics.jsonl", "a") as history:
        history.write('{"step": 25, "loss": 6.')  # a write cut short (disk full, a kill, NFS)
    result = launch(demo_index, run_dir)
    assert result.returncode == 0, result.stderr
    assert "metrics.jsonl:5 is damaged" in result.stderr
    assert training_metrics(run_dir) == training_metrics(reference)
    assert [line["step"] for line in metrics(run_dir)] == [5, 10, 15, 20]


def test_an_unusable_run_dir_is_one_error_line(demo_index, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = xlsr("train", *run_args(demo_index, blocker / "run"))
    assert result.returncode == USER_ERROR_EXIT_CODE
    assert "is unusable" in error_line(result.stderr) and str(blocker) in result.stderr
