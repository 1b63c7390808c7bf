"""Checkpoint files (written atomically, read safely) and the random generators' states."""
from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import replacing

CHECKPOINT_FORMAT = "frcnn-checkpoint/1"
# The resume mode that continues from the checkpoint when there is one and starts afresh otherwise.
RESUME_AUTO = "auto"


def save_atomic(payload: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, synced, then renamed over it: a write
    that is interrupted leaves the previous file as it was."""
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by the trainer, on the CPU (``weights_only``: no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file raises one of several types
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an frcnn checkpoint")
    return payload


def resolve_resume(resume: bool | str, checkpoint: str | Path) -> bool:
    """Whether a run resumes from ``checkpoint``: never for False; always for True (FileNotFoundError
    when it does not exist); for ``RESUME_AUTO``, when it exists, so that one command serves a
    run's first start and every restart."""
    if resume == RESUME_AUTO:
        return Path(checkpoint).is_file()
    if resume is True:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        return True
    if resume is False:
        return False
    raise ValueError(f"resume must be True, False or {RESUME_AUTO!r}, got {resume!r}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states ``rng_state`` captured."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
