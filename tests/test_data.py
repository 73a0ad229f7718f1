"""The streaming loader: upsampling, disjoint ranks, exact resume, pipe: URLs, bad shards."""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from collections import Counter

import numpy as np
import pytest
import soundfile
import torch
from shard_helpers import loader_config

from xlsr.config import DataConfig
from xlsr.data import shard_readers, shards
from xlsr.data.loader import DataStream, build_stream_specs
from xlsr.data.shard_format import ShardIndexError
from xlsr.data.stream import SlotPipeline
from xlsr.data.upsampling import upsampling_probabilities
from xlsr.seeding import derive_seed

DEMO_LOADER = dict(max_tokens=120_000, max_sample_size=48_000, min_sample_size=16_000, shuffle_buffer=16)


def data_config(index, **changes) -> DataConfig:
    defaults = {**DEMO_LOADER, "bucket_buffer": 12, "num_buckets": 3, "normalize": True}
    return loader_config(index, defaults, **changes)


def take(stream, n):
    return [next(stream) for _ in range(n)]


def assert_same_batches(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys == b.keys
        assert torch.equal(a.source, b.source)
        assert (a.padding_mask is None) == (b.padding_mask is None)
        if a.padding_mask is not None:
            assert torch.equal(a.padding_mask, b.padding_mask)


def test_two_level_upsampling_matches_formula():
    hours = {("cv", "en"): 900.0, ("cv", "sw"): 100.0, ("mls", "de"): 400.0, ("mls", "fr"): 100.0}
    probs = upsampling_probabilities(hours, language_alpha=0.5, corpus_alpha=0.5)
    corpus_cv = (1000 / 1500) ** 0.5 / ((1000 / 1500) ** 0.5 + (500 / 1500) ** 0.5)
    en_given_cv = 0.9**0.5 / (0.9**0.5 + 0.1**0.5)
    assert probs[("cv", "en")] == pytest.approx(corpus_cv * en_given_cv)
    assert sum(probs.values()) == pytest.approx(1.0)
    natural = upsampling_probabilities(hours, 1.0, 1.0)
    assert natural[("cv", "en")] == pytest.approx(900 / 1500)
    uniform = upsampling_probabilities(hours, 0.0, 0.0)
    assert set(np.round(list(uniform.values()), 6)) == {0.25}


def test_batches_respect_max_tokens_and_lengths(demo_index):
    cfg = data_config(demo_index)
    stream = DataStream(cfg, seed=0)
    for batch in take(stream, 20):
        rows, longest = batch.source.shape
        assert rows * longest <= cfg.max_tokens
        assert cfg.min_sample_size <= longest <= cfg.max_sample_size
        lengths = longest - (
            batch.padding_mask.sum(1) if batch.padding_mask is not None else torch.zeros(rows)
        )
        assert int(lengths.sum()) == batch.num_samples
        assert int(lengths.min()) >= cfg.min_sample_size
        if batch.padding_mask is not None:  # padding is zeros and only at the end of each row
            assert torch.all(batch.source[batch.padding_mask] == 0)
            assert torch.all(batch.padding_mask.int().diff(dim=1) >= 0)


def test_empirical_audio_shares_follow_upsampling(demo_index):
    """A long stream draws audio from each language in the upsampled proportions (hours, not clips),
    counted as the model sees it: each draw at most data.max_sample_size."""
    cfg = data_config(demo_index, min_sample_size=0)
    specs, _, hour_probs = build_stream_specs(cfg)
    pipeline = SlotPipeline(specs, cfg, slot=0, num_slots=1, seed=3)
    seconds = Counter()
    for _ in range(6000):
        _, sample = pipeline.mixer()
        seconds[(sample.corpus, sample.language)] += min(sample.num_samples, cfg.max_sample_size) / 16_000
    total = sum(seconds.values())
    for key, p in hour_probs.items():
        assert seconds[key] / total == pytest.approx(p, abs=0.02), key


def test_ranks_and_workers_read_disjoint_data(demo_index):
    """Each slot (rank x worker) owns distinct utterances; together they cover every utterance."""
    cfg = data_config(demo_index)
    specs, _, _ = build_stream_specs(cfg)
    num_slots = 4  # 2 ranks x 2 workers
    for stream_id, spec in enumerate(specs):
        seen = []
        for slot in range(num_slots):
            reader = SlotPipeline(specs, cfg, slot=slot, num_slots=num_slots, seed=0).mixer.readers[stream_id]
            keys = []
            while True:  # one full pass over the units this slot owns
                ref, sample = reader.next()
                if ref[1] > 0:
                    break
                keys.append(sample.key)
            seen.append(keys)
        total = sum(shard.samples for shard in spec.shards)
        every_key = {sample.key for shard in spec.shards for sample in shard_readers.iter_shard(shard.url)}
        assert len(every_key) == total and set().union(*seen) == every_key
        if total >= num_slots:
            assert sum(map(len, seen)) == total, f"{spec.name}: some utterance is read by two slots"
        else:  # fewer utterances than slots: slots share, but every slot still gets data
            assert all(seen)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(demo_index, workers):
    cfg = data_config(demo_index, num_workers=workers)
    reference = take(DataStream(cfg, seed=5), 9)
    first = DataStream(cfg, seed=5)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))  # the state must survive serialization
    resumed = DataStream(cfg, seed=5)
    resumed.load_state_dict(state)
    assert_same_batches(take(resumed, 4), reference[5:])


