"""Durable file writes: a reader never sees half a file, and a power loss never leaves a
published file empty.

Every file xlsr publishes (configs, indexes, sidecars, summaries, checkpoint parts) is written to a
temporary name in the same directory, flushed and fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a crash. New files get the user's umask (the
permissions ``open()`` would give), so a colleague can read a shard set or a run directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. certain network mounts) refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush an already-written file's data to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def umask_file_mode() -> int:
    """The permissions ``open()`` gives a new file under this process's umask (0644 under 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_sibling(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A fresh hidden name next to ``path`` that no other writer (process, host, job) can pick."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{tag}")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; on success it replaces ``path`` durably, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Let ``write(handle)`` fill the file (e.g. ``torch.save``, ``figure.savefig``), then publish it."""
    with atomic_writer(path) as handle:
        write(handle)
    return Path(path)


def publish_directory(tmp: str | os.PathLike, final: str | os.PathLike, files_synced: bool = False) -> None:
    """Rename a fully written directory into place durably: its files (unless the writers already
    fsynced them), its directories, the rename itself.

    ``final`` must not exist: nothing is ever replaced by accident.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        raise FileExistsError(f"{final} exists; not replacing it")
    for child in tmp.rglob("*"):
        if not files_synced and child.is_file() and not child.is_symlink():
            fsync_file(child)
    for directory in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        fsync_dir(directory)
    fsync_dir(tmp.parent)
    os.rename(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def locked_file(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive POSIX record lock on ``path`` (created if needed) while inside: NFS- and
    Lustre-safe, released by the kernel when the holder dies."""
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
