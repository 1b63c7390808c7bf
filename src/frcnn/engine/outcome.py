"""How a training run ends: its result, or the error that stopped it."""
from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path


class TrainingError(RuntimeError):
    """A run that cannot go on."""


class NonFiniteLossError(TrainingError):
    """A loss became NaN or infinite; the message names the iteration and the losses."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run after a step; ``checkpoint`` holds it for a resume.
    ``exit_status``: 128 + the signal's number (130, 143)."""

    def __init__(self, signal_number: int, iteration: int, checkpoint: Path) -> None:
        name = signal.Signals(signal_number).name
        super().__init__(f"stopped by {name} after iteration {iteration}; wrote {checkpoint} "
                         "(--resume continues the run)")
        self.exit_status = 128 + signal_number
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run stopped and the files it wrote. ``metrics``: the final evaluation, of
    the whole validation split (None without one); ``stop_reason``: why a callback ended the run
    early."""

    iterations: int
    elapsed_s: float
    checkpoint: Path
    final_model: Path
    metrics: dict[str, float] | None
    stop_reason: str | None
