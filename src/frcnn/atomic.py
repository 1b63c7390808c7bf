"""Atomic file writes: a file is written beside its target, synced, then renamed over it, so that a
write that is interrupted leaves the previous file (or none) as it was. Every file frcnn writes
for a user (checkpoints, tables, JSON, pictures) goes through here."""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder created) to write to; renamed over ``path``
    when the block ends without an error, removed in any case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The process and thread in the name: two writers of one file never share a temporary.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Have ``write(handle)`` fill a binary file, synced to disk, then put it at ``path`` in one
    step."""
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """``value`` as indented JSON (NaN refused: a ValueError before anything is written) and a
    final newline, written atomically."""
    return write_text_atomic(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def save_figure_atomic(figure: Any, path: str | Path, **savefig: Any) -> Path:
    """A matplotlib figure as a PNG (``figure.savefig(..., format="png", **savefig)``), written
    atomically."""
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", **savefig))


def save_torch_atomic(payload: Any, path: str | Path) -> Path:
    """``torch.save(payload)`` to ``path`` atomically."""
    return write_atomic(path, lambda handle: torch.save(payload, handle))
