"""The held-out set of `xlsr shard --valid-seconds S` (`sharding.split`): real wav files, real tars.

Checked: two runs give identical sets; training and held-out sets share no key, recording or speaker;
each stream holds out between S and S plus one group; a corpus that grows never moves training audio
into the held-out set; a split run over tasks plus the merge equals one run, and a rerun reuses
finished shards; `xlsr stats` prints both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sharding import ShardError, ShardJob, shard
from sharding.cli import main
from sharding.manifest import SourceRecord
from sharding.split import MAX_HELD_OUT_HASH, VALID_DIR, group_hash, split_records
from xlsr.data.shard_format import INDEX_NAME, read_index, unescape_path

RATE = 16_000
HELD_OUT_SECONDS = 6.0
LANGUAGES = ("ab", "cd")
SHARD_BYTES = 200_000  # a few training shards per language, so tasks share them


def write_files(root: Path, first: int, count: int) -> None:
    """`root/<language>/<speaker>/f<n>.wav`: 0.4-1.2 s of quiet noise at 16 kHz, seeded by the name."""
    for language in LANGUAGES:
        for number in range(first, first + count):
            name = f"{language}/s{number % 4}/f{number:03d}.wav"
            rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
            audio = rng.uniform(-0.3, 0.3, int(rng.uniform(0.4, 1.2) * RATE)).astype(np.float32)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / name, audio, RATE, subtype="PCM_16")


def job(corpus: Path, out: Path, **changes) -> ShardJob:
    settings = dict(
        corpus="tiny", shard_size_bytes=SHARD_BYTES, progress=False, valid_seconds=HELD_OUT_SECONDS
    )
    return ShardJob(input=corpus, out_dir=out, **{**settings, **changes})


def metadata(index_dir: Path) -> list[dict]:
    """The JSON member of every sample in the tars the index in `index_dir` lists."""
    rows = []
    for shard_entry in json.loads((index_dir / INDEX_NAME).read_text())["shards"]:
        with tarfile.open(index_dir / shard_entry["path"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    rows.append(json.loads(tar.extractfile(member).read()))
    return rows


def relative_sources(index_dir: Path, root: Path) -> set[str]:
    return {os.path.relpath(os.fsdecode(unescape_path(m["source"])), root) for m in metadata(index_dir)}


def tar_digests(out: Path) -> dict[str, str]:
    """Relative path -> sha256 of every tar the two indexes list."""
    digests = {}
    for directory in (out, out / VALID_DIR):
        for entry in json.loads((directory / INDEX_NAME).read_text())["shards"]:
            path = directory / entry["path"]
            digests[str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def index_texts(out: Path) -> tuple[str, str]:
    return (out / INDEX_NAME).read_text(), (out / VALID_DIR / INDEX_NAME).read_text()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "corpus"
    write_files(root, 0, 30)
    return root


@pytest.fixture(scope="module")
def single_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    shard(job(corpus, out))
    return out


# --------------------------------------------------------------------------------------------------
# The rule, on records alone


def test_growing_corpus_never_moves_training_groups_to_the_held_out_set():
    """Random corpora grow 6 times (new speakers and recordings, new files of known speakers): a group
    that trained never becomes held out; each version holds out S to S + one group (or is capped)."""
    rng = random.Random(0)
    returned_to_training = 0
    for trial in range(40):
        records: list[SourceRecord] = []
        trained: set[str] = set()
        held_before: set[str] = set()
        for _ in range(6):
            records += _new_records(rng, trial, len(records), rng.randrange(1, 25))
            train, valid, [report] = split_records(records, 20.0, "/corpus")
            held = {_group(r) for r in valid}
            assert not held & {_group(r) for r in train}, "a group on both sides"
            assert not held & trained, "a group moved from training to the held-out set"
            _check_amount(records, held, report.held_out_seconds, 20.0)
            returned_to_training += bool(held_before - held)
            trained |= {_group(r) for r in train}
            held_before = held
    # The corpora grow enough to move the cut: the allowed direction happens, so the check above bites.
    assert returned_to_training > 10


def _new_records(rng: random.Random, trial: int, start: int, count: int) -> list[SourceRecord]:
    records = []
    for number in range(start, start + count):
        speaker = f"t{trial}s{rng.randrange(12)}" if rng.random() < 0.6 else None
        path = f"/corpus/x/t{trial}_{number}.wav"
        records.append(SourceRecord(path, "xx", "c", speaker=speaker, duration=rng.uniform(0.5, 9.0)))
    return records


def _group(record: SourceRecord) -> str:
    return f"speaker:{record.speaker}" if record.speaker else f"recording:x/{Path(record.path).name}"


def _check_amount(records: list[SourceRecord], held: set[str], held_seconds: float, target: float) -> None:
    seconds: dict[str, float] = defaultdict(float)
    for record in records:
        seconds[_group(record)] += record.duration
    assert held_seconds == pytest.approx(sum(seconds[g] for g in held))
    assert all(group_hash(g) < MAX_HELD_OUT_HASH for g in held)
    if held_seconds < target:  # capped: every group in the lower half of the hash range is held out
        assert held == {g for g in seconds if group_hash(g) < MAX_HELD_OUT_HASH}
    else:
        assert held_seconds - target < max(seconds[g] for g in held)


# --------------------------------------------------------------------------------------------------
# `xlsr shard --valid-seconds`, end to end


def test_split_is_deterministic_and_written_by_the_cli(
    corpus: Path, single_run: Path, tmp_path: Path, capsys
):
    """The CLI run gives byte-identical indexes and tars; its summary reports the held-out set."""
    args = [str(corpus), str(tmp_path), "--corpus", "tiny", "--shard-size", str(SHARD_BYTES)]
    assert main(["shard", *args, "--valid-seconds", f"{HELD_OUT_SECONDS}", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"held out (--valid-seconds {HELD_OUT_SECONDS:g})" in printed
    assert str(tmp_path / VALID_DIR / INDEX_NAME) in printed
    assert index_texts(tmp_path) == index_texts(single_run)
    assert tar_digests(tmp_path) == tar_digests(single_run)
    assert read_index(tmp_path / VALID_DIR).shards  # the one index reader accepts it


def test_held_out_set_is_disjoint_and_about_s_seconds_per_language(corpus: Path, single_run: Path):
    train, valid = metadata(single_run), metadata(single_run / VALID_DIR)
    assert {m["key"] for m in train}.isdisjoint(m["key"] for m in valid)
    assert {m["source"] for m in train}.isdisjoint(m["source"] for m in valid)
    assert len(train) + len(valid) == 2 * 30  # nothing lost, nothing written twice
    longest = max(m["duration"] for m in valid)
    held = json.loads((single_run / VALID_DIR / INDEX_NAME).read_text())["totals"]["hours_by_stream"]
    assert sorted(held) == [f"tiny/{language}" for language in LANGUAGES]
    for stream, hours in held.items():
        assert HELD_OUT_SECONDS <= hours * 3600 < HELD_OUT_SECONDS + longest, stream
    train_paths = [e["path"] for e in json.loads((single_run / INDEX_NAME).read_text())["shards"]]
    assert train_paths and not any(p.startswith(f"{VALID_DIR}/") for p in train_paths)


def test_manifest_with_speakers_splits_by_speaker(tmp_path: Path):
    """Speakers of 1-6 files each: every speaker's files land on one side, and S is reached."""
    rows = ["path\tlanguage\tspeaker"]
    rng = np.random.default_rng(3)
    for number in range(48):
        name = f"clips/c{number:03d}.wav"
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / name, rng.uniform(-0.3, 0.3, int(rng.uniform(0.3, 0.9) * RATE)), RATE)
        rows.append(f"{name}\tab\tspk{int(rng.integers(10))}")
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    shard(job(tmp_path / "m.tsv", out, valid_seconds=4.0))
    train, valid = metadata(out), metadata(out / VALID_DIR)
    held_speakers = {m["speaker"] for m in valid}
    assert held_speakers and held_speakers.isdisjoint(m["speaker"] for m in train)
    speaker_seconds: dict[str, float] = defaultdict(float)
    for m in valid:
        speaker_seconds[m["speaker"]] += m["duration"]
    held = sum(speaker_seconds.values())
    assert 4.0 <= held < 4.0 + max(speaker_seconds.values())
    assert len(train) + len(valid) == 48


