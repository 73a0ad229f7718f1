"""Tests for `sharding/`: real audio files, real tars, read back with webdataset. No mocks."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from run_helpers import xlsr
from shard_helpers import dir_records, peak_frequency, read_samples, shard_config, sine, tars_of

from sharding import ShardError, ShardJob, shard, stats
from sharding.audio import AudioError, decode_file
from sharding.cli import add_shard_arguments, add_stats_arguments, main, parse_size, run_shard, run_stats
from sharding.hours import format_hours_table, plot_hours, stream_hours
from sharding.manifest import SourceRecord, read_manifest
from sharding.synthetic import LANGUAGE_SECONDS, SAMPLE_RATES, generate_demo_corpus
from sharding.writer import build_index, read_skipped, write_shards
from xlsr.config import DataConfig
from xlsr.data.loader import DataStream
from xlsr.data.shard_format import (
    ShardIndexError,
    check_shards_exist,
    read_index,
)

SCALE = 0.08  # about a minute of audio: enough for several shards per large stream, fast to shard


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_corpus(tmp_path_factory.mktemp("demo") / "corpus", seed=0, scale=SCALE)


@pytest.fixture(scope="module")
def sharded(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shards")
    index = write_shards(dir_records(demo, "demo"), shard_config(out), progress=False)
    return out, index


# --------------------------------------------------------------------------------------------------
# Manifests and layouts


def test_read_manifest_tsv_resolves_relative_paths(tmp_path: Path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        "path\tlanguage\tcorpus\tspeaker\tduration\na/x.wav\ten\tcv\ts1\t2.5\n/abs/y.flac\tde\t\t\t\n\n"
    )
    records = read_manifest(manifest, default_corpus="mine")
    assert records == [
        SourceRecord(str(tmp_path / "a" / "x.wav"), "en", "cv", "s1", 2.5, rel_path="a/x.wav"),
        SourceRecord("/abs/y.flac", "de", "mine", None, None),
    ]


def test_read_manifest_jsonl(tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"path": "x.wav", "language": "sw", "duration": 1},
        {"path": "y.ogg", "language": "yo", "speaker": 7},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_manifest(manifest)
    assert [(r.language, r.corpus, r.speaker, r.duration) for r in records] == [
        ("sw", "corpus", None, 1.0),
        ("yo", "corpus", "7", None),
    ]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.tsv", "path\tlanguage\nx.wav\ten\ny.wav\t\n", r"bad\.tsv:3: missing required field 'language'"),
        ("cols.tsv", "path\tlanguage\nx.wav\ten\textra\n", r"cols\.tsv:2: expected 2 tab-separated fields"),
        ("hdr.tsv", "file\tlanguage\nx.wav\ten\n", r"hdr\.tsv:1: header has no 'path' column"),
        (
            "dur.jsonl",
            '{"path": "x", "language": "en", "duration": "long"}\n',
            r"dur\.jsonl:1: field 'duration'",
        ),
        ("json.jsonl", '{"path": "x", "language": "en"}\n{oops\n', r"json\.jsonl:2: invalid JSON"),
        ("name.tsv", "path\tlanguage\nx.wav\ten.us\n", r"name\.tsv:2: bad language 'en\.us'"),
    ],
)
def test_read_manifest_errors_name_file_line_and_field(tmp_path: Path, name: str, text: str, message: str):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / name)


# --------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize(("extension", "subtype"), [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")])
def test_decode_file_formats(tmp_path: Path, extension: str, subtype: str):
    path = tmp_path / f"x.{extension}"
    sf.write(path, sine(300, 16000, 1.0), 16000, subtype=subtype)
    audio = decode_file(path).samples
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) <= 64  # vorbis may pad a few samples
    assert abs(peak_frequency(audio, 16000) - 300) < 2


def test_decode_file_downmixes_stereo(tmp_path: Path):
    left, right = sine(200, 16000, 0.5, 0.4), sine(200, 16000, 0.5, 0.2)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    decoded = decode_file(tmp_path / "s.wav")
    assert decoded.source_channels == 2
    np.testing.assert_allclose(decoded.samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("source_sr", [8000, 44100])
def test_decode_file_resamples_to_16k(tmp_path: Path, source_sr: int):
    sf.write(tmp_path / "r.wav", sine(440, source_sr, 2.0), source_sr, subtype="PCM_16")
    decoded = decode_file(tmp_path / "r.wav")
    assert decoded.source_sample_rate == source_sr and decoded.sample_rate == 16000
    assert len(decoded.samples) == 32000
    assert abs(peak_frequency(decoded.samples, 16000) - 440) < 1.0


def test_audio_error_reasons(tmp_path: Path):
    (tmp_path / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(2000))
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    nan = sine(100, 16000, 1.0)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", sine(100, 16000, 0.1), 16000)
    sf.write(tmp_path / "silent.wav", np.full(16000, 1e-5, np.float32), 16000, subtype="FLOAT")
    expected = {
        "corrupt.flac": "unreadable",
        "empty.wav": "empty",
        "nan.wav": "nan",
        "short.wav": "too_short",
        "missing.wav": "not_found",
    }
    for name, reason in expected.items():
        with pytest.raises(AudioError) as info:
            decode_file(tmp_path / name)
        assert info.value.reason == reason, name
        assert name in str(info.value)
    assert len(decode_file(tmp_path / "silent.wav").samples) == 16000  # dropped only on request
    with pytest.raises(AudioError) as info:
        decode_file(tmp_path / "silent.wav", drop_silent=True)
    assert info.value.reason == "silent"


# --------------------------------------------------------------------------------------------------
# Synthetic demo corpus


def test_demo_corpus_contents(demo: Path):
    files = sorted(p for p in demo.rglob("*") if p.is_file() and p.name != ".complete")
    languages = {p.relative_to(demo).parts[0] for p in files}
    assert languages == set(LANGUAGE_SECONDS) and len(languages) >= 6
    assert {p.suffix for p in files} == {".wav", ".flac", ".ogg"}
    readable = [p for p in files if "corrupt" not in p.name]
    infos = {p: sf.info(p) for p in readable}
    assert {i.samplerate for i in infos.values()} == set(SAMPLE_RATES)
    assert [p.name for p, i in infos.items() if i.channels == 2] == ["stereo_0000.wav"]
    assert [p.name for p, i in infos.items() if i.duration < 0.25] == ["short_0000.wav"]
    utterances = [i.duration for p, i in infos.items() if "_0" in p.name and "short" not in p.name]
    assert all(1.5 <= d <= 8.0 for d in utterances)
    with pytest.raises(sf.LibsndfileError):
        sf.info(demo / "yo" / "corrupt" / "corrupt_0000.flac")
    seconds: dict[str, float] = dict.fromkeys(languages, 0.0)
    for path, info in infos.items():
        seconds[path.relative_to(demo).parts[0]] += info.duration
    assert seconds["en"] > seconds["de"] > seconds["sw"] > seconds["mt"]  # deliberately unbalanced


def test_demo_corpus_is_deterministic_and_idempotent(tmp_path: Path):
    a = generate_demo_corpus(tmp_path / "a", seed=3, scale=0.03)
    b = generate_demo_corpus(tmp_path / "b", seed=3, scale=0.03)
    c = generate_demo_corpus(tmp_path / "c", seed=4, scale=0.03)
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in names:
        if rel.suffix in (".wav", ".flac") and "corrupt" not in rel.name:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        elif rel.suffix == ".ogg":  # libsndfile picks a random Ogg stream serial: compare the audio
            np.testing.assert_array_equal(sf.read(a / rel)[0], sf.read(b / rel)[0])
    # Another seed: other speakers, under other names (file names make keys), and other audio.
    [first_a], [first_c] = sorted(a.glob("en/*/en_0000.wav")), sorted(c.glob("en/*/en_0000.wav"))
    assert first_a.parent.name == "en-s3-00" and first_c.parent.name == "en-s4-00"
    assert first_a.read_bytes() != first_c.read_bytes()
    before = {p: p.stat().st_mtime_ns for p in a.rglob("*")}
    assert generate_demo_corpus(a, seed=3, scale=0.03) == a
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*")} == before


# --------------------------------------------------------------------------------------------------
# Shard writing


def test_write_shards_end_to_end(demo: Path, sharded: tuple[Path, dict]):
    out, index = sharded
    assert json.loads((out / "index.json").read_text()) == index
    assert index["version"] == 1 and index["sample_rate"] == 16000 and index["audio_format"] == "flac"
    assert [s["path"] for s in index["shards"]] == sorted(p.relative_to(out).as_posix() for p in tars_of(out))
    assert len(index["shards"]) > len(LANGUAGE_SECONDS)  # the larger streams span several shards

    samples = read_samples(out)
    metas = [json.loads(s["json"]) for s in samples]
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == index["totals"]["samples"]
    assert all("." not in key and key == meta["key"] for key, meta in zip(keys, metas, strict=True))
    seconds = sum(meta["duration"] for meta in metas)
    assert seconds == pytest.approx(index["totals"]["seconds"])
    assert sum(s["seconds"] for s in index["shards"]) == pytest.approx(seconds)
    for entry in index["shards"]:
        in_shard = [m for m, s in zip(metas, samples, strict=True) if s["__url__"].endswith(entry["path"])]
        assert len(in_shard) == entry["samples"]
        assert {(m["corpus"], m["language"]) for m in in_shard} == {(entry["corpus"], entry["language"])}
    hours = index["totals"]["hours_by_language"]
    assert set(hours) == set(LANGUAGE_SECONDS) and sum(hours.values()) == pytest.approx(seconds / 3600)

    for sample, meta in zip(samples, metas, strict=True):
        audio, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert sr == 16000 and audio.ndim == 1 and len(audio) == meta["num_samples"]
    stereo = [m for m in metas if m["source"].endswith("stereo_0000.wav")]
    assert len(stereo) == 1 and stereo[0]["source_channels"] == 2 and stereo[0]["source_sample_rate"] == 44100
    assert {m["source_sample_rate"] for m in metas} == set(SAMPLE_RATES)

    skipped = {Path(row["path"]).name: row["reason"] for row in read_skipped(out)}
    assert skipped == {"corrupt_0000.flac": "unreadable", "short_0000.wav": "too_short"}
    assert index["skipped"] == {"count": 2, "by_reason": {"too_short": 1, "unreadable": 1}}


def test_shards_are_deterministic_serial_vs_parallel(demo: Path, sharded: tuple[Path, dict], tmp_path: Path):
    out, index = sharded
    again = write_shards(dir_records(demo, "demo"), shard_config(tmp_path, workers=2), progress=False)
    assert again == index
    for tar in tars_of(out):
        assert tar.read_bytes() == (tmp_path / tar.relative_to(out)).read_bytes(), tar


def test_resume_rewrites_only_missing_shard(demo: Path, sharded: tuple[Path, dict], tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(sharded[0], out)
    records = dir_records(demo, "demo")
    victim = tars_of(out)[1]
    original = victim.read_bytes()
    victim.unlink()
    stale = victim.with_name(victim.name + ".tmp")
    stale.write_bytes(b"half a tar")
    with pytest.raises(RuntimeError, match=f"1 planned shard.*{victim.relative_to(out).as_posix()}"):
        build_index(out)
    untouched = [
        p
        for p in [*tars_of(out), *out.glob("*/*/shard-*.json")]
        if p.with_suffix("") != victim.with_suffix("")
    ]

    def mtimes() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in untouched}

    assert len(untouched) == 2 * len(sharded[1]["shards"]) - 2
    before = mtimes()
    index = write_shards(records, shard_config(out), progress=False)
    assert index == sharded[1]
    assert victim.read_bytes() == original and not stale.exists()
    assert mtimes() == before  # other tars and sidecars were not rewritten


def test_changed_settings_invalidate_finished_shards(demo: Path, sharded: tuple[Path, dict], tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(sharded[0], out)
    index = write_shards(dir_records(demo, "demo"), shard_config(out, min_seconds=3.0), progress=False)
    assert index["totals"]["samples"] < sharded[1]["totals"]["samples"]
    assert index["skipped"]["by_reason"]["too_short"] > 1
    # A new plan with fewer, larger shards: left-over shards of the old plan stay out of the index.
    index = write_shards(dir_records(demo, "demo"), shard_config(out, shard_size_bytes=10**9), progress=False)
    assert [s["path"] for s in index["shards"]] == [
        f"demo/{lang}/shard-000000.tar" for lang in sorted(LANGUAGE_SECONDS)
    ]
    assert index["totals"] == sharded[1]["totals"]


def test_task_slicing_writes_disjoint_shards_and_merges(
    demo: Path, sharded: tuple[Path, dict], tmp_path: Path
):
    jobs = [
        ShardJob(
            demo, tmp_path, corpus="demo", shard_size_bytes=400_000, task_index=i, num_tasks=2, progress=False
        )
        for i in (0, 1)
    ]
    parts = [shard(job) for job in jobs]
    assert all(part.index is None and part.task is not None for part in parts)
    assigned = [set(part.task.assigned) for part in parts]
    assert assigned[0] and assigned[1] and not assigned[0] & assigned[1]
    assert parts[1].task.written == len(assigned[1]) and parts[1].task.planned == len(sharded[1]["shards"])
    assert parts[0].summary().startswith(f"task 0/2: {len(assigned[0])} shard(s) ({len(assigned[0])} written")
    assert not (tmp_path / "index.json").exists()
    assert build_index(tmp_path) == sharded[1]
    assert sorted(p.relative_to(tmp_path) for p in tars_of(tmp_path)) == sorted(
        p.relative_to(sharded[0]) for p in tars_of(sharded[0])
    )


def test_max_seconds_cuts_contiguous_segments_and_int16(tmp_path: Path):
    (tmp_path / "in" / "en").mkdir(parents=True)
    sf.write(tmp_path / "in" / "en" / "long.wav", sine(220, 16000, 9.0), 16000)
    sf.write(tmp_path / "in" / "en" / "short.wav", sine(220, 16000, 3.0), 16000)
    out = tmp_path / "out"
    cfg = shard_config(out, max_seconds=4.0, audio_format="int16")
    index = write_shards(dir_records(tmp_path / "in", "c"), cfg, progress=False)
    assert index["audio_format"] == "int16"
    assert index["totals"]["seconds"] == pytest.approx(12.0)
    by_source: dict[str, list[tuple[dict, bytes]]] = {}
    for sample in read_samples(out):
        meta = json.loads(sample["json"])
        by_source.setdefault(Path(meta["source"]).name, []).append((meta, sample["s16"]))
    # 9 s with at most 4 s per piece and no pause: pieces of 2-4 s (never a tiny tail), contiguous.
    long = sorted(by_source["long.wav"], key=lambda item: item[0]["segment"])
    assert [m["segment"] for m, _ in long] == [0, 1, 2]
    lengths = [m["num_samples"] for m, _ in long]
    assert sum(lengths) == 144000 and all(32000 <= n <= 64000 for n in lengths)
    assert [m["offset"] for m, _ in long] == [0.0, lengths[0] / 16000, (lengths[0] + lengths[1]) / 16000]
    assert all(len(audio) == 2 * m["num_samples"] for m, audio in long)
    stitched = np.concatenate([np.frombuffer(audio, "<i2") for _, audio in long]) / 32767.0
    np.testing.assert_allclose(stitched, sine(220, 16000, 9.0), atol=1e-4)
    assert [m["segment"] for m, _ in by_source["short.wav"]] == [0]


def test_duplicates_and_empty_streams(tmp_path: Path):
    good, bad = tmp_path / "good.wav", tmp_path / "bad.wav"
    sf.write(good, sine(100, 16000, 1.0), 16000)
    bad.write_bytes(b"RIFF nonsense")
    records = [
        SourceRecord(str(good), "en", "c"),
        SourceRecord(str(good), "en", "c"),
        SourceRecord(str(bad), "xx", "c"),
    ]
    out = tmp_path / "out"
    index = write_shards(records, shard_config(out), progress=False)
    assert [s["path"] for s in index["shards"]] == ["c/en/shard-000000.tar"]  # xx had no usable audio
    assert (out / "c" / "xx" / "shard-000000.json").is_file() and not (
        out / "c" / "xx" / "shard-000000.tar"
    ).exists()
    assert index["skipped"] == {"count": 2, "by_reason": {"duplicate": 1, "unreadable": 1}}
    assert write_shards(records, shard_config(out), progress=False) == index  # all complete: nothing redone


# --------------------------------------------------------------------------------------------------
# Stats and CLI


def test_stats_table_and_plot(sharded: tuple[Path, dict], tmp_path: Path):
    out, index = sharded
    assert read_index(out).data == read_index(out / "index.json").data == index
    hours = stream_hours(index)
    assert set(hours) == {("demo", lang) for lang in LANGUAGE_SECONDS}
    table = format_hours_table(index, 0.5, 0.5)
    assert all(f"demo          {lang}" in table for lang in LANGUAGE_SECONDS)
    png = plot_hours(index, tmp_path / "plots" / "h.png", 0.3, 0.5)
    assert png.read_bytes().startswith(b"\x89PNG") and not list(png.parent.glob(".*"))


def test_stats_api_returns_the_table(sharded: tuple[Path, dict], tmp_path: Path):
    out, index = sharded
    result = stats(out / "index.json", language_alpha=0.3, corpus_alpha=0.5)
    assert result.index == index and result.index_path == out / "index.json" and result.plot is None
    assert result.table == format_hours_table(index, 0.3, 0.5)
    assert result.hours == stream_hours(index, 20.0) == stream_hours(index) and sum(
        result.probabilities.values()
    ) == pytest.approx(1.0)
    # alpha < 1 moves share from the largest language to the smallest
    natural = {key: h / sum(result.hours.values()) for key, h in result.hours.items()}
    assert result.probabilities[("demo", "mt")] > natural[("demo", "mt")]
    assert result.probabilities[("demo", "en")] < natural[("demo", "en")]
    plotted = stats(out, plot=tmp_path / "h.png")
    assert plotted.plot == tmp_path / "h.png" and plotted.plot.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ShardError, match="language_alpha must lie in"):
        stats(out, language_alpha=1.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "shard index not found"),
        (b"{not json", "not a valid JSON index"),
        (b"\xff\xfe", "not a valid JSON index"),
        ([], "not a version-1 shard index"),
        ({"shards": []}, "not a version-1 shard index"),  # the loader used to accept it
        ({"version": 2, "shards": []}, "not a version-1 shard index"),
        ({"version": 1}, "expected a 'shards' list"),
        ({"version": 1, "shards": {}}, "expected a 'shards' list"),
        ({"version": 1, "shards": ["a.tar"]}, r"shards\[0\] is not an object"),
        (
            {"version": 1, "shards": [{"path": "a.tar", "corpus": "c", "language": "en"}]},
            "lacks samples, seconds",
        ),
        (
            {
                "version": 1,
                "shards": [{"path": None, "corpus": "c", "language": "en", "samples": 1, "seconds": 1}],
            },
            "'path' must be a non-empty string",
        ),
        # `xlsr stats` used to accept these, and the loader rejected them
        (
            {
                "version": 1,
                "shards": [{"path": "a", "corpus": "c", "language": "en", "samples": "many", "seconds": 1}],
            },
            "must be numbers",
        ),
        (
            {
                "version": 1,
                "shards": [{"path": "a", "corpus": "c", "language": "en", "samples": -1, "seconds": 1}],
            },
            "must be >= 0",
        ),
    ],
)
def test_index_reader_rejects_malformed_indexes(tmp_path: Path, content, message: str):
    path = tmp_path / "index.json"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(ShardIndexError, match=message) as info:
        read_index(tmp_path)  # a directory means the index inside it
    assert str(path) in str(info.value)


def test_index_reader_resolves_shard_urls(tmp_path: Path):
    entries = [
        ("a/x.tar", str(tmp_path / "a/x.tar")),
        ("/abs/y.tar", "/abs/y.tar"),
        ("pipe:cat z", "pipe:cat z"),
    ]
    shards = [{"path": p, "corpus": "c", "language": "en", "samples": 2, "seconds": 1.5} for p, _ in entries]
    (tmp_path / "index.json").write_text(json.dumps({"version": 1, "shards": shards}))
    index = read_index(tmp_path / "index.json")
    assert [s.url for s in index.shards] == [url for _, url in entries]
    assert (index.shards[0].samples, index.shards[0].seconds) == (2, 1.5)


def test_parse_size():
    assert parse_size("1GB") == 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("123") == 123
    assert parse_size("1.5g") == 1_500_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


def test_cli_shard_and_stats(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    parser = add_shard_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    args = parser.parse_args(
        [str(demo), str(out), "--corpus", "demo", "--shard-size", "500KB", "--no-progress"]
    )
    assert args.shard_size == 500_000 and args.layout is None
    assert run_shard(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "skipped 2 files (too_short: 1, unreadable: 1) -> " in printed and "skipped.tsv" in printed
    assert "corrupt_0000.flac\tunreadable" in printed and "short_0000.wav\ttoo_short" in printed
    assert "sampled %" in printed and "mt" in printed
    assert f"source files from {demo} (layout dir)" in captured.err

    # The typed API writes the same index and reports the same summary.
    api = tmp_path / "api"
    result = shard(ShardJob(demo, api, corpus="demo", shard_size_bytes=500_000, progress=False))
    assert result.index == json.loads((out / "index.json").read_text())
    assert result.index_path == api / "index.json" and result.layout == "dir"
    assert result.summary() + "\n" == printed.replace(str(out), str(api))

    stats_parser = add_stats_arguments(argparse.ArgumentParser())
    assert run_stats(stats_parser.parse_args([str(out / "index.json"), "--alpha", "0.3"])) == 0
    assert (out / "hours.png").is_file() and str(out / "hours.png") in capsys.readouterr().out


def test_cli_shard_errors(tmp_path: Path, capsys: pytest.CaptureFixture):
    parser = add_shard_arguments(argparse.ArgumentParser())
    assert run_shard(parser.parse_args([str(tmp_path / "nope"), str(tmp_path / "out")])) == 2
    assert "input not found" in capsys.readouterr().err
    (tmp_path / "empty" / "en").mkdir(parents=True)
    assert run_shard(parser.parse_args([str(tmp_path / "empty"), str(tmp_path / "out")])) == 2
    assert "no audio files found" in capsys.readouterr().err
    manifest = tmp_path / "m.tsv"
    manifest.write_text("path\tlanguage\nx.wav\n")
    assert run_shard(parser.parse_args([str(manifest), str(tmp_path / "out")])) == 2
    assert "m.tsv:2" in capsys.readouterr().err
    bad_task = [str(manifest), str(tmp_path / "out"), "--task-index", "2", "--num-tasks", "2"]
    assert run_shard(parser.parse_args(bad_task)) == 2
    assert capsys.readouterr().err.startswith("error: task_index must lie in [0, num_tasks)")
    bad_split = [str(manifest), str(tmp_path / "out"), "--min-seconds", "5", "--max-seconds", "2"]
    assert run_shard(parser.parse_args(bad_split)) == 2
    assert "max_seconds (2) must be >= min_seconds (5)" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "nowhere")]) == 2
    assert "shard index not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "index.json")


def test_shard_job_checks_its_values(tmp_path: Path):
    with pytest.raises(ShardError, match="task_index"):
        ShardJob(tmp_path, tmp_path / "out", task_index=-1)
    with pytest.raises(ShardError, match="audio_format"):
        ShardJob(tmp_path, tmp_path / "out", audio_format="mp3")
    with pytest.raises(ShardError, match="workers"):
        ShardJob(tmp_path, tmp_path / "out", workers=0)
    job = ShardJob(str(tmp_path), str(tmp_path / "out"))  # paths may be given as strings
    assert job.input == tmp_path and job.out_dir == tmp_path / "out"


def test_missing_shards_are_named(sharded: tuple[Path, dict], tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(sharded[0], out)
    check_shards_exist(read_index(out))  # all there
    tars = tars_of(out)
    for tar in tars:
        tar.unlink()
    # `xlsr stats` reads only the index: fine without the tars.
    result = xlsr("stats", str(out / "index.json"), "--plot", str(tmp_path / "h.png"))
    assert result.returncode == 0 and "mt" in result.stdout, result.stderr
    # The loader checks them first: one line with the first few paths and how many.
    with pytest.raises(ShardIndexError) as info:
        check_shards_exist(read_index(out))
    message = str(info.value)
    assert "\n" not in message and str(out / "index.json") in message
    assert f"{len(tars)} of {len(tars)} shard(s) missing: " in message
    assert all(str(tar) in message for tar in tars[:3]) and f"and {len(tars) - 3} more" in message
    # ... before any DataLoader worker starts
    with pytest.raises(ShardIndexError, match=f"{len(tars)} of {len(tars)} shard"):
        DataStream(DataConfig(train=[str(out / "index.json")], num_workers=0), seed=0)
