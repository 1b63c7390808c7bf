"""The callback interface of a training run: ``Callback`` (the hooks), ``RunView`` (what a
callback sees of the run) and ``Evaluation`` (what ``on_evaluation`` receives).

The trainer calls, in the callbacks' order: ``on_train_start`` (before the first step, also of a
resumed run), ``on_step_start(batch)``, ``on_step_end(losses)`` (after the progress is updated),
``on_log(record)`` (every ``log_every`` iterations and at the end), ``on_evaluation(evaluation)``
(from the ``Evaluator``), ``on_checkpoint(path)``, ``on_train_end`` (the budget is spent or a
callback stopped the run; after model_final.pt, before the last checkpoint.pt) and, always,
``on_close``. Each hook gets the run's ``RunView`` first. ``state_dict`` / ``load_state_dict``
carry a callback's state through checkpoint.pt, so that a resumed run goes on as if never
stopped. A callback list given by hand runs on every rank of a distributed run: file writers
check ``run.is_main``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import VALIDATION_COLUMNS, TrainConfig
from ..data import DetectionDataset
from .eval_loop import Predictions

# The training call: (model, batch on the model's device) -> the scalar losses whose sum is minimised.
Forward = Callable[[nn.Module, Any], Mapping[str, Tensor]]


@dataclass(frozen=True)
class Evaluation:
    """One evaluation during training: its results.csv ``row`` (empty for the final evaluation of
    the whole split), every metric of ``frcnn eval`` (``metrics``), the ``predictions`` on
    ``dataset`` (the images evaluated) and how long it took."""

    iteration: int
    row: dict[str, float]
    metrics: dict[str, float]
    predictions: Predictions
    dataset: DetectionDataset
    seconds: float

    def validation_values(self) -> dict[str, float]:
        """The row's validation losses and metrics."""
        return {key: self.row[key] for key in self.row if key in VALIDATION_COLUMNS}


class RunView(Protocol):
    """What a callback sees of a training run (read only), and the few things it may ask of it."""

    @property
    def config(self) -> TrainConfig: ...

    @property
    def out_dir(self) -> Path: ...

    @property
    def model(self) -> nn.Module:
        """The model trained (never the distributed wrapper)."""

    @property
    def dataset(self) -> Dataset:
        """The training set, transformed."""

    @property
    def forward(self) -> Forward: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def precision(self) -> str:
        """The concrete precision the steps run in (fp32, bf16 or fp16; ``frcnn.precision``)."""

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that writes files)."""

    @property
    def world_size(self) -> int: ...

    @property
    def iteration(self) -> int:
        """Steps done so far."""

    @property
    def elapsed_s(self) -> float:
        """Seconds of training so far (the steps alone)."""

    @property
    def epoch(self) -> float:
        """Passes over the training set so far."""

    @property
    def iterations_per_epoch(self) -> int: ...

    @property
    def max_iters(self) -> int | None:
        """The iteration budget (None: a time budget alone)."""

    @property
    def budget_spent(self) -> bool: ...

    @property
    def step_seconds(self) -> float:
        """How long the last step took."""

    @property
    def resumed(self) -> bool:
        """Whether the run went on from a checkpoint."""

    @property
    def interrupted(self) -> bool:
        """Whether SIGINT or SIGTERM asked the run to stop."""

    @property
    def last_evaluation(self) -> Evaluation | None: ...

    @property
    def final_evaluation(self) -> Evaluation | None:
        """The evaluation of the final weights (set by the ``Evaluator`` at the end)."""

    def stop(self, reason: str) -> None:
        """End the run after the current step, as a run whose budget is spent ends."""

    def save_checkpoint(self) -> Path:
        """Write checkpoint.pt (every rank must call it)."""

    def checkpoint_payload(self, **extra: Any) -> dict[str, Any]:
        """A checkpoint's contents (format, metadata, weights, progress) and ``extra``."""

    def report_evaluation(self, evaluation: Evaluation) -> None:
        """Keep ``evaluation`` as the latest and pass it to every callback's ``on_evaluation``."""

    def report_final_evaluation(self, evaluation: Evaluation) -> None:
        """Keep ``evaluation`` as the run's final one (``TrainResult.metrics``)."""


class Callback:
    """A hook of every event of a run; each does nothing unless overridden."""

    def on_train_start(self, run: RunView) -> None:
        pass

    def on_step_start(self, run: RunView, batch: Any) -> None:
        pass

    def on_step_end(self, run: RunView, losses: Mapping[str, float]) -> None:
        pass

    def on_log(self, run: RunView, record: Mapping[str, float]) -> None:
        pass

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        pass

    def on_checkpoint(self, run: RunView, path: Path) -> None:
        pass

    def on_train_end(self, run: RunView) -> None:
        pass

    def on_close(self, run: RunView) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Plain values (numbers, strings, lists, dicts) to restore on resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