def test_growing_the_corpus_keeps_training_files_in_training(corpus: Path, single_run: Path, tmp_path: Path):
    """The same files under another root, plus 30 new ones per language: no file that trained before
    is held out now (paths are hashed relative to the input, so the move changes nothing)."""
    grown = tmp_path / "grown"
    shutil.copytree(corpus, grown)
    write_files(grown, 30, 30)
    out = tmp_path / "out"
    shard(job(grown, out))
    trained_before = relative_sources(single_run, corpus)
    held_now = relative_sources(out / VALID_DIR, grown)
    assert held_now.isdisjoint(trained_before)
    assert held_now - relative_sources(single_run / VALID_DIR, corpus), "no new file was held out"
    assert not relative_sources(out, grown) & held_now


def test_split_tasks_and_merge_equal_one_run_and_rerun_reuses_shards(
    corpus: Path, single_run: Path, tmp_path: Path
):
    assigned = []
    for task in range(2):
        result = shard(job(corpus, tmp_path, task_index=task, num_tasks=2))
        assert result.task is not None and result.task.written == len(result.task.assigned) > 0
        assigned.append(set(result.task.assigned))
    assert not assigned[0] & assigned[1]
    assert assigned[0] | assigned[1] == set(tar_digests(single_run))  # held-out shards included
    assert not (tmp_path / INDEX_NAME).exists() and not (tmp_path / VALID_DIR / INDEX_NAME).exists()
    merged = shard(job(corpus, tmp_path))
    assert index_texts(tmp_path) == index_texts(single_run)
    assert tar_digests(tmp_path) == tar_digests(single_run)
    assert merged.valid_index == json.loads((single_run / VALID_DIR / INDEX_NAME).read_text())
    # Resume: drop one held-out tar; a rerun writes it again and leaves every other tar alone.
    tars = sorted((tmp_path / name for name in tar_digests(tmp_path)), key=str)
    dropped = next(t for t in tars if t.is_relative_to(tmp_path / VALID_DIR))
    before = {t: t.stat().st_mtime_ns for t in tars if t != dropped}
    dropped.unlink()
    shard(job(corpus, tmp_path))
    assert dropped.is_file() and {t: t.stat().st_mtime_ns for t in before} == before
    assert tar_digests(tmp_path) == tar_digests(single_run)


