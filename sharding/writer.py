"""Write WebDataset tar shards per (corpus, language) stream, plus an index the streaming loader reads.

Design, in the order things happen:

1. **Plan up front.** Each stream's records are de-duplicated, sorted, then shuffled with an RNG seeded
   by `seed` and the stream name (so a shard is not one speaker after another), and packed greedily
   into shards by *estimated* output bytes. The plan depends only on the inputs and the config, so
   every process and every SLURM array task computes the same plan without talking to the others.
2. **Each planned shard is an independent task.** Task number `ordinal % num_tasks` decides who writes
   it, where `ordinal` is the shard's position in the whole plan (not within its stream), which spreads
   many small languages over all tasks.
3. **Atomic and resumable.** A task writes `shard-NNNNNN.tar.tmp`, then the sidecar
   `shard-NNNNNN.json` (counts and skipped files), then renames the tar. A shard is complete when its
   sidecar carries the plan's fingerprint and its tar exists (or it has no samples, when every input
   was bad). A rerun skips complete shards and rewrites the rest.
4. **Index.** `build_index` merges the sidecars into `index.json` and `skipped.tsv`. A held-out set
   (records chosen by `sharding.split`) is planned after the training shards, under `valid/`, and
   gets its own `valid/index.json`; tasks share its shards like any others.

Tar members are `<key>.flac` (or `<key>.s16`, raw little-endian int16), `<key>.json`, and where the
corpus has them `<key>.txt` and `<key>.phn` (`sharding.samples`). Tars are byte-identical across
runs: fixed member order, mtime 0, deterministic FLAC encoding.

Any file name the OS allows works: files are opened by their OS-level bytes, keys are ASCII (a hash of
those bytes), and names written as text (skipped.tsv, sidecars, the `source` field) go through
`escape_path`, which `unescape_path` reverses exactly. Every output is created with the user's umask
and fsynced before the rename that publishes it, and its directory after.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import soundfile as sf
from tqdm import tqdm

from sharding.audio import AudioError, decode_file, os_path
from sharding.manifest import SourceRecord, check_name
from sharding.samples import tar_samples
from sharding.segment import MIN_MAX_SECONDS
from sharding.split import VALID_DIR
from xlsr.data.shard_format import (
    AUDIO_FORMATS,
    AUDIO_MEMBER_EXTENSION,
    INDEX_NAME,
    INDEX_VERSION,
    LengthHistogram,
    escape_path,
    keys_digest,
    make_index,
    shard_entry,
    write_index,
)
from xlsr.fileio import atomic_write_text, fsync_dir

PLAN_NAME = "plan.json"
SKIPPED_NAME = "skipped.tsv"
SKIPPED_COLUMNS = ("path", "corpus", "language", "reason", "detail")

# Planning estimates. Speech FLAC at 16 bit is typically 50-65 % of raw PCM; each sample also costs
# two 512-byte tar headers, padding and its JSON.
_FLAC_RATIO = 0.6
_SAMPLE_OVERHEAD_BYTES = 2048
_HEADER_THREADS = 8


@dataclass
class ShardWriterConfig:
    """Output location and format of the shards, and how the work is split."""

    out_dir: Path
    sample_rate: int = 16000
    shard_size_bytes: int = 1_000_000_000
    audio_format: Literal["flac", "int16"] = "flac"
    # Split recordings longer than this into equal consecutive segments of at most this length.
    max_seconds: float | None = None
    min_seconds: float = 0.25
    drop_silent: bool = False
    workers: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {self.audio_format!r}")
        if self.sample_rate <= 0 or self.shard_size_bytes <= 0 or self.workers < 1:
            raise ValueError("sample_rate, shard_size_bytes and workers must be positive")
        for name in ("max_seconds", "min_seconds"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.max_seconds is not None and self.max_seconds < max(self.min_seconds, MIN_MAX_SECONDS):
            raise ValueError(
                f"max_seconds ({self.max_seconds:g}) must be >= min_seconds ({self.min_seconds:g}) and >= "
                f"{MIN_MAX_SECONDS:g} (0 keeps recordings whole)"
            )

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the bytes of a shard (the plan covers seed and shard size)."""
        return {
            "sample_rate": self.sample_rate,
            "audio_format": self.audio_format,
            "max_seconds": self.max_seconds,
            "min_seconds": self.min_seconds,
            "drop_silent": self.drop_silent,
        }


