"""What is on disk in a checkpoint directory, and whether it is intact.

Every checkpoint holds ``manifest.json``: the size and CRC-32 of each of its files. Each rank
checksums (and fsyncs) a slice of the files, so the cost is one read of the checkpoint spread over
all ranks, from the page cache right after writing it. Verification on resume is sliced the same
way. A checkpoint without a manifest is damaged.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

from xlsr.fileio import fsync_file
from xlsr.run_dir import MANIFEST_NAME, TRAINER_STATE_NAME, read_json_object

STEP_DIR = re.compile(r"^step-(\d{8})$")
_CHUNK = 8 << 20


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint directory under ``root`` that finished writing, oldest first.

    "Finished" means renamed from its temporary name with ``trainer.pt`` inside; whether its files
    are intact is `verify`'s question.
    """
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = STEP_DIR.match(path.name)
        if match and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def checkpoint_files(directory: Path) -> list[str]:
    """Every file of a checkpoint (relative paths, sorted), the manifest itself excluded."""
    return sorted(
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and path.name != MANIFEST_NAME
    )


def describe_files(directory: Path, names: list[str], sync: bool) -> dict[str, dict[str, int]]:
    """Size and CRC-32 of ``names`` under ``directory``; with ``sync``, each is fsynced too."""
    entries = {}
    for name in names:
        path = directory / name
        if sync:
            fsync_file(path)
        entries[name] = {"size": path.stat().st_size, "crc32": file_crc32(path)}
    return entries


def file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def manifest_slice(directory: Path, rank: int, world_size: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The manifest's entries and this rank's share of its file names (None if there is no manifest)."""
    manifest = read_json_object(directory / MANIFEST_NAME)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return None, []
    return manifest["files"], sorted(manifest["files"])[rank::world_size]


def verify_slice(directory: Path, rank: int, world_size: int) -> str | None:
    """Why this rank's share of checkpoint ``directory`` is damaged, or None if it is intact."""
    if not (directory / MANIFEST_NAME).exists():
        return f"{MANIFEST_NAME} is missing"
    files, mine = manifest_slice(directory, rank, world_size)
    if files is None:
        return f"{MANIFEST_NAME} is unreadable"
    if rank == 0 and TRAINER_STATE_NAME not in files:
        return f"{MANIFEST_NAME} does not list {TRAINER_STATE_NAME}"
    for name in mine:
        reason = _check_file(directory / name, files[name])
        if reason:
            return f"{name}: {reason}"
    return None


def quick_check(directory: Path) -> bool:
    """Every file the manifest lists exists with its size (no reading): good enough for pruning."""
    files, _ = manifest_slice(directory, 0, 1)
    if files is None:
        return False
    for name, entry in files.items():
        try:
            if (directory / name).stat().st_size != entry.get("size"):
                return False
        except OSError:
            return False
    return True


def _check_file(path: Path, entry: dict[str, int]) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size != entry.get("size"):
        return f"{size} bytes, {entry.get('size')} written"
    if file_crc32(path) != entry.get("crc32"):
        return "contents changed since it was written (checksum mismatch)"
    return None
