"""The eSpeak NG speech corpus (`sharding.speech`, `sharding.espeak`) and phones through the shards."""

from __future__ import annotations

import ctypes.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from shard_helpers import peak_frequency, sine

from sharding import ShardJob, espeak, shard
from sharding.espeak import EspeakError, clean_phones, phonemize, synthesize
from sharding.manifest import read_manifest
from sharding.samples import sample_key
from sharding.speech import (
    LANGUAGES,
    MANIFEST_NAME,
    SPEAKERS_PER_LANGUAGE,
    generate_speech_corpus,
    resample,
    speakers,
    vocabulary,
)
from sharding.split import VALID_DIR
from sharding.synthetic import MARKER
from xlsr.data.shard_format import read_index
from xlsr.data.shard_readers import iter_shard

SCALE = 0.1  # about 85 s of audio, two seconds to generate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_speech_corpus(tmp_path_factory.mktemp("speech") / "corpus", seed=0, scale=SCALE)


def manifest_rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------------
# The binding


def test_synthesis_is_speech_at_22050_hz_and_longer_for_longer_text():
    short, rate = synthesize("one", "en")
    long, _ = synthesize("one two three four five six seven eight", "en+f3", rate_wpm=150, pitch=70)
    assert rate == 22050 and short.dtype == np.float32 and long.ndim == 1
    assert np.abs(long).max() > 0.1 and np.sqrt(np.mean(long**2)) > 0.01
    assert len(long) > 2 * len(short) > 0
    fast, _ = synthesize("one two three four five six seven eight", "en+f3", rate_wpm=220, pitch=70)
    assert len(fast) < len(long)
    with pytest.raises(EspeakError, match="no voice 'zz'"):
        synthesize("x", "zz")


@pytest.mark.parametrize("language", [language.tag for language in LANGUAGES])
def test_phonemize_gives_ipa_phones_of_the_language(language: str):
    words, probabilities = vocabulary(language)
    assert len(words) > 1000 and np.isclose(probabilities.sum(), 1.0)
    phones = phonemize(" ".join(words[100:106]), language)
    assert len(phones) >= 6
    assert not any(mark in phone for phone in phones for mark in "ˈˌ( ")


def test_phonemize_rejects_language_switches_and_cleans_phones():
    assert phonemize("hello world", "en") == ["h", "ə", "l", "əʊ", "w", "ɜː", "l", "d"]
    with pytest.raises(EspeakError, match="switches language"):
        phonemize("the", "ru")  # eSpeak reads it as English: "(en) ð ə (ru)"
    # Stress dropped, eSpeak's stray name characters removed, a lone modifier joins its phone.
    assert clean_phones('ˈi v ʌ r ʲ ˈe  a.ː u" ɪ^  ʲ') == ["i", "v", "ʌ", "rʲ", "e", "aː", "u", "ɪʲ"]


def test_resample_keeps_the_band_and_removes_what_is_above_it():
    tone = sine(1000, 22050, 1.0)
    for rate in (8000, 16000, 44100, 48000):
        out = resample(tone, 22050, rate)
        assert len(out) == rate and abs(peak_frequency(out, rate) - 1000) < 2
        assert np.allclose(out[100:-100], sine(1000, rate, 1.0)[100:-100], atol=1e-4)
    assert np.abs(resample(sine(6000, 22050, 1.0), 22050, 8000)).max() < 1e-4  # above 4 kHz: gone


# --------------------------------------------------------------------------------------------------
# The corpus


def test_corpus_layout_manifest_and_speakers(corpus: Path):
    rows = manifest_rows(corpus)
    assert {row["language"] for row in rows} == {language.tag for language in LANGUAGES}
    for row in rows:
        path = corpus / row["path"]
        assert path.is_file() and path.parent.name == row["speaker"]
        assert path.parent.parent.name == row["language"]
    spoken = [row for row in rows if "phones" in row]
    assert len(spoken) == len(rows) - 2  # all but the too-short clip and the corrupt file
    for row in spoken:
        info = sf.info(corpus / row["path"])
        assert abs(info.duration - row["duration"]) < 1e-3 and 1.0 < row["duration"] <= 8.0
        assert row["text"].endswith(".") and row["phones"] == " ".join(row["phones"].split())
        assert not any(mark in row["phones"] for mark in "ˈˌ(")
    assert {sf.info(corpus / row["path"]).samplerate for row in spoken} == {8000, 16000, 22050, 44100, 48000}
    assert {Path(row["path"]).suffix for row in spoken} == {".wav", ".flac", ".ogg"}
    stereo = [row["path"] for row in spoken if sf.info(corpus / row["path"]).channels == 2]
    assert stereo == [next(row["path"] for row in rows if row["language"] == "ru")]
    seconds = {tag: sum(r.get("duration", 0) for r in rows if r["language"] == tag) for tag in ("en", "ta")}
    assert seconds["en"] > 2 * seconds["ta"]  # deliberately unbalanced
    voices = speakers("en")
    assert len({s.name for s in voices}) == len({s.voice for s in voices}) == SPEAKERS_PER_LANGUAGE


