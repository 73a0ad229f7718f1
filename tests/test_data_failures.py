"""What the loader does with bad inputs and scarce resources: every failure named in one line.

Malformed indexes, broken shards (missing, unreadable, corrupt, truncated, empty), utterances all
too short, and the cap on open shard readers, on the XLS-R-shaped shard set of the `skewed_index`
fixture.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import pytest
from shard_helpers import skewed_config

from xlsr.data import units as units_module
from xlsr.data.loader import DataStream, build_stream_specs
from xlsr.data.shard_format import ShardIndexError, read_index
from xlsr.data.shard_readers import iter_shard
from xlsr.data.stages import TooShortError
from xlsr.data.stream import SlotPipeline
from xlsr.data.units import EmptyStreamError
from xlsr.process import UserError

# --------------------------------------------------------------------------------------------------
# Index validation

GOOD_SHARD = {"path": "a.tar", "corpus": "c", "language": "en", "samples": 2, "seconds": 1.5}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seconds": float("nan")}, r"shards\[1\]: .* must be >= 0, got 2 and nan"),
        ({"seconds": float("inf")}, r"shards\[1\]: .* must be >= 0, got 2 and inf"),
        ({"seconds": -1.0}, r"shards\[1\]: .* must be >= 0, got 2 and -1.0"),
        ({"seconds": 0}, r"shards\[1\]: 2 samples but 'seconds' is 0"),
        ({"samples": 2.5}, r"shards\[1\]: 'samples' \(a whole number\) .* got 2.5 and 1.5"),
        ({"samples": True}, r"shards\[1\]: 'samples' and 'seconds' must be numbers"),
        ({"seconds": "1.5"}, r"shards\[1\]: 'samples' and 'seconds' must be numbers"),
        ({"language": 7}, r"shards\[1\]: 'language' must be a non-empty string, got 7"),
        ({"corpus": ""}, r"shards\[1\]: 'corpus' must be a non-empty string"),
    ],
)
def test_index_values_are_checked(tmp_path, change, message):
    shards = [GOOD_SHARD, {**GOOD_SHARD, **change}]
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"version": 1, "sample_rate": 16000, "shards": shards}))
    with pytest.raises(ShardIndexError, match=message) as info:
        read_index(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"version": 2}, "not a version-1 shard index"),
        ({"sample_rate": 8000}, "'sample_rate' is 8000, but the model takes 16000 Hz audio"),
        ({"sample_rate": "16000"}, "'sample_rate' is '16000'"),
        ({"audio_format": "mp3"}, "'audio_format' is 'mp3'; supported: flac, int16"),
    ],
)
def test_index_settings_are_checked(tmp_path, settings, message):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"version": 1, "sample_rate": 16000, "shards": [GOOD_SHARD], **settings}))
    with pytest.raises(ShardIndexError, match=message):
        read_index(path)


# --------------------------------------------------------------------------------------------------
# Broken shards


def copy_with_stream_shard(skewed_index, tmp_path, replace) -> tuple[str, str]:
    """An index over the skewed set (absolute paths) whose first two-shard stream's first shard is
    replaced by ``replace(original_bytes) -> path or URL``; returns (index path, the bad URL)."""
    index = json.loads(skewed_index.read_text())
    for shard in index["shards"]:
        shard["path"] = str(skewed_index.parent / shard["path"])
    counts = {}
    for shard in index["shards"]:
        counts[(shard["corpus"], shard["language"])] = counts.get((shard["corpus"], shard["language"]), 0) + 1
    target = next(s for s in index["shards"] if counts[(s["corpus"], s["language"])] == 2)
    with open(target["path"], "rb") as handle:
        bad = replace(handle.read())
    target["path"] = bad
    out = tmp_path / "index.json"
    out.write_text(json.dumps(index))
    return str(out), bad


def one_pass(pipeline: SlotPipeline, stream: int) -> set[str]:
    """The keys of the reader's current pass (reading the first sample of the next pass too)."""
    reader, keys = pipeline.mixer.readers[stream], set()
    current = reader.pass_
    while (item := reader.next())[0][1] == current:
        keys.add(item[1].key)
    return keys


