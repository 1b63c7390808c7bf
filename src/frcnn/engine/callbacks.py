"""The standard callbacks (``callback.Callback``): what a training run does besides training, each
one a user may keep, replace or leave out (``Trainer(callbacks=...)``, or the list
``trainer.callbacks`` before ``run``); ``build_callbacks`` assembles those of ``frcnn train``."""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic import append_text, write_text_atomic
from ..charts import plot_training_log
from ..checkpoint import save_checkpoint
from ..config import TrainConfig
from ..data import DetectionDataset, DetectionTransform
from .callback import Callback, Evaluation, RunView
from .results import improves
from .run_folder import BEST_NAME, LOG_NAME, LOSS_PLOT_NAME
from .run_reports import ResultsTable, RunPictures
from .validation import Evaluator

# Log fields that are not losses.
_NOT_LOSSES = ("iter", "epoch", "elapsed_s", "images_per_s", "lr")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class JsonLog(Callback):
    """log.jsonl, one record per log step; loss.png, its loss curves, at the end. A resumed run
    keeps the records up to its checkpoint's iteration. Rank 0 only."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_train_start(self, run: RunView) -> None:
        path = run.out_dir / LOG_NAME
        records = read_log(path) if run.resumed and path.exists() else []
        self.records = [r for r in records if r.get("iter", 0) <= run.iteration]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def on_log(self, run: RunView, record: Mapping[str, float]) -> None:
        self.records.append(dict(record))
        append_text(run.out_dir / LOG_NAME, json.dumps(record) + "\n")

    def on_train_end(self, run: RunView) -> None:
        keys = [key for key in (self.records[0] if self.records else {}) if key not in _NOT_LOSSES]
        plot_training_log(self.records, keys, run.out_dir / LOSS_PLOT_NAME)


class ProgressBar(Callback):
    """A tqdm bar on stderr with exponentially smoothed losses and images per second; one line
    per evaluation. Redrawn every 0.5 s on a terminal, every 30 s in a log file."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.smooth: dict[str, float] = {}

    def on_train_start(self, run: RunView) -> None:
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=run.max_iters, initial=run.iteration, desc="train",
                        unit="it", dynamic_ncols=True, mininterval=0.5 if interactive else 30.0, file=sys.stderr)

    def on_step_end(self, run: RunView, losses: Mapping[str, float]) -> None:
        images = run.config.batch_size * run.world_size
        rate = images / run.step_seconds if run.step_seconds > 0 else 0.0
        for key, value in {**losses, "img/s": rate}.items():
            self.smooth[key] = value if key not in self.smooth else 0.9 * self.smooth[key] + 0.1 * value
        self.bar.set_postfix({k: f"{v:.3f}" if k != "img/s" else f"{v:.1f}" for k, v in self.smooth.items()
                              if k != "lr"}, refresh=False)
        self.bar.update(1)

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        metric = run.config.best_metric
        self.bar.write(f"eval at iteration {evaluation.iteration}: {metric} {evaluation.row[metric]:.4f}, "
                       f"val_loss {evaluation.row['val_loss']:.4f} ({len(evaluation.dataset)} images, "
                       f"{evaluation.seconds:.0f} s)", file=sys.stderr)

    def on_close(self, run: RunView) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard(Callback):
    """TensorBoard event files in the run folder: ``train/<key>`` (the losses, ``lr``,
    ``images_per_s``) at every log step, ``val/<column>`` (the validation losses and metrics
    of results.csv) at every evaluation, against the iteration. A resumed run drops the events
    past its checkpoint. Rank 0 only."""

    def __init__(self) -> None:
        self.writer = None

    def on_train_start(self, run: RunView) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import

        purge = run.iteration + 1 if run.resumed else None
        self.writer = SummaryWriter(str(run.out_dir), purge_step=purge)

    def on_log(self, run: RunView, record: Mapping[str, float]) -> None:
        for key, value in record.items():
            if key not in ("iter", "epoch", "elapsed_s"):
                self.writer.add_scalar(f"train/{key}", value, record["iter"])

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        for key, value in evaluation.validation_values().items():
            if math.isfinite(value):
                self.writer.add_scalar(f"val/{key}", value, evaluation.iteration)
        self.writer.flush()

    def on_close(self, run: RunView) -> None:
        if self.writer is not None:
            self.writer.close()


