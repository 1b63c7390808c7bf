"""Atomic writes (``frcnn.atomic``): a finished write replaces the file whole; an interrupted one
leaves the previous file as it was and no temporary behind. The checkpoint file format's errors."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from frcnn.atomic import (
    save_figure_atomic,
    save_torch_atomic,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from frcnn.checkpoint import CheckpointError, load_checkpoint, read_torch_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Killed(BaseException):
    """Stands for a process killed in the middle of a write."""


def _killed_midway(handle) -> None:
    handle.write(b"half a file")
    raise _Killed


def test_each_writer_writes_its_file_and_creates_the_folder(tmp_path: Path) -> None:
    assert write_text_atomic(tmp_path / "a" / "text.txt", "héllo\n").read_text() == "héllo\n"
    assert write_bytes_atomic(tmp_path / "bytes.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert json.loads(write_json_atomic(tmp_path / "value.json", {"x": [1, 2.5]}).read_text()) == {"x": [1, 2.5]}
    assert (tmp_path / "value.json").read_text().endswith("\n")
    saved = save_torch_atomic({"t": torch.arange(4)}, tmp_path / "b" / "payload.pt")
    assert torch.equal(torch.load(saved, weights_only=True)["t"], torch.arange(4))
    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    assert save_figure_atomic(figure, tmp_path / "figure.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.rglob("*") if p.name.startswith(".")) == []


@pytest.mark.parametrize("writer", ["write_atomic", "save_torch_atomic", "save_figure_atomic"])
def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch, writer: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"the old contents")
    with pytest.raises(_Killed):
        if writer == "write_atomic":
            write_atomic(path, _killed_midway)
        elif writer == "save_torch_atomic":
            monkeypatch.setattr(torch, "save", lambda payload, handle: _killed_midway(handle))
            save_torch_atomic({"t": torch.zeros(2)}, path)
        else:
            figure = Figure()
            monkeypatch.setattr(figure, "savefig", lambda handle, **kwargs: _killed_midway(handle))
            save_figure_atomic(figure, path)
    assert path.read_bytes() == b"the old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_json_with_nan_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "metrics.json", {"ap": 0.5})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"ap": math.nan})
    assert json.loads(path.read_text()) == {"ap": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_checkpoint_that_is_missing_or_foreign_is_one_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match=f"^checkpoint {re.escape(str(missing))} does not exist$"):
        read_torch_file(missing)
    garbage = write_bytes_atomic(tmp_path / "garbage.pt", b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(garbage))} is not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = save_torch_atomic({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(foreign))} is not an frcnn checkpoint$"):
        load_checkpoint(foreign)
    assert issubclass(CheckpointError, ValueError)  # the command line prints it as one line
