"""What a run trains on: overlap guards at start, and upsampling and telemetry in the seconds the model
can see (a long recording counts as one crop per draw, not as its stored hours)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from corpus_layouts import common_voice, mls, write_audio
from run_helpers import train_args, xlsr

from sharding import ShardJob, shard
from xlsr.config import DataConfig
from xlsr.data.loader import DataStream
from xlsr.data.shard_format import LengthHistogram, ShardInfo, visible_seconds
from xlsr.data.sources import DataSourceError, check_data_sources


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A Common Voice copy sharded with a held-out set; returns OUT (index.json, valid/index.json)."""
    root = tmp_path_factory.mktemp("sources")
    release = common_voice(root / "cv")
    job = ShardJob(
        release, root / "out", progress=False, valid_seconds=1.0, include_splits=frozenset({"dev"})
    )
    shard(job)
    return root / "out"


def test_empty_or_doubled_or_overlapping_data_is_refused(small_set: Path, tmp_path: Path):
    train, valid = str(small_set / "index.json"), str(small_set / "valid" / "index.json")
    check_data_sources(DataConfig(train=[train], valid=[valid]))  # the normal case passes
    shutil.copytree(small_set, tmp_path / "copy")
    copied_valid, copied_train = str(tmp_path / "copy" / "valid"), str(tmp_path / "copy" / "index.json")
    cases = [
        (DataConfig(train=[]), "data.train is empty"),
        (DataConfig(train=[train, str(small_set)]), "data.train lists .* twice"),
        (DataConfig(train=[train, valid], valid=[valid]), "data.train and data.valid both list"),
        (DataConfig(train=[train, copied_valid], valid=[valid]), "held-out utterances would be trained on"),
        (DataConfig(train=[train, copied_train]), "the same utterances would be drawn twice as often"),
    ]
    for cfg, message in cases:
        with pytest.raises(DataSourceError, match=message):
            check_data_sources(cfg)


@pytest.mark.parametrize("command", ["train", "launch"])
def test_overlap_is_one_line_and_exit_2_before_any_process_starts(
    small_set: Path, tmp_path: Path, command: str
):
    index, valid = small_set / "index.json", small_set / "valid" / "index.json"
    launch = ["launch", "local", "--nproc", "2"] if command == "launch" else ["train"]
    args = train_args(index, tmp_path / "run", f"data.train=[{index},{valid}]", f"data.valid=[{valid}]")
    result = xlsr(*launch, *args)
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.count("\n") == 1 and "both list" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "run").exists()
    empty = xlsr(*launch, *train_args(index, tmp_path / "run", "data.train=[]"))
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1 and "data.train is empty" in empty.stderr


# --------------------------------------------------------------------------------------------------
# Seconds the model can see


def test_visible_seconds_count_each_utterance_at_most_the_crop():
    lengths = LengthHistogram()
    durations = [1.2, 3.7, 3.9, 25.0, 1800.0]
    for seconds in durations:
        lengths.add(seconds)
    shard = ShardInfo(
        "x.tar", "c", "fr", len(durations), sum(durations), None, tuple(map(tuple, lengths.to_json()))
    )
    for crop in (0.5, 4.0, 20.0, 4000.0):
        assert visible_seconds(shard, crop) == pytest.approx(sum(min(d, crop) for d in durations), abs=0.5)
    # Without a histogram (an index written by hand), every utterance has the mean length.
    bare = ShardInfo("x.tar", "c", "fr", 2, 100.0)
    assert visible_seconds(bare, 20.0) == 40.0 and visible_seconds(bare, 60.0) == 100.0


@pytest.mark.slow
def test_a_long_session_weighs_what_the_model_sees(tmp_path: Path, caplog):
    """CV clips, MLS utterances and one 30-minute VoxPopuli session kept whole (--max-seconds 0): the
    session is one utterance of which each draw sees one crop, so its target share is that of one crop,
    the stream warns once, and the realised shares match the cropped seconds drawn."""
    common_voice(tmp_path / "cv")
    mls(tmp_path / "mls")
    write_audio(tmp_path / "vp" / "raw_audios" / "fr" / "2019" / "session.ogg", 1800.0, 16000, 3)
    indexes = []
    for name, root, extra in (
        ("cv", tmp_path / "cv", {}),
        ("mls", tmp_path / "mls", {}),
        ("vp", tmp_path / "vp", {"max_seconds": 0}),
    ):
        result = shard(ShardJob(root, tmp_path / "shards" / name, progress=False, **extra))
        indexes.append(str(result.index_path))
    cfg = DataConfig(
        train=indexes,
        max_sample_size=64_000,
        min_sample_size=8_000,
        max_tokens=400_000,
        num_workers=0,
        shuffle_buffer=4,
        bucket_buffer=4,
        num_buckets=1,
    )
    with caplog.at_level(logging.WARNING):
        stream = DataStream(cfg, seed=0)
    assert caplog.text.count("voxpopuli/fr holds 1 utterances longer than") == 1
    hours = stream.hours
    assert hours[("voxpopuli", "fr")] == pytest.approx(4.0 / 3600)  # one 4 s crop, not 0.5 h
    assert hours[("commonvoice", "de")] == pytest.approx(2.0 / 3600, rel=1e-3)
    for _ in range(200):
        next(stream)
    rows = {(r["corpus"], r["language"]): r for r in stream.stream_report(stream.telemetry())}
    seen = {key: row["hours_drawn"] for key, row in rows.items()}
    for key, row in rows.items():
        assert row["realised_share"] == pytest.approx(seen[key] / sum(seen.values()))
        assert abs(row["realised_share"] - row["target_share"]) < 0.06, (key, row)
    session = rows[("voxpopuli", "fr")]
    assert session["stored_hours_drawn"] == pytest.approx(session["utterances"] * 0.5)
    assert session["hours_drawn"] == pytest.approx(session["utterances"] * 4.0 / 3600)
    assert "stored h" in stream.probability_table()


@pytest.mark.slow
def test_stats_run_reports_the_seconds_the_model_saw(small_set: Path, tmp_path: Path):
    """A short real run: `xlsr stats --run` shows seen and stored hours per stream; the shares add up."""
    run = tmp_path / "run"
    result = xlsr(
        "train",
        *train_args(
            small_set / "index.json",
            run,
            "optim.max_update=4",
            "data.min_sample_size=4000",
            "data.max_sample_size=8000",
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    streams = json.loads((run / "summary.json").read_text())["data"]["streams"]
    assert sum(row["realised_share"] for row in streams) == pytest.approx(1.0)
    for row in streams:  # every CV clip is 1 s: each draw sees half a second of it
        assert row["hours_drawn"] == pytest.approx(row["stored_hours_drawn"] / 2, rel=1e-6)
    table = xlsr("stats", "--run", str(run))
    assert table.returncode == 0 and "seen h" in table.stdout and "stored h" in table.stdout


def test_two_corpora_sharing_file_names_are_not_taken_for_copies(tmp_path: Path):
    """Keys name files by corpus, language and relative path; the digest also covers the audio, so two
    different corpora with the same folder structure are two sets, not one set listed twice."""
    indexes = []
    for name, seed in (("one", 1), ("two", 2)):
        write_audio(tmp_path / name / "en" / "a.wav", 1.0, 16000, seed)
        indexes.append(
            str(shard(ShardJob(tmp_path / name, tmp_path / f"out_{name}", progress=False)).index_path)
        )
    keys = [json.loads(Path(i).read_text())["shards"][0]["keys_digest"] for i in indexes]
    assert keys[0] != keys[1]
    check_data_sources(DataConfig(train=indexes))