class PeriodicCheckpoint(Callback):
    """checkpoint.pt every ``train.checkpoint_every`` iterations (the trainer also writes one
    at the end and when stopped by a signal). Every rank takes part."""

    def on_step_end(self, run: RunView, losses: Mapping[str, float]) -> None:
        if run.iteration % run.config.checkpoint_every == 0:
            run.save_checkpoint()


class BestCheckpoint(Callback):
    """model_best.pt (weights and metadata, as model_final.pt, plus ``best``: the metric, its
    value and the iteration) whenever ``metric`` improves. Rank 0 only."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.best: float | None = None
        self.iteration: int | None = None

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        value = evaluation.row[self.metric]
        if improves(value, self.best, self.metric):
            self.best, self.iteration = value, evaluation.iteration
            save_checkpoint(run.checkpoint_payload(best=self.summary()), run.out_dir / BEST_NAME)

    def summary(self) -> dict[str, Any] | None:
        """{"metric", "value", "iteration"} of the best evaluation so far (None before one)."""
        if self.best is None:
            return None
        return {"metric": self.metric, "value": self.best, "iteration": self.iteration}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "iteration": self.iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.iteration = state["best"], state["iteration"]


class EarlyStopping(Callback):
    """Stop the run after ``patience`` evaluations in a row without an improvement of
    ``metric``; it then ends as a run whose budget is spent. Rank 0 decides for all."""

    def __init__(self, metric: str, patience: int) -> None:
        self.metric = metric
        self.patience = patience
        self.best: float | None = None
        self.without_improvement = 0

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        value = evaluation.row[self.metric]
        if improves(value, self.best, self.metric):
            self.best, self.without_improvement = value, 0
            return
        self.without_improvement += 1
        if self.without_improvement >= self.patience:
            run.stop(f"early stopping: {self.metric} did not improve on {self.best} in "
                         f"{self.patience} evaluations")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "without_improvement": self.without_improvement}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.without_improvement = state["best"], state["without_improvement"]


def build_callbacks(config: TrainConfig, val_dataset: DetectionDataset | None,
                    val_transform: DetectionTransform | None, progress_bar: bool = True,
                    main_process: bool = True) -> list[Callback]:
    """The callbacks of ``frcnn train``, in this order: ``JsonLog``, ``ProgressBar`` (if
    ``progress_bar``), ``TensorBoard``; with a validation set ``Evaluator``, ``ResultsTable``,
    ``BestCheckpoint``, ``EarlyStopping`` (with ``train.patience``) and ``RunPictures``; last
    ``PeriodicCheckpoint``. The order matters: the ``Evaluator`` sets the final evaluation in
    its ``on_train_end`` before ``ResultsTable`` and ``RunPictures`` read it in theirs, and
    ``PeriodicCheckpoint`` comes after every callback whose state the checkpoint keeps, so that
    a checkpoint holds the states of the step it ends. Other ranks than 0 only keep the
    checkpoint."""
    if not main_process:
        return [PeriodicCheckpoint()]
    if config.patience is not None and val_dataset is None:
        raise ValueError("train.patience needs a validation set to evaluate on")
    callbacks: list[Callback] = [JsonLog()]
    if progress_bar:
        callbacks.append(ProgressBar())
    callbacks.append(TensorBoard())
    if val_dataset is not None:
        callbacks += [Evaluator(val_dataset, val_transform, config), ResultsTable(), BestCheckpoint(config.best_metric)]
        if config.patience is not None:
            callbacks.append(EarlyStopping(config.best_metric, config.patience))
        callbacks.append(RunPictures(val_dataset, val_transform))
    callbacks.append(PeriodicCheckpoint())
    return callbacks
