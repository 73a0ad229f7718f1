"""Corpus layouts as the official downloads lay them out: files found, languages canonical, evaluation
splits kept out, long recordings cut at pauses, keys independent of the mount point, and one-line
explanations for roots that fit no layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpus_layouts import (
    babel,
    babel_lao,
    common_voice,
    fleurs,
    mls,
    speech_like,
    voxlingua,
    voxpopuli,
    write_audio,
)
from run_helpers import xlsr
from shard_helpers import read_samples

from sharding import ShardJob, shard
from sharding.corpora import ImportOptions, LayoutError, detect_layout, read_corpus
from sharding.languages import canonical_tag
from sharding.segment import segment_bounds


def found_by_rel(found) -> dict[str, tuple[str, str | None, str | None]]:
    """rel_path -> (language, source language, speaker)."""
    return {r.rel_path: (r.language, r.source_language, r.speaker) for r in found.records}


def test_language_names_map_to_one_bcp47_tag():
    cases = {
        "german": "de", "polish_opus": "pl", "de_de": "de", "de-DE": "de", "iw": "he", "jw": "jv",
        "sv-SE": "sv", "zh-HK": "yue", "zh-TW": "zh", "cmn_hans_cn": "zh", "yue_hant_hk": "yue",
        "rm-sursilv": "rm-sursilv", "nan-tw": "nan", "pt-BR": "pt", "english": "en", "swh": "sw",
    }  # fmt: skip
    assert {name: canonical_tag(name) for name in cases} == cases
    assert canonical_tag("l000") is None and canonical_tag("synthetic") is None


def test_common_voice_release_keeps_dev_and_test_out(tmp_path: Path):
    release = common_voice(tmp_path)
    found = read_corpus(release, None, ImportOptions())
    assert found.layout == "commonvoice" and "layout commonvoice detected" in found.summary_lines()[0]
    records = found_by_rel(found)
    # validated.tsv has clips 0-3; 2 is in dev.tsv, 3 in test.tsv: clips 0 and 1 train.
    assert sorted(records) == sorted(
        f"{lang}/clips/common_voice_{lang}_{n}.mp3" for lang in ("de", "zh-HK", "sv-SE") for n in (0, 1)
    )
    assert {v[:2] for v in records.values()} == {("de", None), ("yue", "zh-HK"), ("sv", "sv-SE")}
    assert found.excluded_splits == {"dev": 3, "test": 3}
    assert "evaluation splits kept out (dev: 3, test: 3 files)" in " ".join(found.summary_lines())
    assert {r.text for r in found.records if r.rel_path == "de/clips/common_voice_de_0.mp3"} == {
        "sentence 0 in de"
    }
    assert {r.duration for r in found.records} == {1.0}
    # The folder above the release, and one language folder, give the same records (same keys).
    assert found_by_rel(read_corpus(tmp_path, None, ImportOptions())) == records
    one = read_corpus(release / "de", None, ImportOptions())
    assert set(found_by_rel(one)) == {k for k in records if k.startswith("de/")}
    everything = read_corpus(release, "commonvoice", ImportOptions(include_splits=frozenset({"dev", "test"})))
    assert len(everything.records) == 12 and not everything.excluded_splits
    unvalidated = read_corpus(release, "commonvoice", ImportOptions(include_unvalidated=True))
    assert len(unvalidated.records) == 9


def test_mls_reads_one_release_per_language_and_train_only(tmp_path: Path):
    found = read_corpus(mls(tmp_path), None, ImportOptions())
    assert found.layout == "mls"
    records = found_by_rel(found)
    assert sorted(records) == [
        "mls_german/train/audio/1001/77/1001_77_000000.flac",
        "mls_german/train/audio/1001/77/1001_77_000001.flac",
        "mls_polish/train/audio/1001/77/1001_77_000000.flac",
        "mls_polish/train/audio/1001/77/1001_77_000001.flac",
    ]
    assert {v for v in records.values()} == {("de", "german", "1001"), ("pl", "polish", "1001")}
    assert found.excluded_splits == {"dev": 4, "test": 4}
    assert any("mls_polish_opus/ not read" in line for line in found.summary_lines())
    assert {r.text for r in found.records} == {"word 0", "word 1"}
    # The opus release alone is read as pl too, and decodes.
    opus_only = read_corpus(tmp_path / "mls_polish_opus", None, ImportOptions())
    assert {r.language for r in opus_only.records} == {"pl"} and len(opus_only.records) == 2
    assert sf.info(opus_only.records[0].path).samplerate == 48000


def test_voxpopuli_reads_segments_or_sessions_never_both(tmp_path: Path):
    root = voxpopuli(tmp_path)
    found = read_corpus(root, None, ImportOptions())
    assert found.layout == "voxpopuli" and len(found.records) == 3
    assert {r.rel_path.split("/")[0] for r in found.records} == {"unlabelled_data"}
    assert any("raw_audios/ holds the same sessions uncut" in line for line in found.summary_lines())
    assert not any(line.startswith("kept as given") for line in found.summary_lines())
    # Segments of one session are one group in the held-out split.
    assert {r.speaker for r in found.records} == {"session-20190415-0900-PLENARY"}
    sessions = read_corpus(root / "raw_audios", None, ImportOptions())
    assert [r.rel_path for r in sessions.records] == ["raw_audios/fr/2019/20190415-0900-PLENARY.ogg"]
    assert any("raw_audios/original/ not read" in line for line in sessions.summary_lines())
    segmented = read_corpus(root / "unlabelled_data", None, ImportOptions())
    assert found_by_rel(segmented) == found_by_rel(found)


def test_babel_pack_reads_sph_by_pack_language(tmp_path: Path):
    pack = babel(tmp_path)
    for root in (tmp_path, pack):
        found = read_corpus(root, None, ImportOptions())
        assert found.layout == "babel"
        records = found_by_rel(found)
        assert sorted(records) == [
            "BABEL_OP2_202/conversational/training/audio/BABEL_OP2_202_10524_20131009_200043_inLine.sph",
            "BABEL_OP2_202/scripted/training/audio/BABEL_OP2_202_40111_20131012_120000_scripted.sph",
        ]
        assert {v[0] for v in records.values()} == {"sw"}
        assert {v[2] for v in records.values()} == {"BABEL_OP2_202-10524", "BABEL_OP2_202-40111"}
        assert found.excluded_splits == {"dev": 1, "eval": 1}
        assert any("sub-train/ not read" in line for line in found.summary_lines())
    texts = {r.text for r in found.records}
    assert texts == {"habari yako", None}
    dev = read_corpus(pack, "babel", ImportOptions(include_splits=frozenset({"dev"})))
    assert len(dev.records) == 3
    lao = read_corpus(babel_lao(tmp_path / "lao"), None, ImportOptions())
    assert [(r.language, r.speaker) for r in lao.records] == [("lo", "IARPA_Babel_203-11111")]


def test_voxlingua_and_fleurs_layouts(tmp_path: Path):
    found = read_corpus(voxlingua(tmp_path / "vl"), None, ImportOptions())
    assert found.layout == "voxlingua107"
    assert sorted({r.language for r in found.records}) == ["en", "he", "jv"]
    assert {r.source_language for r in found.records} == {None, "iw", "jw"}
    assert found.excluded_splits == {"dev": 1} and len(found.records) == 6
    assert {r.speaker for r in found.records if r.language == "he"} == {"video-vidiwA"}
    # Unzipped into train/ (speechbrain's recipe): the same records, the same keys.
    in_train = read_corpus(voxlingua(tmp_path / "vl2", into_train=True), None, ImportOptions())
    assert found_by_rel(in_train) == found_by_rel(found) and in_train.excluded_splits == {"dev": 1}
    with_dev = read_corpus(tmp_path / "vl", None, ImportOptions(include_splits=frozenset({"dev"})))
    assert "dev/en/devvid__U__S0---0001.000-0002.500.wav" in found_by_rel(with_dev)

    found = read_corpus(fleurs(tmp_path / "fl"), None, ImportOptions())
    assert found.layout == "fleurs"
    assert sorted({(r.language, r.source_language) for r in found.records}) == [
        ("de", "de_de"),
        ("zh", "cmn_hans_cn"),
    ]
    assert found.excluded_splits == {"dev": 4, "test": 4} and len(found.records) == 4
    assert {r.text for r in found.records} == {"Raw text 0.", "Raw text 1."}
    # A clone of the Hugging Face repository keeps the languages under data/.
    fleurs(tmp_path / "repo" / "data")
    clone = read_corpus(tmp_path / "repo", None, ImportOptions())
    assert clone.layout == "fleurs" and found_by_rel(clone) == found_by_rel(found)


def test_dir_layout_counts_files_ignored_for_their_suffix_and_reads_sph(tmp_path: Path):
    write_audio(tmp_path / "c" / "sw" / "a.sph", 1.0, 8000, 1, "ALAW")
    write_audio(tmp_path / "c" / "sw" / "b.flac")
    (tmp_path / "c" / "sw" / "c.m4a").write_bytes(b"not for libsndfile")
    (tmp_path / "c" / "sw" / "notes.txt").write_text("quiet")
    found = read_corpus(tmp_path / "c", None, ImportOptions(language_map={"sw": "swh-custom"}))
    assert [r.rel_path for r in found.records] == ["sw/a.sph", "sw/b.flac"]
    assert {r.language for r in found.records} == {"swh-custom"}
    assert "ignored for their suffix (not audio libsndfile decodes): .m4a: 1" in found.summary_lines()


@pytest.mark.parametrize(
    ("make_root", "expected"),
    [
        # The README's example after a normal extraction: the folder above the folder above a release.
        (lambda t: (common_voice(t / "downloads" / "mozilla"), t / "downloads")[1], "looks like commonvoice"),
        (lambda t: common_voice(t) / "de" / "clips", "its parent"),
        (
            lambda t: (voxpopuli(t / "dl" / "voxpopuli"), t / "dl")[1],
            "found voxpopuli/ which looks like voxpopuli",
        ),
        (lambda t: (write_audio(t / "flat" / "a.wav"), t / "flat")[1], "lie directly in it"),
        (lambda t: (t / "nothing").mkdir() or t / "nothing", "expected one of"),
    ],
)
def test_roots_that_fit_no_layout_are_explained_in_one_line(tmp_path: Path, make_root, expected: str):
    root = make_root(tmp_path)
    with pytest.raises(LayoutError, match=expected):
        detect_layout(root)
    result = xlsr("shard", str(root), str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "no audio files found in" in result.stderr and "Traceback" not in result.stderr


def test_a_wrong_explicit_layout_names_the_one_that_fits(tmp_path: Path):
    release = common_voice(tmp_path)
    with pytest.raises(LayoutError, match=r"looks like commonvoice .*pass --layout commonvoice"):
        read_corpus(release, "mls", ImportOptions())


def test_unreadable_only_corpus_fails_naming_the_skipped_list(tmp_path: Path):
    (tmp_path / "c" / "en").mkdir(parents=True)
    (tmp_path / "c" / "en" / "a.wav").write_bytes(b"RIFF nonsense")
    result = xlsr("shard", str(tmp_path / "c"), str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "no usable audio: all 1 source files were skipped (unreadable: 1)" in result.stderr
    assert "skipped.tsv" in result.stderr


def test_missing_listed_clip_is_reported_as_not_found(tmp_path: Path):
    release = common_voice(tmp_path)
    (release / "de" / "clips" / "common_voice_de_0.mp3").unlink()
    result = shard(ShardJob(release, tmp_path / "out", progress=False))
    assert result.index is not None and result.index["skipped"]["by_reason"] == {"not_found": 1}


# --------------------------------------------------------------------------------------------------
# Long recordings


def test_segments_are_cut_in_pauses_and_bounded():
    rate = 16000
    audio = speech_like(200.0, rate, seed=3, pause_every=2.0)
    bounds = segment_bounds(audio, rate, 30.0)
    lengths = [length for _, length in bounds]
    assert sum(lengths) == len(audio) and all(15 * rate <= n <= 30 * rate for n in lengths)
    assert [offset for offset, _ in bounds] == list(np.cumsum([0, *lengths[:-1]]))
    for offset, _ in bounds[1:]:  # every cut lies in a silence: 5 ms either side are zeros
        assert not audio[offset - 80 : offset + 80].any(), offset
    assert segment_bounds(audio, rate, None) == [(0, len(audio))]
    assert segment_bounds(audio[: 10 * rate], rate, 30.0) == [(0, 10 * rate)]


def test_long_sessions_are_segmented_at_shard_time(tmp_path: Path):
    root = voxpopuli(tmp_path / "vp", session_seconds=70.0)
    out = tmp_path / "out"
    result = shard(ShardJob(root / "raw_audios", out, progress=False, max_seconds=30.0))
    samples = read_samples(out)
    metas = sorted((json.loads(s["json"]) for s in samples), key=lambda m: m["segment"])
    assert len(metas) == 3 and all(m["duration"] <= 30.0 for m in metas)
    assert {m["source"] for m in metas} == {"raw_audios/fr/2019/20190415-0900-PLENARY.ogg"}
    assert [m["key"][-4:] for m in metas] == ["0000", "0001", "0002"]
    assert metas[1]["offset"] == pytest.approx(metas[0]["duration"])
    assert result.index["totals"]["seconds"] == pytest.approx(70.0, abs=0.01)
    lengths = [shard["lengths"] for shard in result.index["shards"]]
    assert sum(count for shard in lengths for _, count, _ in shard) == 3


# --------------------------------------------------------------------------------------------------
# Stable keys


def test_the_same_corpus_sharded_from_two_places_gives_identical_sets(tmp_path: Path):
    common_voice(tmp_path / "a" / "cv")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "mount")
    outputs = []
    for name, root in (("one", tmp_path / "a" / "cv"), ("two", tmp_path / "elsewhere" / "mount" / "cv")):
        out = tmp_path / name
        shard(ShardJob(root, out, progress=False, valid_seconds=1.0, include_splits=frozenset({"dev"})))
        outputs.append(out)
    one, two = outputs
    for relative in ("index.json", "valid/index.json"):
        assert (one / relative).read_bytes() == (two / relative).read_bytes(), relative
    tars = sorted(p.relative_to(one) for p in one.rglob("*.tar"))
    assert tars and tars == sorted(p.relative_to(two) for p in two.rglob("*.tar"))
    assert all((one / p).read_bytes() == (two / p).read_bytes() for p in tars)
    texts = {s["__key__"]: s.get("txt") for s in read_samples(one)}
    # Transcripts travel as `txt` members (every Common Voice clip has one).
    assert len(texts) == 6 and all(text.startswith(b"sentence ") for text in texts.values())


# --------------------------------------------------------------------------------------------------
# Edge cases: roots given as `.`, folder names that are no languages, unknown BABEL packs, bad flags


def test_root_given_as_dot_or_under_a_prefixed_parent_reads_the_same(tmp_path: Path, monkeypatch):
    mls(tmp_path / "mls_data")  # a parent whose name looks like a release
    whole = found_by_rel(read_corpus(tmp_path / "mls_data", None, ImportOptions()))
    assert all(rel.startswith(("mls_german/", "mls_polish/")) for rel in whole)
    monkeypatch.chdir(tmp_path / "mls_data" / "mls_german")
    here = read_corpus(Path("."), None, ImportOptions())
    assert here.layout == "mls" and found_by_rel(here) == {k: v for k, v in whole.items() if "german" in k}


def test_folder_names_that_are_no_languages_are_kept_and_split_folders_refused(tmp_path: Path):
    assert canonical_tag("male") is None and canonical_tag("short") is None and canonical_tag("a") is None
    write_audio(tmp_path / "c" / "male" / "x.wav")
    found = read_corpus(tmp_path / "c", None, ImportOptions())
    assert [r.language for r in found.records] == ["male"]
    assert any(
        line.startswith("kept as given (not a language tag or name): male") for line in found.summary_lines()
    )
    write_audio(tmp_path / "s" / "train" / "x.wav")
    with pytest.raises(ValueError, match="train/ name splits, not languages"):
        read_corpus(tmp_path / "s", "dir", ImportOptions())


def test_an_unknown_babel_pack_is_kept_and_mappable(tmp_path: Path):
    pack = tmp_path / "BABEL_OP9_999"
    write_audio(
        pack / "conversational" / "training" / "audio" / "BABEL_OP9_999_12345_20200101_000000_inLine.sph",
        1.0,
        8000,
    )
    found = read_corpus(pack, None, ImportOptions())
    assert [r.language for r in found.records] == ["999"]
    assert any("kept as given" in line and "999" in line for line in found.summary_lines())
    mapped = read_corpus(pack, None, ImportOptions(language_map={"999": "xx-test"}))
    assert [(r.language, r.source_language) for r in mapped.records] == [("xx-test", "999")]


def test_manifest_names_are_checked_after_mapping(tmp_path: Path):
    write_audio(tmp_path / "a.wav")
    (tmp_path / "m.tsv").write_text("path\tlanguage\na.wav\tzh.CN\n")
    with pytest.raises(ValueError, match=r"bad language 'zh\.CN'"):
        read_corpus(tmp_path / "m.tsv", None, ImportOptions())
    found = read_corpus(tmp_path / "m.tsv", None, ImportOptions(language_map={"zh.CN": "zh"}))
    assert [(r.language, r.source_language, r.rel_path) for r in found.records] == [("zh", "zh.CN", "a.wav")]


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0.5"])
def test_bad_max_seconds_is_one_line(tmp_path: Path, value: str):
    write_audio(tmp_path / "c" / "en" / "a.wav")
    result = xlsr(
        "shard", str(tmp_path / "c"), str(tmp_path / "out"), "--max-seconds", value, "--no-progress"
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "max_seconds" in result.stderr and "Traceback" not in result.stderr
