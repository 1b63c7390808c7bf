"""The checkpoint file format, shared by the model and the training engine: what a checkpoint
holds, the one guarded ``torch.load`` (``weights_only``: no code is run), atomic saving, and the
rules for loading a state dict into a model.

An frcnn checkpoint is a dict with ``format`` (``CHECKPOINT_FORMAT``), ``config`` (the run's
configuration as plain values, its model under ``model``), ``class_names`` and ``model`` (the
state dict); the trainer adds its progress and, in checkpoint.pt, the training state.
"""
from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import save_torch_atomic
from .config import ModelConfig

CHECKPOINT_FORMAT = "frcnn-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not of the expected kind."""


@dataclass(frozen=True)
class Checkpoint:
    """A model's weights from a file: its configuration, class names, frcnn-named weights, where
    they came from (``origin``, for messages) and an frcnn checkpoint's whole run configuration (a
    plain dict; None for weights from elsewhere)."""

    config: ModelConfig
    class_names: tuple[str, ...]
    state: dict[str, Tensor]
    origin: str
    run_config: dict[str, Any] | None = None


def read_torch_file(path: str | Path, expected: str = "an frcnn checkpoint") -> Any:
    """What a file written by ``torch.save`` holds, on the CPU; CheckpointError when it is missing
    or not readable as such (``weights_only``: only tensors and plain values load). The error says
    what the file is instead (``foreign_file_kind``) and what was ``expected``, and never suggests
    loading it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file raises one of several types
        kind = foreign_file_kind(path, error)
        raise CheckpointError(f"{path} is not a readable checkpoint: {kind}; expected {expected} "
                              "(a file written by torch.save)") from error


# The start of an HTML page, as a failed download saves it (after a byte-order mark and blanks).
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = b"\x80"


def foreign_file_kind(path: Path, error: BaseException) -> str:
    """What the file at ``path`` is, given that ``torch.load(weights_only=True)`` refused it with
    ``error``: empty, an HTML page, a truncated or foreign zip archive, a pickle of objects other
    than tensors and plain values, text, or unknown bytes. PyTorch's own advice to load with
    ``weights_only=False`` is never passed on: it runs the file's code."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "the file is empty (0 bytes)"
    refused = re.search(r"GLOBAL ([\w.]+)", str(error))
    if refused:
        return f"it holds a Python object of type {refused.group(1)}, which a checkpoint may not (only tensors " \
               "and plain values load)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(_HTML_STARTS):
        return "it is an HTML page (what a failed download leaves)"
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(path)
    if head.startswith(_PICKLE_PROTOCOL):
        return "it is a truncated pickle" if isinstance(error, EOFError) else "it is a pickle, not a torch.save file"
    try:
        return f"it is a text file beginning {head.decode('utf-8').strip()[:40]!r}"
    except UnicodeDecodeError:
        return f"it is {path.stat().st_size} bytes of an unknown kind (beginning {head[:8].hex(' ')})"


def _zip_kind(path: Path) -> str:
    """What a file that starts as a zip archive holds: damaged or truncated, a torch.save archive
    that does not load, or an archive of something else (its first member named)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "it is a truncated or damaged zip archive"
    if any(name.endswith("/data.pkl") for name in names):
        return "it is a damaged torch.save archive"
    first = f"first member {names[0]!r}" if names else "empty"
    return f"it is a zip archive of something else ({first})"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """An frcnn checkpoint's dict (``read_torch_file``); CheckpointError for any other file."""
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an frcnn checkpoint")
    return payload


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write a checkpoint's dict atomically: an interrupted write leaves the previous file."""
    return save_torch_atomic(dict(payload), path)


def read_frcnn_checkpoint(path: str | Path) -> Checkpoint:
    """The model weights, configuration and class names of an frcnn checkpoint file."""
    payload = load_checkpoint(path)
    config = ModelConfig.from_dict(payload["config"].get("model", {}))
    return Checkpoint(config, tuple(payload["class_names"]), dict(payload["model"]), str(path), payload["config"])


def fit_batchnorm_buffers(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with ``num_batches_tracked`` made to match ``target``'s BatchNorm kind: dropped
    where the target's norm is frozen, zero where the target's is plain and the source's frozen."""
    fitted = {name: value for name, value in state.items()
              if not name.endswith(".num_batches_tracked") or name in target}
    for name, value in target.items():
        if name.endswith(".num_batches_tracked") and name not in fitted:
            fitted[name] = torch.zeros_like(value)
    return fitted


def check_fit(state: Mapping[str, Tensor], target: Mapping[str, Tensor], origin: str) -> None:
    """A one-line ValueError for the first tensor of ``state`` missing, unexpected or of another
    shape than in ``target``."""
    for name, value in target.items():
        if name not in state:
            raise ValueError(f"{origin}: tensor {name} (shape {tuple(value.shape)}) is missing")
        if state[name].shape != value.shape:
            raise ValueError(f"{origin}: tensor {name} has shape {tuple(state[name].shape)}, the model's is "
                             f"{tuple(value.shape)}")
    for name, value in state.items():
        if name not in target:
            raise ValueError(f"{origin}: tensor {name} (shape {tuple(value.shape)}) has no place in the model")


def load_weights(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load every tensor of ``checkpoint`` into ``model``, which must take exactly those names and
    shapes (``check_fit``; BatchNorm counters follow the model's kind)."""
    target = model.state_dict()
    state = fit_batchnorm_buffers(checkpoint.state, target)
    check_fit(state, target, checkpoint.origin)
    model.load_state_dict(state)