@dataclass(frozen=True)
class PlannedItem:
    record: SourceRecord
    # The path already occurs earlier in the same stream: skipped as "duplicate", never decoded, because
    # it would repeat the audio and its sample keys.
    duplicate: bool = False


@dataclass(frozen=True)
class PlannedShard:
    """One output tar: which source files go into it, in which order."""

    ordinal: int  # position in the whole plan; decides which task writes it
    corpus: str
    language: str
    number: int  # position within its stream; names the file
    items: tuple[PlannedItem, ...]
    subset: str = ""  # "" for training, VALID_DIR for the held-out set (its own directory and index)

    @property
    def rel_path(self) -> str:
        prefix = f"{self.subset}/" if self.subset else ""
        return f"{prefix}{self.corpus}/{self.language}/shard-{self.number:06d}.tar"

    def fingerprint(self, cfg: ShardWriterConfig) -> str:
        content = {
            "shard": self.rel_path,
            "settings": cfg.output_settings(),
            "sources": [[i.record.name, i.record.speaker, i.duplicate, *i.record.labels] for i in self.items],
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Planning


def plan_shards(
    records: Sequence[SourceRecord],
    cfg: ShardWriterConfig,
    valid_records: Sequence[SourceRecord] = (),
) -> list[PlannedShard]:
    """Deterministic shard plan for all streams, streams in sorted (corpus, language) order; the
    held-out set's shards (`valid_records`, see `sharding.split`) follow the training shards."""
    shards: list[PlannedShard] = []
    for subset, subset_records in (("", records), (VALID_DIR, valid_records)):
        streams: dict[tuple[str, str], list[SourceRecord]] = defaultdict(list)
        for record in with_durations(subset_records):
            streams[(record.corpus, record.language)].append(record)
        for corpus, language in sorted(streams):
            items = _order_stream(streams[(corpus, language)], cfg.seed, f"{corpus}/{language}")
            for number, group in enumerate(_pack(items, cfg)):
                shards.append(PlannedShard(len(shards), corpus, language, number, tuple(group), subset))
    return shards


def _order_stream(records: list[SourceRecord], seed: int, stream: str) -> list[PlannedItem]:
    """Sort (so input order does not matter), flag repeated paths, then shuffle reproducibly."""
    ordered = sorted(records, key=lambda r: (r.name, r.speaker or "", r.duration or 0.0))
    items = [
        PlannedItem(record, duplicate=i > 0 and record.name == ordered[i - 1].name)
        for i, record in enumerate(ordered)
    ]
    # Seeding `random.Random` with a str hashes it with SHA-512: stable across processes and runs.
    random.Random(f"{seed}/{stream}").shuffle(items)
    return items


def _pack(items: list[PlannedItem], cfg: ShardWriterConfig) -> Iterator[list[PlannedItem]]:
    """Greedy packing by estimated bytes; a shard always takes at least one item."""
    group: list[PlannedItem] = []
    size = 0.0
    for item in items:
        estimate = 0.0 if item.duplicate else estimated_bytes(item.record, cfg)
        if group and size + estimate > cfg.shard_size_bytes:
            yield group
            group, size = [], 0.0
        group.append(item)
        size += estimate
    if group:
        yield group


def estimated_bytes(record: SourceRecord, cfg: ShardWriterConfig) -> float:
    """Approximate output bytes of one record; header-unreadable files count as tiny."""
    seconds = record.duration if record.duration is not None else header_duration(record.path)
    seconds = max(seconds, 0.0)
    bytes_per_second = 2 * cfg.sample_rate * (_FLAC_RATIO if cfg.audio_format == "flac" else 1.0)
    segments = math.ceil(seconds / cfg.max_seconds) if cfg.max_seconds else 1
    return seconds * bytes_per_second + max(segments, 1) * _SAMPLE_OVERHEAD_BYTES


def with_durations(records: Sequence[SourceRecord]) -> list[SourceRecord]:
    """Records with missing durations read from file headers.

    Threads, because on network filesystems this is dominated by open/read latency, and libsndfile
    calls run outside the GIL.
    """
    missing = sorted({r.path for r in records if r.duration is None})
    with ThreadPoolExecutor(_HEADER_THREADS) as pool:
        durations = dict(zip(missing, pool.map(header_duration, missing), strict=True))
    return [r if r.duration is not None else replace(r, duration=durations[r.path]) for r in records]


def header_duration(path: str) -> float:
    """Duration from the file header without decoding; 0 when the header is unreadable (the file is
    then planned anyway and skipped, with its reason, when its shard is written)."""
    try:
        return float(sf.info(os_path(path)).duration)
    except Exception:
        return 0.0


# --------------------------------------------------------------------------------------------------
# Writing one shard


@dataclass(frozen=True)
class _ShardPaths:
    tar: Path
    tmp: Path
    sidecar: Path

    @classmethod
    def of(cls, out_dir: Path, rel_path: str) -> _ShardPaths:
        tar = out_dir / rel_path
        return cls(tar, tar.with_name(tar.name + ".tmp"), tar.with_suffix(".json"))


def is_complete(shard: PlannedShard, cfg: ShardWriterConfig) -> bool:
    """True when a previous run finished this exact shard (same plan and output settings)."""
    paths = _ShardPaths.of(cfg.out_dir, shard.rel_path)
    sidecar = _read_json(paths.sidecar)
    if not sidecar or sidecar.get("fingerprint") != shard.fingerprint(cfg) or _predates_byte_names(sidecar):
        return False
    return sidecar.get("samples") == 0 or paths.tar.is_file()


# What an escaped field never holds: a sidecar row with one of these was written unescaped.
_RAW_TEXT = re.compile("[\t\n\r\udc80-\udcff]")


def _predates_byte_names(sidecar: dict[str, Any]) -> bool:
    """True for a sidecar of a writer that could not open file names that are not UTF-8: it skipped
    them as unreadable under their raw names. Such a shard is rewritten, so those files get their chance."""
    rows = [row for row in sidecar.get("skipped") or [] if isinstance(row, dict)]
    return any(_RAW_TEXT.search(str(row.get("path", ""))) for row in rows)


def write_shard(shard: PlannedShard, cfg: ShardWriterConfig) -> dict[str, Any]:
    """Write one planned shard (tmp tar, sidecar, rename) and return its sidecar."""
    paths = _ShardPaths.of(cfg.out_dir, shard.rel_path)
    make_dirs(paths.tar.parent)
    samples, audio_samples, skipped = 0, 0, []
    keys, lengths = [], LengthHistogram()
    # A fresh file, not one a killed task left behind: it gets this run's umask, not that file's mode.
    paths.tmp.unlink(missing_ok=True)
    with paths.tmp.open("xb") as handle:
        tar = _tar_writer(handle)
        for item in shard.items:
            record = item.record
            if item.duplicate:
                skipped.append(_skip(record, "duplicate", "listed more than once in this stream"))
                continue
            try:
                decoded = decode_file(record.path, cfg.sample_rate, cfg.min_seconds, cfg.drop_silent)
            except AudioError as exc:
                skipped.append(_skip(record, exc.reason, str(exc).removeprefix(f"{record.path}: ")))
                continue
            for sample, length in tar_samples(record, decoded, cfg.max_seconds, cfg.audio_format):
                tar.write(sample)
                samples += 1
                audio_samples += length
                audio = sample[AUDIO_MEMBER_EXTENSION[cfg.audio_format]]
                keys.append(f"{sample['__key__']}:{hashlib.sha1(audio).hexdigest()[:16]}")
                lengths.add(length / cfg.sample_rate)
        tar.close()
        handle.flush()
        os.fsync(handle.fileno())
    sidecar = {
        "path": shard.rel_path,
        "corpus": shard.corpus,
        "language": shard.language,
        "samples": samples,
        "audio_samples": audio_samples,
        "seconds": audio_samples / cfg.sample_rate,
        "sample_rate": cfg.sample_rate,
        "audio_format": cfg.audio_format,
        "fingerprint": shard.fingerprint(cfg),
        "skipped": skipped,
        "keys_digest": keys_digest(keys),
        "lengths": lengths.to_json(),
    }
    atomic_write_text(paths.sidecar, json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    if samples:
        # Published after its sidecar (the tar's data is fsynced above), from a fixed temporary name so
        # that a rerun replaces what a killed task left behind.
        os.replace(paths.tmp, paths.tar)
        fsync_dir(paths.tar.parent)
    else:  # nothing usable: no tar, and no stale one from an earlier plan either
        paths.tmp.unlink()
        paths.tar.unlink(missing_ok=True)
    return sidecar


def _tar_writer(handle: io.BufferedWriter) -> Any:
    import webdataset as wds  # imports torch: keep it out of module import time

    # mtime=0 and fixed user/group/mode make the tar bytes reproducible.
    return wds.TarWriter(handle, encoder=False, mtime=0, user="xlsr", group="xlsr", mode=0o444)


def make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents durably (each new entry's parent is fsynced)."""
    created = []
    for parent in (directory, *directory.parents):
        if parent.is_dir():
            break
        created.append(parent)
    directory.mkdir(parents=True, exist_ok=True)
    for path in created:
        fsync_dir(path.parent)


def _skip(record: SourceRecord, reason: str, detail: str) -> dict[str, str]:
    """A row of skipped.tsv, its fields already escaped (`escape_path`): one line, any file name."""
    return {"path": escape_path(record.path), "reason": reason, "detail": escape_path(detail)}


# --------------------------------------------------------------------------------------------------
# Running the plan


def write_shards(
    records: Sequence[SourceRecord],
    cfg: ShardWriterConfig,
    task_index: int = 0,
    num_tasks: int = 1,
    progress: bool = True,
    valid_records: Sequence[SourceRecord] | None = None,
) -> dict[str, Any]:
    """Write this task's share of the planned shards; with one task, also build and return the index.

    `valid_records` (None: no held-out set) go to `OUT/valid/` with their own index (`build_index`).
    With `num_tasks > 1` (a SLURM array), returns a summary of this task's work; run once more with
    `num_tasks=1` afterwards (it finds every shard complete) or call `build_index` to merge.
    """
    if not records and not valid_records:
        raise ValueError("no audio records to shard")
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index must lie in [0, {num_tasks}), got {task_index}")
    for record in (*records, *(valid_records or ())):
        check_name(record.corpus, "corpus", record.path)
        check_name(record.language, "language", record.path)
    shards = plan_shards(records, cfg, valid_records or ())
    make_dirs(cfg.out_dir)
    _write_plan(cfg, shards, held_out=valid_records is not None)
    mine = [s for s in shards if s.ordinal % num_tasks == task_index]
    todo = [s for s in mine if not is_complete(s, cfg)]
    _run(todo, cfg, progress)
    if progress:
        print(f"wrote {len(todo)} shard(s), {len(mine) - len(todo)} already complete", file=sys.stderr)
    if num_tasks == 1:
        return build_index(cfg.out_dir)
    return {
        "task_index": task_index,
        "num_tasks": num_tasks,
        "planned": len(shards),
        "assigned": [s.rel_path for s in mine],
        "written": len(todo),
        "already_complete": len(mine) - len(todo),
    }


def _write_plan(cfg: ShardWriterConfig, shards: list[PlannedShard], held_out: bool) -> None:
    """The full plan, so `build_index` knows which shards must exist (and ignores stale ones), and
    whether the set has a held-out part."""
    plan = {
        "version": INDEX_VERSION,
        "settings": cfg.output_settings(),
        "seed": cfg.seed,
        "shard_size_bytes": cfg.shard_size_bytes,
        "held_out": held_out,
        "shards": [
            {
                "path": s.rel_path,
                "fingerprint": s.fingerprint(cfg),
                **({"subset": s.subset} if s.subset else {}),
            }
            for s in shards
        ],
    }
    atomic_write_text(cfg.out_dir / PLAN_NAME, json.dumps(plan, indent=1) + "\n")


def _run(shards: list[PlannedShard], cfg: ShardWriterConfig, progress: bool) -> None:
    bar = tqdm(total=len(shards), desc="shards", unit="shard", disable=not progress or not shards)
    if cfg.workers > 1 and len(shards) > 1:
        # spawn, not fork: forking a parent that already runs torch's thread pools can deadlock.
        context = multiprocessing.get_context("spawn")
        workers = min(cfg.workers, len(shards))
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            for future in as_completed([pool.submit(write_shard, s, cfg) for s in shards]):
                future.result()
                bar.update()
    else:
        for shard in shards:
            write_shard(shard, cfg)
            bar.update()
    bar.close()


def _init_worker() -> None:
    """One compute thread per worker process: the parallelism comes from the processes."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Index


def build_index(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Merge the shard sidecars into `OUT/index.json` and `OUT/skipped.tsv`; return that index.

    A set with a held-out part also gets `OUT/valid/index.json` and `OUT/valid/skipped.tsv` (shard
    paths relative to `OUT/valid`); a set without one loses a `OUT/valid/index.json` left by an
    earlier run, whose audio now trains. Raises RuntimeError when a planned shard is missing or
    incomplete (e.g. an array task failed).
    """
    out_dir = Path(out_dir)
    subsets, settings, held_out = _collect_sidecars(out_dir)
    valid_dir = out_dir / VALID_DIR
    if held_out:
        make_dirs(valid_dir)
        _publish_index(valid_dir, subsets.get(VALID_DIR, []), settings, f"{VALID_DIR}/")
    elif (valid_dir / INDEX_NAME).is_file():
        (valid_dir / INDEX_NAME).unlink()
        fsync_dir(valid_dir)
    # The training index last: it marks the set complete.
    return _publish_index(out_dir, subsets.get("", []), settings, "")


def _publish_index(
    directory: Path, sidecars: list[dict[str, Any]], settings: dict[str, Any], prefix: str
) -> dict[str, Any]:
    """Write `directory/skipped.tsv`, then `directory/index.json` (shard paths without `prefix`)."""
    shards = sorted((s for s in sidecars if s["samples"] > 0), key=lambda s: s["path"])
    skipped = sorted(
        ({**row, "corpus": s["corpus"], "language": s["language"]} for s in sidecars for row in s["skipped"]),
        key=lambda row: (row["path"], row["corpus"], row["language"]),
    )
    entries = [
        shard_entry(
            s["path"].removeprefix(prefix),
            s["corpus"],
            s["language"],
            s["samples"],
            _seconds(s),
            keys_digest=s.get("keys_digest"),
            lengths=s.get("lengths"),
        )
        for s in shards
    ]
    index = make_index(
        sample_rate=settings["sample_rate"],
        audio_format=settings["audio_format"],
        shards=entries,
        totals=_totals(shards),
        skipped={
            "count": len(skipped),
            "by_reason": dict(sorted(Counter(r["reason"] for r in skipped).items())),
        },
    )
    # The index last: it marks the set complete, so skipped.tsv is never older than it.
    atomic_write_text(directory / SKIPPED_NAME, _skipped_tsv(skipped))
    write_index(directory, index)
    return index


def _collect_sidecars(out_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], bool]:
    """Sidecars of the planned shards by subset ("" or VALID_DIR; all sidecars, as training, if there
    is no plan), the output settings, and whether the plan has a held-out part."""
    plan = _read_json(out_dir / PLAN_NAME)
    if plan is None:
        sidecars = [_read_json(p) for p in sorted(out_dir.glob("*/*/shard-*.json"))]
        sidecars = [s for s in sidecars if s is not None]
        if not sidecars:
            raise RuntimeError(f"{out_dir}: no shards found (no {PLAN_NAME} and no shard sidecars)")
        formats = {(s["sample_rate"], s["audio_format"]) for s in sidecars}
        if len(formats) > 1:
            raise RuntimeError(f"{out_dir}: shards disagree on sample rate/format: {sorted(formats)}")
        rate, audio_format = formats.pop()
        return {"": sidecars}, {"sample_rate": rate, "audio_format": audio_format}, False
    subsets: dict[str, list[dict[str, Any]]] = defaultdict(list)
    incomplete = []
    for entry in plan["shards"]:
        paths = _ShardPaths.of(out_dir, entry["path"])
        sidecar = _read_json(paths.sidecar)
        ok = sidecar is not None and sidecar.get("fingerprint") == entry["fingerprint"]
        ok = ok and not _predates_byte_names(sidecar)
        if ok and (sidecar["samples"] == 0 or paths.tar.is_file()):
            subsets[entry.get("subset", "")].append(sidecar)
        else:
            incomplete.append(entry["path"])
    if incomplete:
        listed = ", ".join(incomplete[:10]) + (" ..." if len(incomplete) > 10 else "")
        raise RuntimeError(
            f"{out_dir}: {len(incomplete)} planned shard(s) missing or incomplete: {listed}; "
            "rerun the same `xlsr shard` command to finish them"
        )
    return dict(subsets), plan["settings"], bool(plan.get("held_out", False))


def _seconds(sidecar: dict[str, Any]) -> float:
    return sidecar["audio_samples"] / sidecar["sample_rate"]


def _totals(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals from integer sample counts, so they do not depend on summation order."""
    by_stream: dict[str, int] = Counter()
    rate = shards[0]["sample_rate"] if shards else 1
    for s in shards:
        by_stream[f"{s['corpus']}/{s['language']}"] += s["audio_samples"]
    by_language: dict[str, int] = Counter()
    by_corpus: dict[str, int] = Counter()
    for stream, count in by_stream.items():
        corpus, language = stream.split("/")
        by_language[language] += count
        by_corpus[corpus] += count

    def hours(counts: dict[str, int]) -> dict[str, float]:
        return {name: counts[name] / rate / 3600 for name in sorted(counts)}

    return {
        "samples": sum(s["samples"] for s in shards),
        "seconds": sum(by_stream.values()) / rate,
        "hours_by_stream": hours(by_stream),
        "hours_by_language": hours(by_language),
        "hours_by_corpus": hours(by_corpus),
    }


def _skipped_tsv(rows: list[dict[str, str]]) -> str:
    """The sidecars' rows are escaped already, except in sidecars of older versions (a raw tab would
    break the row): those fields are escaped here."""

    def field(value: object) -> str:
        return escape_path(str(value)) if _RAW_TEXT.search(str(value)) else str(value)

    lines = ["\t".join(SKIPPED_COLUMNS)]
    lines += ["\t".join(field(row.get(column, "")) for column in SKIPPED_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def read_skipped(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of `OUT/skipped.tsv` as dicts (path, corpus, language, reason, detail), fields as written
    (escaped: `xlsr.data.shard_format.unescape_path(row["path"])` is the file name's exact bytes)."""
    path = Path(out_dir) / SKIPPED_NAME
    if not path.is_file():
        return []
    # Rows end at "\n" only: str.splitlines() would also split at characters a file name may hold.
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t") if lines else []
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]


def _read_json(path: Path) -> dict[str, Any] | None:
    """Parsed JSON object, or None when the file is missing or half-written."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
