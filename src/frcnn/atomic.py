"""Atomic file writes: a file is written beside its target, synced, then renamed over it, so that a
write that is interrupted leaves the previous file (or none) as it was. Every file frcnn writes
for a user (checkpoints, tables, JSON, pictures) goes through here.

A write that fails for a reason of the system (a full disk, a file-size limit, no permission) is
one ``WriteError`` naming the target file and the cause. The temporary file of a write that was
killed outright (SIGKILL, a lost node) is removed, once the process that wrote it is gone and on
the same host, by the next process that writes into its folder, by the next write over the same
file, and by ``remove_leftovers`` of its folder (a training run calls it as it starts).
"""
from __future__ import annotations

import io
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch


class WriteError(OSError):
    """A file that could not be written: its path and the system's reason (``strerror``); for an
    atomic write (``replacing``) whether the previous file is still there."""

    def __init__(self, path: str | Path, cause: OSError, replacing: bool = False) -> None:
        reason = cause.strerror or (os.strerror(cause.errno) if cause.errno else str(cause))
        super().__init__(cause.errno, reason, str(path))
        kept = "; the previous file is unchanged" if replacing and Path(path).exists() else ""
        self.message = f"cannot write {path}: {reason}{kept}"

    def __str__(self) -> str:
        return self.message


def _host() -> str:
    """This machine's name as it may stand in a file name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temporary_name(path: Path) -> str:
    # Host, process and thread in the name: two writers of one file never share a temporary, and
    # a leftover tells which writer (on which machine) it was.
    return f".{path.name}.{_host()}.{os.getpid()}.{threading.get_ident()}.tmp"


def _process_is_gone(pid: int) -> bool:
    """True when no process ``pid`` runs on this machine (one that does, or that this user may
    not signal, counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def remove_leftovers(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove from ``folder`` the temporaries of interrupted writes (of the file ``name``, or of
    any file) whose writer, on this host, has ended; the paths removed. Nothing else is touched:
    only names of the form ``.<file>.<host>.<pid>.<thread>.tmp`` with this host's name, a dead
    ``pid`` and no other process's temporaries (another host's writer cannot be checked from
    here, so its temporaries stay)."""
    folder = Path(folder)
    target = re.escape(name) if name is not None else ".+"
    pattern = re.compile(rf"\.{target}\.{re.escape(_host())}\.(\d+)\.\d+\.tmp")
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False) and _process_is_gone(int(match.group(1))):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


# The folders this process has removed leftovers from: each is listed at its first write only
# (listing a folder of many outputs at every write would cost more than the writes).
_TIDIED: set[Path] = set()
_TIDIED_LOCK = threading.Lock()


def _tidy(path: Path) -> None:
    """Remove the leftovers of ended writers in ``path``'s folder at this process's first write
    there, and those of ``path`` itself whenever it is written over (a checkpoint)."""
    folder = path.parent.resolve()
    with _TIDIED_LOCK:
        first = folder not in _TIDIED
        _TIDIED.add(folder)
    if first:
        remove_leftovers(folder)
    elif path.exists():
        remove_leftovers(folder, path.name)


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder created) to write to; renamed over ``path``
    when the block ends without an error, removed in any case. Leftover temporaries of killed
    writers are removed first (``_tidy``). An OSError (in the block or around it) becomes a
    WriteError naming ``path``."""
    path = Path(path)
    temporary = path.with_name(_temporary_name(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _tidy(path)
        yield temporary
        os.replace(temporary, path)
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error, replacing=True) from error
    finally:
        temporary.unlink(missing_ok=True)


class _RecordingWriter(io.RawIOBase):
    """A writable stream over ``handle`` that keeps the first OSError of its writes: some writers
    (``torch.save``) replace it with an error of their own that names no cause. It has no
    ``fileno``, so writers (PIL) write through it rather than to the descriptor."""

    def __init__(self, handle: IO[bytes]) -> None:
        super().__init__()
        self.handle = handle
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        if not self.handle.closed:  # closing this stream after the file must not fail
            self.handle.flush()

    def seekable(self) -> bool:
        return self.handle.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Have ``write(handle)`` fill a binary file, synced to disk, then put it at ``path`` in one
    step. A write that fails for want of space, a size limit or permission is a WriteError naming
    ``path`` and the cause, whatever error the writer made of it."""
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        stream = _RecordingWriter(handle)
        try:
            write(stream)
        except Exception as error:
            if stream.error is None or isinstance(error, OSError):
                raise
            raise WriteError(path, stream.error, replacing=True) from error
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def append_text(path: str | Path, text: str) -> Path:
    """Append ``text`` (UTF-8) to ``path`` (not atomic: a log that grows); an OSError is a
    WriteError naming ``path``."""
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise WriteError(path, error) from error
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