def test_topology_change_reseeds_and_says_so(demo_index, caplog):
    cfg = data_config(demo_index)
    two_ranks = DataStream(cfg, seed=5, rank=0, world_size=2)
    take(two_ranks, 3)
    single = DataStream(cfg, seed=5, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING):
        single.load_state_dict(two_ranks.state_dict())
    assert "data topology changed (world size 2 -> 1" in caplog.text
    assert single.seed == derive_seed(5, "data_reseed", 3) and single.base_seed == 5
    fresh = take(DataStream(cfg, seed=5), 2)
    continued = take(single, 4)
    assert [b.keys for b in continued[:2]] != [b.keys for b in fresh]  # no silent replay

    # A later resume on the same topology continues the reseeded stream exactly, without a warning.
    state = json.loads(json.dumps(single.state_dict()))
    reference = take(single, 2)
    caplog.clear()
    resumed = DataStream(cfg, seed=5, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert caplog.text == "" and resumed.seed == single.seed
    assert_same_batches(take(resumed, 2), reference)

    # A checkpoint of another run seed restarts the stream, and says why.
    other = DataStream(cfg, seed=6, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(state)
    # the new seed's coordinate is how many batches the checkpointed stream had consumed
    consumed = state["batches_consumed"]
    assert "the seed changed (5 -> 6)" in caplog.text
    assert other.seed == derive_seed(6, "data_reseed", consumed)


def test_pipe_urls_stream_like_files(demo_index, tmp_path):
    index = json.loads(demo_index.read_text())
    for shard in index["shards"]:
        shard["path"] = f"pipe:cat {demo_index.parent / shard['path']}"
    piped = tmp_path / "index.json"
    piped.write_text(json.dumps(index))
    direct = take(DataStream(data_config(demo_index), seed=1), 3)
    via_pipe = take(DataStream(data_config(piped), seed=1), 3)
    assert_same_batches(direct, via_pipe)


def test_truncated_shard_is_skipped_not_fatal(demo_index, tmp_path):
    index = json.loads(demo_index.read_text())
    biggest = max(index["shards"], key=lambda s: s["samples"])
    data = (demo_index.parent / biggest["path"]).read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: len(data) // 3] + b"\0garbage" * 100)
    index["shards"] = [dict(biggest, path=str(broken))] + [
        dict(s, path=str(demo_index.parent / s["path"])) for s in index["shards"] if s is not biggest
    ]
    (tmp_path / "index.json").write_text(json.dumps(index))
    stream = DataStream(data_config(tmp_path / "index.json"), seed=0)
    batches = take(stream, 15)
    assert all(math.isfinite(float(b.source.abs().sum())) for b in batches)
    # One full pass of the broken shard's stream reads it, counts it, and moves on to the others.
    cfg = data_config(tmp_path / "index.json")
    specs, _, _ = build_stream_specs(cfg)
    pipeline = SlotPipeline(specs, cfg, slot=0, num_slots=1, seed=0)
    stream_id = next(i for i, spec in enumerate(specs) if str(broken) in [s.url for s in spec.shards])
    reader, keys = pipeline.mixer.readers[stream_id], set()
    while (item := reader.next())[0][1] == 0:
        keys.add(item[1].key)
    assert pipeline.counters["broken_units"] == 1
    others = [s for s in specs[stream_id].shards if s.url != str(broken)]
    assert {sample.key for shard in others for sample in shard_readers.iter_shard(shard.url)} <= keys


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(ShardIndexError, match=r"shard index not found: .*nope\.json \(run `xlsr shard"):
        DataStream(data_config(tmp_path / "nope.json"), seed=0)


# --------------------------------------------------------------------------------------------------
# The tar reader (xlsr.data.shards.iter_samples, through xlsr.data.shard_readers.iter_shard): our own
# header parser, webdataset's grouping


def webdataset_samples(url: str) -> list:
    """The same shard read by webdataset's tarfile-based iterator (what iter_shard replaced)."""
    import webdataset
    from webdataset import tariterators

    stream = webdataset.gopen(url)
    try:
        files = ({**e, "__url__": url} for e in tariterators.tar_file_iterator(stream))
        return [r for s in tariterators.group_by_keys(files) if (r := shards._to_raw_sample(s)) is not None]
    finally:
        stream.close()


def write_long_name_tar(path, fmt: int) -> None:
    """3 samples whose names exceed ustar's 100 bytes (GNU long names or pax paths), and a directory."""
    directory = tarfile.TarInfo("deep/")
    directory.type = tarfile.DIRTYPE
    with tarfile.open(path, "w", format=fmt) as tar:
        tar.addfile(directory)
        for i in range(3):
            audio = io.BytesIO()
            soundfile.write(audio, np.full(1600 + i, 0.1, dtype=np.float32), 16_000, format="FLAC")
            meta = json.dumps({"num_samples": 1600 + i, "language": "en", "corpus": "c"}).encode()
            for ext, data in (("flac", audio.getvalue()), ("json", meta)):
                info = tarfile.TarInfo(f"deep/{'x' * 120}/utt{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_tar_reader_agrees_with_webdataset(demo_index, tmp_path):
    urls = [str(demo_index.parent / s["path"]) for s in json.loads(demo_index.read_text())["shards"]]
    for url in urls[:3]:
        expected = webdataset_samples(url)
        assert list(shard_readers.iter_shard(url)) == expected
        assert list(shard_readers.iter_shard(f"pipe:cat {url}", 1, 3)) == expected[1::3]  # parts skip data
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"long-{fmt}.tar"
        write_long_name_tar(path, fmt)
        got = list(shard_readers.iter_shard(str(path)))
        assert got == webdataset_samples(str(path)) and len(got) == 3
        assert got[0].key == f"deep/{'x' * 120}/utt0"
        assert len(shards.decode_sample(got[2])) == 1602


def test_corrupt_tar_is_a_tar_format_error(demo_index, tmp_path):
    url = demo_index.parent / json.loads(demo_index.read_text())["shards"][0]["path"]
    data = bytearray(url.read_bytes())
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: 512 + 100])  # a header, then the data stops
    with pytest.raises(shards.TarFormatError, match="truncated tar"):
        list(shard_readers.iter_shard(str(truncated)))
    data[10] ^= 0xFF  # inside the first member's name: the checksum no longer matches
    flipped = tmp_path / "flipped.tar"
    flipped.write_bytes(bytes(data))
    with pytest.raises(shards.TarFormatError, match="checksum"):
        list(shard_readers.iter_shard(str(flipped)))


@pytest.mark.parametrize("audio_format", ["flac", "s16"])
def test_decoding_a_crop_into_a_buffer_equals_cropping_the_whole(audio_format):
    wave = np.sin(np.arange(20_000, dtype=np.float32) / 7).astype(np.float32) * 0.5
    if audio_format == "flac":
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, 16_000, format="FLAC")
        audio = buffer.getvalue()
    else:
        audio = (wave * 32767).astype("<i2").tobytes()
    raw = shards.RawSample("k", audio, audio_format, len(wave), "en", "c")
    whole = shards.decode_sample(raw)
    for start, size in ((0, 20_000), (4_321, 8_000), (15_000, 8_000)):  # the last runs past the end
        out = np.full(size, np.nan, dtype=np.float32)
        written = shards.decode_sample_into(raw, out, start)
        assert written == min(size, len(wave) - start)
        np.testing.assert_array_equal(out[:written], whole[start : start + written])


def test_normalised_rows_are_the_whole_utterance_normalised(demo_index):
    """Uncropped rows equal (x - mean) / sqrt(var + 1e-5) of the decoded utterance (fairseq's layer_norm)."""
    urls = [str(demo_index.parent / s["path"]) for s in json.loads(demo_index.read_text())["shards"]]
    by_key = {sample.key: sample for url in urls for sample in shard_readers.iter_shard(url)}
    stream = DataStream(data_config(demo_index, max_sample_size=400_000, max_tokens=800_000), seed=3)
    checked = 0
    for batch in take(stream, 4):
        for row, key in enumerate(batch.keys):
            wave = shards.decode_sample(by_key[key])
            expected = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-5)
            np.testing.assert_allclose(batch.source[row, : len(wave)].numpy(), expected, atol=2e-5)
            assert not batch.source[row, len(wave) :].any()
            checked += 1
    assert checked >= 8