def end_of(data: bytes, samples: int) -> int:
    """Byte offset just after the first ``samples`` samples (two members each) of a tar we wrote."""
    position = 0
    for _ in range(2 * samples):
        size = int(data[position + 124 : position + 136].split(b"\0")[0] or b"0", 8)
        position += 512 + -(-size // 512) * 512
    return position


BROKEN = {  # case -> (directory, the good shard's bytes) -> the broken shard's path or URL
    "missing": lambda path, data: str(path / "gone.tar"),
    "unreadable": lambda path, data: "pipe:exit 3",  # a download command that fails
    "corrupt": lambda path, data: write(path / "x.tar", data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]),
    "truncated": lambda path, data: write(path / "x.tar", data[: end_of(data, 3) + 700]),
    "truncated at a member boundary": lambda path, data: write(path / "x.tar", data[: end_of(data, 3)]),
    "empty": lambda path, data: write(path / "x.tar", b""),
}


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_shard_is_counted_by_cause_and_named_once_per_pass(
    skewed_index, tmp_path, caplog, case, monkeypatch
):
    monkeypatch.setattr(units_module, "_broken_unit_warnings", units_module._RateLimitedWarnings())
    cause = case.split()[0]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    index, bad = copy_with_stream_shard(skewed_index, tmp_path, lambda data: BROKEN[case](bad_dir, data))
    cfg = skewed_config(index)
    if cause == "missing":  # a shard that vanishes after start-up (a missing one is refused up front)
        write(bad_dir / "gone.tar", b"")
        specs, _, _ = build_stream_specs(cfg)
        os.remove(bad)
    else:
        specs, _, _ = build_stream_specs(cfg)
    pipeline = SlotPipeline(specs, cfg, slot=0, num_slots=1, seed=0)
    stream = next(i for i, spec in enumerate(specs) if bad in [s.url for s in spec.shards])
    good = specs[stream].shards[1].url
    with caplog.at_level(logging.WARNING, logger="xlsr.data.units"):
        keys = one_pass(pipeline, stream)
        one_pass(pipeline, stream)
    assert keys >= {sample.key for sample in iter_shard(good)}  # the good shard is read
    counters = pipeline.counters
    assert counters[f"broken_{cause}"] == 2 and counters["broken_units"] == 2, dict(counters)
    assert sum(counters[f"broken_{c}"] for c in units_module.BROKEN_CAUSES) == 2
    lines = [r.getMessage() for r in caplog.records if bad in r.getMessage()]
    assert len(lines) == 2 and all(f"({cause})" in line or f", {cause})" in line for line in lines), lines
    if case == "truncated at a member boundary":
        assert len(keys) == specs[stream].utterances - specs[stream].shards[0].samples + 3


def test_a_stream_with_no_readable_shard_names_each_file_and_why(skewed_index, tmp_path):
    index, bad = copy_with_stream_shard(skewed_index, tmp_path, lambda data: write(tmp_path / "e.tar", b""))
    data = json.loads(Path(index).read_text())
    entry = next(s for s in data["shards"] if s["path"] == bad)
    sibling = next(
        s
        for s in data["shards"]
        if s is not entry and s["language"] == entry["language"] and s["corpus"] == entry["corpus"]
    )
    sibling["path"] = write(tmp_path / "c.tar", b"\x01" * 1024)
    Path(index).write_text(json.dumps(data))
    cfg = skewed_config(index)
    specs, _, _ = build_stream_specs(cfg)
    pipeline = SlotPipeline(specs, cfg, slot=0, num_slots=1, seed=0)
    stream = next(i for i, spec in enumerate(specs) if bad in [s.url for s in spec.shards])
    with pytest.raises(EmptyStreamError) as info:
        one_pass(pipeline, stream)
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert f"{tmp_path / 'c.tar'} (corrupt: TarFormatError" in message
    assert f"{tmp_path / 'e.tar'} (empty: ShortShardError" in message


def test_warnings_are_rate_limited_and_say_how_many_were_dropped(caplog):
    warnings = units_module._RateLimitedWarnings(limit=2, period=3600)
    with caplog.at_level(logging.WARNING, logger="xlsr.data.units"):
        for number in range(5):
            warnings.warn(f"broken {number}")
        warnings.window_start -= 7200  # an hour later
        warnings.warn("broken 5")
    assert [r.getMessage() for r in caplog.records] == [
        "broken 0",
        "broken 1",
        "broken 5 (3 similar warning(s) suppressed before this one)",
    ]


def test_utterances_all_too_short_is_an_error_not_a_hang(skewed_index):
    cfg = skewed_config(skewed_index, min_sample_size=400, max_sample_size=400, max_tokens=4000)
    with pytest.raises(TooShortError) as info:
        next(DataStream(cfg, seed=0))
    message = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in message
    assert "the last 10000 utterances drawn were all shorter than data.min_sample_size=400" in message
    assert "lengths 160-320 samples (0.01-0.02 s" in message


# --------------------------------------------------------------------------------------------------
# Bounded resources


def open_tar_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own fd is gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").endswith(".tar")
    return count


def child_processes() -> int:
    pid = os.getpid()
    children = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as handle:
            children += len(handle.read().split())
    return children


def piped_index(skewed_index, tmp_path, command: str) -> str:
    index = json.loads(skewed_index.read_text())
    for shard in index["shards"]:
        shard["path"] = "pipe:" + command.format(path=skewed_index.parent / shard["path"], offset="{offset}")
    path = tmp_path / "piped.json"
    path.write_text(json.dumps(index))
    return str(path)