def test_corpus_is_deterministic_and_idempotent(corpus: Path, tmp_path: Path):
    a, b = corpus, generate_speech_corpus(tmp_path / "b", seed=0, scale=SCALE, workers=1)
    c = generate_speech_corpus(tmp_path / "c", seed=4, scale=0.03)
    assert (a / MANIFEST_NAME).read_bytes() == (b / MANIFEST_NAME).read_bytes()
    rows = manifest_rows(a)
    for row in rows:
        rel = row["path"]
        if rel.endswith((".wav", ".flac")) and "corrupt" not in rel:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        elif rel.endswith(".ogg"):  # libsndfile picks a random Ogg stream serial: compare the audio
            np.testing.assert_array_equal(sf.read(a / rel)[0], sf.read(b / rel)[0])
    # Another seed: other speakers under other names (file names make sample keys), other sentences.
    other = manifest_rows(c)
    assert {r["speaker"] for r in rows}.isdisjoint(r["speaker"] for r in other)
    assert {r["path"] for r in rows}.isdisjoint(r["path"] for r in other)
    assert rows[0]["speaker"].startswith("en-spk") and other[0]["speaker"].startswith("en-s4-spk")
    assert rows[0]["text"] != other[0]["text"]
    assert json.loads((c / MARKER).read_text())["seed"] == 4
    before = {p: p.stat().st_mtime_ns for p in b.rglob("*")}
    assert generate_speech_corpus(b, seed=0, scale=SCALE) == b
    assert {p: p.stat().st_mtime_ns for p in b.rglob("*")} == before


# --------------------------------------------------------------------------------------------------
# Phones and speakers through the shards


def test_sharded_corpus_carries_phones_and_speakers(corpus: Path, tmp_path: Path):
    job = ShardJob(
        input=corpus / MANIFEST_NAME,
        out_dir=tmp_path / "shards",
        corpus="demo",
        workers=1,
        progress=False,
        valid_seconds=4.0,
    )
    result = shard(job)
    records = {sample_key(r, 0): r for r in read_manifest(corpus / MANIFEST_NAME, default_corpus="demo")}
    speakers_of: dict[str, dict[str, set[str]]] = {}
    for subset, out in (("train", job.out_dir), ("valid", job.out_dir / VALID_DIR)):
        for info in read_index(out).shards:
            for sample in iter_shard(info.url):
                record = records[sample.key]
                assert (sample.phones, sample.text, sample.speaker) == (
                    record.phones,
                    record.text,
                    record.speaker,
                )
                assert sample.phones and sample.speaker
                speakers_of.setdefault(sample.language, {}).setdefault(subset, set()).add(sample.speaker)
    held_out = [s.get("valid", set()) for s in speakers_of.values()]
    assert any(held_out), "nothing was held out"
    for by_subset in speakers_of.values():  # no speaker on both sides
        assert by_subset.get("train", set()).isdisjoint(by_subset.get("valid", set()))
    # The too-short clip and the corrupt file are skipped and counted, wherever their speaker went.
    assert result.valid_index is not None and result.index is not None
    reasons: dict[str, int] = {}
    for index in (result.index, result.valid_index):
        for reason, count in index["skipped"]["by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == {"too_short": 1, "unreadable": 1}
    total = result.index["totals"]["samples"] + result.valid_index["totals"]["samples"]
    assert total == len(records) - 2


# --------------------------------------------------------------------------------------------------
# The manifest's phones field


def test_manifest_phones_are_normalised_and_checked(tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"path": "a.wav", "language": "en", "phones": " h  ə\tl əʊ "},
        {"path": "b.wav", "language": "en", "phones": "   "},
        {"path": "c.wav", "language": "en"},
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [r.phones for r in read_manifest(manifest)] == ["h ə l əʊ", None, None]
    manifest.write_text(json.dumps(rows[2]) + "\n" + json.dumps({**rows[0], "phones": ["h", "ə"]}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2: field 'phones' must be a string") as error:
        read_manifest(manifest)
    assert "\n" not in str(error.value)


def test_missing_espeak_names_the_wheel_and_the_system_library(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # the wheel cannot be imported
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(EspeakError, match=r"espeakng-loader wheel did not load .* system libespeak-ng"):
        espeak._load_library()
