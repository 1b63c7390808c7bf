"""``Callback``: the hooks of a training run.

The trainer calls, in the callbacks' order: ``on_train_start`` (before the first step, also of a
resumed run), ``on_step_start(batch)``, ``on_step_end(losses)`` (after the progress is updated),
``on_log(record)`` (every ``log_every`` iterations and at the end), ``on_evaluation(evaluation)``
(from the ``Evaluator``), ``on_checkpoint(path)``, ``on_train_end`` (the budget is spent or a
callback stopped the run; after model_final.pt, before the last checkpoint.pt) and, always,
``on_close``. ``state_dict`` / ``load_state_dict`` carry a callback's state through
checkpoint.pt, so that a resumed run goes on as if never stopped. A callback list given by hand
runs on every rank of a distributed run: file writers check ``trainer.context.is_main``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import Trainer
    from .validation import Evaluation


class Callback:
    """A hook of every event of a run; each does nothing unless overridden."""

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_start(self, trainer: Trainer, batch: Any) -> None:
        pass

    def on_step_end(self, trainer: Trainer, losses: Mapping[str, float]) -> None:
        pass

    def on_log(self, trainer: Trainer, record: Mapping[str, float]) -> None:
        pass

    def on_evaluation(self, trainer: Trainer, evaluation: Evaluation) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    def on_close(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """Plain values (numbers, strings, lists, dicts) to restore on resume."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass
