"""Any file name, permissions, durability and one-line user errors of `xlsr shard` / `xlsr stats`,
with real `xlsr` processes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from shard_helpers import dir_records, read_samples, shard_config, sine

from sharding.manifest import SourceRecord
from sharding.samples import sample_key
from sharding.writer import build_index, read_skipped, write_shards
from xlsr.data.shard_format import (
    escape_path,
    unescape_path,
)

SCALE = 0.08  # about a minute of audio: enough for several shards per large stream, fast to shard


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers


# --------------------------------------------------------------------------------------------------
# Any file name, permissions, durability, user errors (real `xlsr` processes)

ROOT = Path(__file__).resolve().parents[1]
# What lets root write anywhere; without them root meets the permission bits like any user.
_DAC_CAPS = "-dac_override,-dac_read_search,-fowner"


def run_xlsr(*args: str | bytes | Path, umask: int | None = None, permissions: bool = False):
    """`python -m xlsr ARGS` in a fresh process, as `xlsr` would run it. `permissions=True` makes file
    permissions apply even when the tests run as root (by dropping root's override capabilities)."""
    prefix: list[str] = []
    if permissions and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and util-linux `setpriv` is missing: cannot drop CAP_DAC_OVERRIDE")
        prefix = [setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}", "--"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "xlsr", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def assert_user_error(result: subprocess.CompletedProcess, *named: str) -> str:
    """Exit code 2, exactly one line on stderr, no traceback, naming every `named` string."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(name in lines[0] for name in named), (lines[0], named)
    return lines[0]


def write_named(path: bytes, data: bytes) -> bytes:
    """Create a file whose name is given as raw bytes (any name the OS allows)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def wav_bytes(samples: np.ndarray, sr: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, sr, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_escape_path_round_trips_every_byte():
    names = [bytes([b]) for b in range(1, 256)] + [
        b"caf\xe9.wav",
        "café.wav".encode(),
        b"a\\b\\\\x41\tc\nd\re\x7f\xff\xfe",
        b"\\",
        b"\\x",
    ]
    for name in names:
        text = escape_path(name)
        assert unescape_path(text) == name and escape_path(os.fsdecode(name)) == text, name
        assert text.isprintable() and "\t" not in text and "\n" not in text, name
    # UTF-8 names without backslashes or control characters are written as they are.
    assert escape_path("/data/cv/de/clips/straße_ü.mp3") == "/data/cv/de/clips/straße_ü.mp3"
    assert escape_path(b"/x/caf\xe9.wav") == "/x/caf\\xe9.wav"


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A corpus whose file names are not UTF-8 (or hold a tab, a newline and a backslash), sharded by a
    real `xlsr shard` process."""
    root = tmp_path_factory.mktemp("odd")
    lang = root / "in" / "en"
    lang.mkdir(parents=True)
    base = os.fsencode(lang) + b"/"
    # Latin-1 and UTF-8 spellings of one name: two files; the 16 kHz one is stored without resampling.
    audio = {
        b"caf\xe9.wav": (sine(220, 16000, 1.5), 16000),
        "café.wav".encode(): (sine(330, 22050, 1.5), 22050),
    }
    good = {write_named(base + name, wav_bytes(wave, sr)): wave for name, (wave, sr) in audio.items()}
    bad = [
        write_named(base + b"corrupt\xff\xfe.wav", b"RIFF not really a wav"),
        write_named(base + b"tab\there\nnew\\line.wav", b"also broken"),
    ]
    out = root / "out"
    result = run_xlsr("shard", root / "in", out, "--no-progress", "--shard-size", "1MB")
    # Keys and the `source` field name a file by its path relative to the corpus root.
    relative = {os.fsencode(os.path.relpath(os.fsdecode(name), root / "in")): name for name in good}
    return {"out": out, "good": good, "bad": bad, "result": result, "relative": relative}


def test_non_utf8_file_names_are_kept_and_reported(odd_names: dict):
    result, out = odd_names["result"], odd_names["out"]
    assert result.returncode == 0, result.stdout + result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["totals"]["samples"] == 2 and index["skipped"] == {
        "count": 2,
        "by_reason": {"unreadable": 2},
    }
    # skipped.tsv is UTF-8 text, one row per file, and each name round-trips to its exact bytes.
    rows = read_skipped(out)
    assert sorted(unescape_path(row["path"]) for row in rows) == sorted(odd_names["bad"])
    assert {row["reason"] for row in rows} == {"unreadable"}
    assert len((out / "skipped.tsv").read_text(encoding="utf-8").splitlines()) == 3
    # The printed summary lists them as skipped.tsv does.
    assert all(f"  {row['path']}\tunreadable" in result.stdout for row in rows)
    assert "corrupt\\xff\\xfe.wav" in result.stdout and "tab\\there\\nnew\\\\line.wav" in result.stdout
    # Kept files: ASCII keys, distinct although the two names differ only in their encoding.
    samples = read_samples(out)
    sources = {unescape_path(json.loads(s["json"])["source"]): s["__key__"] for s in samples}
    assert set(sources) == set(odd_names["relative"])
    assert (
        all(key.isascii() and "." not in key for key in sources.values()) and len(set(sources.values())) == 2
    )
    for name, key in sources.items():
        record = SourceRecord(
            os.fsdecode(odd_names["relative"][name]), "en", "corpus", rel_path=os.fsdecode(name)
        )
        assert key == sample_key(record, 0)


def test_non_utf8_named_audio_is_trainable(odd_names: dict):
    """The loader reads the kept files back: right keys, right audio."""
    from xlsr.config import DataConfig
    from xlsr.data.loader import DataStream

    out, good = odd_names["out"], odd_names["good"]
    keys = {
        sample_key(SourceRecord(os.fsdecode(path), "en", "corpus", rel_path=os.fsdecode(rel)), 0): path
        for rel, path in odd_names["relative"].items()
    }
    cfg = DataConfig(
        train=[str(out / "index.json")],
        max_tokens=24_000,
        max_sample_size=24_000,
        min_sample_size=8_000,
        num_workers=0,
        shuffle_buffer=1,
        bucket_buffer=1,
        num_buckets=1,
    )
    seen: dict[str, np.ndarray] = {}
    stream = DataStream(cfg, seed=0)
    for _ in range(6):
        batch = next(stream)
        seen.update(zip(batch.keys, batch.source.numpy(), strict=True))
    assert set(seen) == set(keys)
    latin1 = next(key for key, name in keys.items() if name.endswith(b"caf\xe9.wav"))
    np.testing.assert_allclose(seen[latin1], good[keys[latin1]], atol=1e-4)  # 16 kHz source: no resampling


def test_old_sidecars_that_skipped_non_utf8_names_are_rewritten(odd_names: dict, tmp_path: Path):
    """A writer without byte-name support recorded those files as unreadable; a rerun retries them."""
    out = tmp_path / "out"
    shutil.copytree(odd_names["out"], out)
    sidecar_path = out / "corpus" / "en" / "shard-000000.json"
    sidecar = json.loads(sidecar_path.read_text())
    raw = [os.fsdecode(name) for name in odd_names["good"]]
    sidecar["skipped"] += [
        {"path": path, "reason": "unreadable", "detail": "UnicodeEncodeError"} for path in raw
    ]
    sidecar_path.write_text(json.dumps(sidecar))  # the fingerprint still matches
    (out / "corpus" / "en" / "shard-000000.tar").unlink()
    with pytest.raises(RuntimeError, match="1 planned shard"):
        build_index(out)
    result = run_xlsr("shard", os.path.dirname(os.path.dirname(odd_names["bad"][0])), out, "--no-progress",
                      "--shard-size", "1MB")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (out / "index.json").read_bytes() == (odd_names["out"] / "index.json").read_bytes()
    assert read_skipped(out) == read_skipped(odd_names["out"])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_are_created_with_the_umask(tmp_path: Path, umask: int):
    (tmp_path / "in" / "en").mkdir(parents=True)
    sf.write(tmp_path / "in" / "en" / "a.wav", sine(220, 16000, 1.0), 16000)
    (tmp_path / "in" / "en" / "bad.wav").write_bytes(b"broken")
    out = tmp_path / "out"

    def modes() -> dict[str, str]:
        return {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*")}

    assert run_xlsr("shard", tmp_path / "in", out, "--no-progress", umask=umask).returncode == 0
    assert run_xlsr("stats", out / "index.json", umask=umask).returncode == 0
    files = ["index.json", "plan.json", "skipped.tsv", "hours.png", "corpus/en/shard-000000.tar",
             "corpus/en/shard-000000.json"]  # fmt: skip
    expected = {name: oct(0o666 & ~umask) for name in files}
    expected |= {name: oct(0o777 & ~umask) for name in ("corpus", "corpus/en")}
    assert modes() == expected and oct(out.stat().st_mode & 0o777) == oct(0o777 & ~umask)
    # A killed run's temporary tar (mkstemp made them 0600) does not pass its mode on to the rewrite.
    tar = out / "corpus/en/shard-000000.tar"
    tar.unlink()
    stale = tar.with_name(tar.name + ".tmp")
    stale.write_bytes(b"half a tar")
    stale.chmod(0o600)
    assert run_xlsr("shard", tmp_path / "in", out, "--no-progress", umask=umask).returncode == 0
    assert modes() == expected


def test_shards_and_index_are_fsynced_around_their_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each published file's data is fsynced before the rename, and its directory after it."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        real_replace(src, dst)
        events.append(("rename", os.fspath(src), os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    (tmp_path / "in" / "en").mkdir(parents=True)
    sf.write(tmp_path / "in" / "en" / "a.wav", sine(220, 16000, 1.0), 16000)
    out = tmp_path / "out"
    write_shards(dir_records(tmp_path / "in", "c"), shard_config(out), progress=False)
    renames = {event[2]: (i, event[1]) for i, event in enumerate(events) if event[0] == "rename"}
    published = ["c/en/shard-000000.tar", "c/en/shard-000000.json", "index.json", "skipped.tsv", "plan.json"]
    for path in (str(out / name) for name in published):
        renamed, temporary = renames[path]
        assert ("fsync", temporary) in events[:renamed], path  # the data, before the rename
        assert ("fsync", os.path.dirname(path)) in events[renamed:], path  # the directory, after it
    # New directories' entries are made durable too (each parent is fsynced once it exists).
    assert {("fsync", str(d)) for d in (tmp_path, out, out / "c")} <= set(events)
    # skipped.tsv is published before the index, which marks the shard set complete.
    assert renames[str(out / "skipped.tsv")][0] < renames[str(out / "index.json")][0]


def test_cli_user_errors_are_one_line(tmp_path: Path):
    (tmp_path / "in" / "en").mkdir(parents=True)
    sf.write(tmp_path / "in" / "en" / "a.wav", sine(220, 16000, 1.0), 16000)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    inp = str(tmp_path / "in")
    assert_user_error(run_xlsr("shard", inp, a_file), str(a_file), "is not a directory")
    under = a_file / "sub" / "out"
    assert_user_error(run_xlsr("shard", inp, under), f"cannot create output directory {under}: {a_file}")
    assert a_file.read_text() == "not a directory"
    # A manifest that is not UTF-8 text: the file and line.
    manifest = tmp_path / "m.tsv"
    manifest.write_bytes(b"path\tlanguage\nin/en/a.wav\ten\nin/en/caf\xe9.wav\ten\n")
    assert_user_error(run_xlsr("shard", manifest, tmp_path / "o"), f"{manifest}:3: not UTF-8 text")
    # xlsr stats: a binary index, a missing one, and a plot that cannot be written.
    binary = tmp_path / "bin" / "index.json"
    binary.parent.mkdir()
    binary.write_bytes(b"\xff\xfe\x00binary")
    assert_user_error(run_xlsr("stats", binary), str(binary), "not a valid JSON index")
    assert_user_error(run_xlsr("stats", tmp_path / "nowhere"), "shard index not found")
    out = tmp_path / "out"
    assert run_xlsr("shard", inp, out, "--no-progress").returncode == 0
    plot = a_file / "h.png"
    assert_user_error(run_xlsr("stats", out, "--plot", plot), f"cannot write the plot {plot}")
    assert not list(out.rglob(".*")) and not list(tmp_path.glob("o")), "nothing left behind"


def test_cli_unwritable_output_dir(tmp_path: Path):
    """The output directory, and the default plot next to a colleague's read-only index."""
    (tmp_path / "in" / "en").mkdir(parents=True)
    sf.write(tmp_path / "in" / "en" / "a.wav", sine(220, 16000, 1.0), 16000)
    out = tmp_path / "out"
    assert run_xlsr("shard", tmp_path / "in", out, "--no-progress").returncode == 0
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out.chmod(0o555)
    try:
        result = run_xlsr("shard", tmp_path / "in", locked, permissions=True)
        assert_user_error(result, f"output directory {locked} is not writable")
        result = run_xlsr("shard", tmp_path / "in", locked / "sub", permissions=True)
        assert_user_error(
            result, f"cannot create output directory {locked / 'sub'}: {locked} is not writable"
        )
        result = run_xlsr("stats", out / "index.json", permissions=True)
        assert result.returncode == 0 and f"(no plot: {out} is not writable" in result.stdout, result.stderr
        result = run_xlsr("stats", out / "index.json", "--plot", out / "h.png", permissions=True)
        assert_user_error(result, f"cannot write the plot {out / 'h.png'}: Permission denied")
    finally:
        locked.chmod(0o755)
        out.chmod(0o755)
    assert not list(locked.iterdir()) and not list(out.glob("*.png")) and not list(out.glob(".*"))
