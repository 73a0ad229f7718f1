"""Loading a distributed checkpoint without executing code from it.

A DCP checkpoint's ``.metadata`` is a pickle, and torch's reader unpickles it with the full
``pickle`` module; its planner loads non-tensor entries with ``torch.load(weights_only=False)``.
Either runs arbitrary code from a crafted file. Here the metadata is unpickled by an
``Unpickler`` that resolves only the classes the format needs (DCP's metadata records, torch
sizes, dtypes and layouts, paths), and non-tensor entries load with ``weights_only=True``.
Anything else is refused with `UnsafeCheckpointError`, naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from xlsr.process import UserError

_METADATA_MODULES = {"torch.distributed.checkpoint.metadata"}
_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class UnsafeCheckpointError(UserError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: Path):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.source}: refusing to load {module}.{name}, which a distributed-checkpoint "
            "metadata file never holds (crafted or foreign file)"
        )


def read_metadata(path: Path) -> Metadata:
    """``.metadata`` of checkpoint directory ``path``, unpickled with the allow-list above."""
    source = Path(path) / ".metadata"
    try:
        with open(source, "rb") as handle:
            metadata = _MetadataUnpickler(handle, source).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise UnsafeCheckpointError(f"{source}: not a readable checkpoint metadata file ({exc})") from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{source}: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


class SafeReader(FileSystemReader):
    """torch's file-system reader with the metadata read through the allow-list.

    The metadata is checked when the reader is made: DCP's loader catches any error from
    ``read_metadata`` and goes on with none, which would hide the refusal's reason.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        read_metadata(Path(path))

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise UnsafeCheckpointError(f"{self.path}: per-rank metadata files are not supported")
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _load_plain(value: io.BytesIO) -> Any:
    return torch.load(value, weights_only=True)


class SafeLoadPlanner(DefaultLoadPlanner):
    """The default planner, loading non-tensor entries (e.g. learning rates) with ``weights_only``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = _load_plain(value)
        super().load_bytes(read_item, _as_stream(loaded))


class SafeFullLoadPlanner(_EmptyStateDictLoadPlanner):
    """Loads every entry of a checkpoint without a target state dict (offline consolidation)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = _load_plain(value)
        super().load_bytes(read_item, _as_stream(loaded))


def _as_stream(value: Any) -> io.BytesIO:
    """Re-serialise an already safely loaded value for the parent planner's own ``torch.load``."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer
