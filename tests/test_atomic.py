"""Atomic writes (``frcnn.atomic``): a finished write replaces the file whole; an interrupted one
leaves the previous file as it was and no temporary behind. The checkpoint file format's errors."""
from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from frcnn.atomic import (
    WriteError,
    _host,
    _RecordingWriter,
    remove_leftovers,
    save_figure_atomic,
    save_torch_atomic,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from frcnn.checkpoint import CheckpointError, load_checkpoint, read_torch_file, save_checkpoint
from frcnn.cli.main import main
from frcnn.config import RunConfig, SyntheticConfig
from frcnn.data import DetectionTransform, collate, open_dataset
from frcnn.engine import Trainer
from frcnn.model import FasterRCNN

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


# ---------------------------------------------------------------- write failures

_FILLING = {  # each writer, given a payload larger than the file-size limit below
    "save_torch_atomic": "save_torch_atomic({'t': torch.zeros(200_000)}, path)",
    "write_json_atomic": "write_json_atomic(path, list(range(100_000)))",
    "save_figure_atomic": "figure = Figure(figsize=(8, 8)); figure.add_subplot().imshow(np.random.rand(400, 400));"
                          " save_figure_atomic(figure, path)",
    "save_png": "save_png(torch.randint(0, 256, (3, 300, 300), dtype=torch.uint8), path)",
    "replacing": "with replacing(path) as staged: staged.write_bytes(bytes(500_000))",
    "append_text": "append_text(path, 'x' * 500_000)",
}

_UNDER_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import numpy as np, torch
from matplotlib.figure import Figure
from frcnn.atomic import WriteError, append_text, replacing, save_figure_atomic, save_torch_atomic, write_json_atomic
from frcnn.draw import save_png
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
for writer, path in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        exec(WRITERS[writer])
    except WriteError as error:
        print(error)
"""


def test_a_file_size_limit_is_one_line_naming_the_file_and_the_old_file_stays(tmp_path: Path) -> None:
    arguments, expected = [], []
    for writer in sorted(_FILLING):
        path = tmp_path / writer / "file"
        path.parent.mkdir()
        path.write_bytes(b"the old contents")
        arguments += [writer, str(path)]
        expected.append(f"cannot write {path}: File too large" + ("" if writer == "append_text" else
                                                                  "; the previous file is unchanged"))
    script = f"WRITERS = {_FILLING!r}\n{_UNDER_SIZE_LIMIT}"
    done = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == expected, done.stderr
    for writer in _FILLING:
        path = tmp_path / writer / "file"
        assert writer == "append_text" or path.read_bytes() == b"the old contents"
        assert [p.name for p in path.parent.iterdir()] == ["file"]


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                              (errno.EACCES, "Permission denied"),
                                              (errno.EFBIG, "File too large")])
def test_a_write_error_names_the_file_and_the_systems_reason(tmp_path: Path, monkeypatch, code: int,
                                                             reason: str) -> None:
    path = write_bytes_atomic(tmp_path / "checkpoint.pt", b"old")

    def failing(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_RecordingWriter, "write", failing)
    with pytest.raises(WriteError) as raised:
        save_checkpoint({"t": torch.zeros(3)}, path)
    assert str(raised.value) == f"cannot write {path}: {reason}; the previous file is unchanged"
    assert (raised.value.errno, raised.value.filename) == (code, str(path))
    assert isinstance(raised.value, OSError) and path.read_bytes() == b"old"
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(tmp_path / 'new.json'))}: {reason}$"):
        write_json_atomic(tmp_path / "new.json", {})


def test_a_permission_error_on_the_folder_names_the_target(tmp_path: Path, monkeypatch) -> None:
    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refused)
    target = tmp_path / "out" / "report.json"
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(target))}: Permission denied$"):
        write_json_atomic(target, {})


def test_the_command_line_prints_a_write_failure_as_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_RecordingWriter, "write", full_disk)
    out = tmp_path / "report"
    assert main(["data", f"synthetic:{tmp_path / 'data'}", "--out", str(out), "--set",
                 "data.synthetic.num_train=2", "--set", "data.synthetic.num_val=1"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"frcnn data: error: cannot write {out / 'report.json'}: No space left on device "
                     "(--debug shows the traceback)"]


# ---------------------------------------------------------------- leftovers of killed writes

_KILLED_WHILE_WRITING = """
import os, signal, sys, torch
from frcnn.atomic import save_torch_atomic, write_atomic
def killed(handle):
    handle.write(b"half a checkpoint")
    handle.flush()
    os.kill(os.getpid(), signal.SIGKILL)
write_atomic(sys.argv[1], killed)
"""


def test_a_killed_write_leaves_a_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    path = write_bytes_atomic(tmp_path / "checkpoint.pt", b"old")
    done = subprocess.run([sys.executable, "-c", _KILLED_WHILE_WRITING, str(path)], timeout=120)
    assert done.returncode == -signal.SIGKILL
    leftovers = [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".checkpoint.pt.")
    assert path.read_bytes() == b"old"
    save_torch_atomic({"t": torch.ones(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_only_temporaries_of_ended_writers_on_this_host_are_removed(tmp_path: Path) -> None:
    host, dead = _host(), _dead_pid()
    names = {"dead": f".checkpoint.pt.{host}.{dead}.7.tmp", "other_file_dead": f".log.jsonl.{host}.{dead}.1.tmp",
             "alive": f".checkpoint.pt.{host}.{os.getpid()}.7.tmp",
             "other_host": f".checkpoint.pt.elsewhere.{dead}.7.tmp",
             "user_file": ".checkpoint.pt.tmp", "user_file2": f"checkpoint.pt.{host}.{dead}.7.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert remove_leftovers(tmp_path, "checkpoint.pt") == [tmp_path / names["dead"]]
    assert remove_leftovers(tmp_path) == [tmp_path / names["other_file_dead"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("alive", "other_host", "user_file", "user_file2"))
    assert remove_leftovers(tmp_path / "missing") == []


# ---------------------------------------------------------------- files that are not checkpoints


def _zip_of_something_else(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")


class _NotPlain:
    """An object a checkpoint may not hold."""


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: p.write_bytes(b""), "the file is empty (0 bytes)"),
    (lambda p: p.write_text("\ufeff\n<!DOCTYPE html>\n<html><body>404 Not Found</body></html>"),
     "it is an HTML page (what a failed download leaves)"),
    (_zip_of_something_else, "it is a zip archive of something else (first member 'notes/readme.txt')"),
    (lambda p: p.write_bytes(save_torch_atomic({"t": torch.zeros(1000)}, p).read_bytes()[:3000]),
     "it is a truncated or damaged zip archive"),
    (lambda p: torch.save({"t": _NotPlain()}, p),
     f"it holds a Python object of type {__name__}._NotPlain, which a checkpoint may not (only tensors and plain "
     "values load)"),
    (lambda p: p.write_text("model: resnet50\n"), "it is a text file beginning 'model: resnet50'"),
    (lambda p: p.write_bytes(b"\x00\x01\xfe\xff"), "it is 4 bytes of an unknown kind (beginning 00 01 fe ff)"),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path: Path, make, kind: str) -> None:
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert message == (f"{path} is not a readable checkpoint: {kind}; expected an frcnn checkpoint "
                       "(a file written by torch.save)")
    assert "weights_only" not in message and "\n" not in message


def test_a_run_removes_the_temporaries_a_killed_run_left_in_its_folder(tmp_path: Path) -> None:
    config = RunConfig()
    synthetic = SyntheticConfig(num_train=2, num_val=1, long_side=(64, 64), object_size=(12.0, 30.0), max_objects=2)
    data = replace(config.data, train=f"synthetic:{tmp_path / 'data'}", synthetic=synthetic)
    dataset = open_dataset(data, "train")
    preprocess = replace(config.model.preprocess, min_size=64, max_size=64)
    model = FasterRCNN(len(dataset.class_names), config=replace(config.model, preprocess=preprocess))
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "model_best.pt"):
        (out / f".{name}.{_host()}.{_dead_pid()}.1.tmp").write_bytes(b"half a checkpoint")
    (out / "notes.tmp").write_text("the user's")
    train = replace(config.train, batch_size=2, max_iters=1, max_minutes=None, warmup_iters=1)
    trainer = Trainer(model, dataset.with_transform(DetectionTransform(preprocess)), collate, train, out,
                      metadata={"config": {}}, device=torch.device("cpu"))
    trainer.run()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model_final.pt", "notes.tmp"]


def test_the_first_write_into_a_folder_removes_every_leftover_there(tmp_path: Path) -> None:
    leftover = tmp_path / "out" / f".image_3.png.{_host()}.{_dead_pid()}.1.tmp"
    leftover.parent.mkdir()
    leftover.write_bytes(b"half a picture")
    write_json_atomic(tmp_path / "out" / "detections.json", [])
    assert [p.name for p in leftover.parent.iterdir()] == ["detections.json"]


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: an ignored SIGXFSZ stays ignored across exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_frcnn_train_under_a_file_size_limit_stops_in_one_line_naming_the_checkpoint(tmp_path: Path) -> None:
    tiny = ["data.synthetic.num_train=2", "data.synthetic.num_val=1", "data.synthetic.long_side=[64,64]",
            "model.preprocess.min_size=32", "model.preprocess.max_size=64", "train.batch_size=2",
            "train.max_iters=1", "train.warmup_iters=1"]
    done = subprocess.run([sys.executable, "-m", "frcnn", "train", "--out", "run", "--no-eval", "--set", *tiny],
                          cwd=tmp_path, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
                          preexec_fn=_file_size_limit(1_000_000), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == ("frcnn train: error: cannot write run/model_final.pt: File too "
                                                    "large (--debug shows the traceback)")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_backbone_weights_that_are_an_html_page_say_so(tmp_path: Path) -> None:
    page = tmp_path / "small.pth"
    page.write_text("<html><body>Access denied</body></html>")
    with pytest.raises(CheckpointError) as raised:
        FasterRCNN(3, backbone_weights=str(page))
    assert str(raised.value) == (f"{page} is not a readable checkpoint: it is an HTML page (what a failed download "
                                 "leaves); expected backbone weights, a state dict (a file written by torch.save)")