SOURCES = {
    "files": None,
    "pipes": "cat {path}",
    # A command told where to start: a closed reader reopens there (the log shows where it started).
    "ranged pipes": "echo {offset} >> offsets.log; tail -c +$(({offset} + 1)) {path}",
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_open_shards_per_slot_stay_under_the_cap(skewed_index, tmp_path, monkeypatch, source):
    """111 streams, cap 4: never more than 4 open tars (or `pipe:` processes), and the draws are
    exactly those of an unbounded slot (closed readers reopen where they stopped)."""
    monkeypatch.chdir(tmp_path)
    command = SOURCES[source]
    index = piped_index(skewed_index, tmp_path, command) if command else str(skewed_index)
    specs, _, _ = build_stream_specs(skewed_config(index))
    capped = SlotPipeline(specs, skewed_config(index, max_open_shards=4), slot=1, num_slots=4, seed=0)
    count_open = child_processes if command else open_tar_fds
    before = count_open()
    keys, most = [], 0
    for number in range(250 if command else 3000):
        keys.append(capped.mixer()[1].key)
        if number % 7 == 0:
            most = max(most, count_open() - before)
    assert most == 4 and capped.mixer.open_readers.reopened > 40
    capped.close()
    assert count_open() == before
    unbounded = SlotPipeline(specs, skewed_config(str(skewed_index), max_open_shards=1000), 1, 4, seed=0)
    assert [unbounded.mixer()[1].key for _ in keys] == keys
    if source == "ranged pipes":
        offsets = [int(line) for line in (tmp_path / "offsets.log").read_text().split()]
        assert sum(offset > 0 for offset in offsets) >= capped.mixer.open_readers.reopened


def test_plain_pipes_under_a_cap_warn_about_rereading(skewed_index, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        DataStream(skewed_config(piped_index(skewed_index, tmp_path, "cat {path}")), seed=0)
    assert "111 of 111 streams are read through `pipe:` commands without {offset}" in caplog.text
    assert "data.max_open_shards=16" in caplog.text and "set data.max_open_shards=111" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        DataStream(skewed_config(piped_index(skewed_index, tmp_path, "cat {path} #{offset}")), seed=0)
    assert caplog.text == ""


def test_resume_is_exact_with_readers_capped(skewed_index):
    cfg = skewed_config(skewed_index, max_open_shards=3, num_workers=2)
    uninterrupted = DataStream(cfg, seed=4)
    reference = [next(uninterrupted) for _ in range(12)]
    uninterrupted.close()
    first = DataStream(cfg, seed=4)
    for _ in range(7):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    resumed = DataStream(cfg, seed=4)
    resumed.load_state_dict(state)
    for expected in reference[7:]:
        got = next(resumed)
        assert got.keys == expected.keys and got.source.equal(expected.source)
    resumed.close()


def test_positions_are_not_replayed_on_another_plan(skewed_index, tmp_path, caplog):
    """Read positions name samples only under the plan that wrote them: a checkpoint over other
    shards restarts the stream (a new seed, and a warning)."""
    cfg = skewed_config(skewed_index)
    stream = DataStream(cfg, seed=4)
    next(stream)
    state = stream.state_dict()
    index = json.loads(skewed_index.read_text())
    index["shards"] = [{**s, "path": str(skewed_index.parent / s["path"])} for s in index["shards"][1:]]
    (tmp_path / "index.json").write_text(json.dumps(index))
    for changed, before, reason in [
        (skewed_config(tmp_path / "index.json"), state, "the data plan changed (data.train, its"),
    ]:
        resumed = DataStream(changed, seed=4)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            resumed.load_state_dict(before)
        assert reason in caplog.text and resumed.seed != 4


# --------------------------------------------------------------------------------------------------
# Telemetry


def test_telemetry_counts_what_the_slots_drew(skewed_index, tmp_path, capsys):
    cfg = skewed_config(skewed_index, num_workers=2)
    stream = DataStream(cfg, seed=0)
    batches = [next(stream) for _ in range(40)]
    totals = stream.telemetry()
    stream.close()
    assert totals.shape == (len(stream.specs), 4) and totals.dtype.is_floating_point
    # Every batched utterance was drawn; drawn but still buffered ones are counted too.
    batched = sum(len(b.keys) for b in batches)
    assert batched <= totals[:, 0].sum() <= batched + 2 * (cfg.shuffle_buffer + cfg.bucket_buffer) + 2
    rows = stream.stream_report(totals)
    assert [f"{r['corpus']}/{r['language']}" for r in rows] == [s.name for s in stream.specs]
    assert sum(r["realised_share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["target_share"] for r in rows) == pytest.approx(1.0)
    for row, spec, counts in zip(rows, stream.specs, totals.tolist(), strict=True):
        utterances, samples, too_short, stored = counts
        assert row["utterances"] == utterances and row["hours_drawn"] == pytest.approx(samples / 16000 / 3600)
        assert row["stored_hours_drawn"] == pytest.approx(stored / 16000 / 3600) and stored >= samples
        assert row["passes"] == pytest.approx((utterances + too_short) / spec.utterances)
    # `xlsr stats --run` (and `xlsr stats RUN_DIR`) prints the same table from summary.json.
    from sharding.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"data": {"streams": rows}}))
    for argv in (["stats", "--run", str(run)], ["stats", str(run)]):
        assert main(argv) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == [
            "corpus",
            "language",
            "target",
            "%",
            "realised",
            "%",
            "x",
            "seen",
            "h",
            "stored",
            "h",
            "utterances",
            "passes",
        ]
        assert len(table) == len(rows) + 4
    assert main(["stats", "--run", str(tmp_path)]) == 2
    assert "summary.json not found" in capsys.readouterr().err