def test_stats_prints_training_and_held_out_hours(single_run: Path, tmp_path: Path, capsys):
    for target in (single_run, single_run / INDEX_NAME):
        assert main(["stats", str(target), "--plot", str(tmp_path / "hours.png")]) == 0
        printed = capsys.readouterr().out
        assert f"held-out set: {single_run / VALID_DIR / INDEX_NAME}" in printed
        held_out_part = printed[printed.index("held-out set:") :]
        lines = [line.split() for line in held_out_part.splitlines()]
        for language in LANGUAGES:
            row = next(cols for cols in lines if cols[:2] == ["tiny", language] and len(cols) == 6)
            train_hours, held_seconds = float(row[2]), float(row[4])
            assert train_hours > 0 and HELD_OUT_SECONDS <= held_seconds < HELD_OUT_SECONDS + 1.2


def test_sharding_again_without_a_held_out_set_removes_the_stale_one(
    single_run: Path, corpus: Path, tmp_path: Path
):
    out = tmp_path / "out"
    shutil.copytree(single_run, out)
    result = shard(job(corpus, out, valid_seconds=0.0))
    assert not (out / VALID_DIR / INDEX_NAME).exists() and result.valid_index is None
    assert result.index["totals"]["samples"] == 2 * 30


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf"), True])
def test_bad_valid_seconds_are_user_errors(tmp_path: Path, seconds):
    with pytest.raises(ShardError, match="valid_seconds"):
        job(tmp_path, tmp_path / "out", valid_seconds=seconds)


def test_a_corpus_named_valid_cannot_hold_out(corpus: Path, tmp_path: Path, capsys):
    args = [
        "shard",
        str(corpus),
        str(tmp_path),
        "--corpus",
        VALID_DIR,
        "--valid-seconds",
        "5",
        "--no-progress",
    ]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "corpus named 'valid'" in error
