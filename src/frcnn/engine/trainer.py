"""The training loop: budgeted, checkpointed, resumable, stoppable by a signal, optionally
distributed; everything it reports (log, progress bar, evaluations, pictures) is a callback,
which the caller chooses (``callbacks.build_callbacks`` assembles those of ``frcnn train``).

A run is budgeted by iterations (``max_iters`` / ``epochs``), by wall-clock time (``max_minutes``)
or both; the learning rate follows the fraction of that budget used, so a time-budgeted run ends
its decay at the deadline. With no time budget a run is a pure function of ``seed`` on the CPU,
and a run stopped and resumed from a checkpoint ends with the same weights as one left alone.
Each step runs in the concrete precision of ``train.precision`` (``frcnn.precision``); fp16 with
a gradient scaler.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..atomic import remove_leftovers
from ..checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..data import Batch
from ..data.batching import orientation_groups
from ..precision import autocast, memory_format, memory_format_name, resolve_precision
from .callback import Callback, Evaluation, Forward
from .distributed import DistContext, all_gather_objects, average, barrier, broadcast_code
from .outcome import NonFiniteLossError, TrainingError, TrainingInterrupted, TrainResult
from .rng import rng_state, seed_everything, set_rng_state
from .run_folder import CHECKPOINT_NAME, FINAL_NAME, resolve_resume
from .sampler import IterationBatchSampler, SeededItems
from .schedule import Budget, Progress, build_optimizer, lr_factor

# Why the loop stops: go on, the budget or a callback ended the run; a signal number otherwise.
_GO_ON, _FINISH = 0, -1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def detector_losses(model: nn.Module, batch: Batch) -> Mapping[str, Tensor]:
    """The detector's training call on a collated batch (already on the model's device)."""
    return model(batch.images, batch.im_info, batch.gt_boxes, batch.num_boxes,
                 ignore_boxes=batch.ignore_boxes, num_ignore=batch.num_ignore)


@dataclass
class LossMeter:
    """Loss sums since the last log record, and the images and seconds they took."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, values: Mapping[str, float], images: int, seconds: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def flush(self) -> dict[str, float]:
        """The means since the last flush, and images per second; then start over."""
        means = {key: total / self.steps for key, total in self.sums.items()}
        means["images_per_s"] = self.images / self.seconds if self.seconds > 0 else 0.0
        self.sums, self.steps, self.images, self.seconds = {}, 0, 0, 0.0
        return means


def _callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """A name per callback for its state in the checkpoint: its class name, numbered from the
    second of a class on."""
    seen: dict[str, int] = {}
    keys = []
    for callback in callbacks:
        name = type(callback).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


class Trainer:
    """One training run of ``model`` on ``dataset``, writing to ``out_dir`` (rank 0 only).

    ``forward(model, batch)`` returns the dict of scalar losses whose sum is minimised (the
    detector's training call by default). ``metadata`` (config, class names) goes into every
    checkpoint. ``callbacks``: what the run reports and decides besides training, called in
    their order with the run's ``view`` (``callbacks.build_callbacks`` gives those of ``frcnn
    train``; none by default); the list ``trainer.callbacks`` may be changed before ``run``.
    Call ``seed_everything(config.seed)`` before making the model, so that its initial weights
    follow the seed too.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, collate_fn: Callable, config: TrainConfig,
                 out_dir: str | Path, *, metadata: Mapping[str, Any], device: torch.device,
                 forward: Forward = detector_losses, context: DistContext | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.context = context or DistContext()
        self.model = model.to(device)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.forward = forward
        self.metadata = dict(metadata)
        self.optimizer = build_optimizer(self.model, config)
        self.precision = resolve_precision(config.precision, device)
        # Only fp16's narrow exponent needs the loss scaled; bf16 has float32's range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.progress = Progress()
        self.sampler = IterationBatchSampler(orientation_groups(dataset), config.batch_size, config.seed,
                                             self.context.rank, self.context.world_size)
        self.budget = Budget(config.iteration_budget(self.sampler.iterations_per_epoch), config.max_seconds)
        self.callbacks = list(callbacks)
        self.view = TrainerView(self)
        self.meter = LossMeter()
        self.step_seconds = 0.0
        self.resumed = False
        self.last_evaluation: Evaluation | None = None
        self.final_evaluation: Evaluation | None = None
        self.stop_reason: str | None = None
        self._signal: int | None = None

    @property
    def numerics(self) -> dict[str, str]:
        """The concrete precision the run trains in and the memory format its images take."""
        return {"precision": self.precision,
                "memory_format": memory_format_name(memory_format(self.precision, self.device, training=True))}

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def epoch(self) -> float:
        """Passes over the training set so far."""
        return self.progress.iteration / self.sampler.iterations_per_epoch

    @property
    def interrupted(self) -> bool:
        """Whether SIGINT or SIGTERM asked this process to stop."""
        return self._signal is not None

    def stop(self, reason: str) -> None:
        """End the run after the current step, then finish as a run whose budget is spent."""
        self.stop_reason = reason

    def fire(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in order, with the run's view and ``args``."""
        for callback in self.callbacks:
            getattr(callback, hook)(self.view, *args)

    def report_evaluation(self, evaluation: Evaluation) -> None:
        """Keep ``evaluation`` as the latest and pass it to every callback's ``on_evaluation``."""
        self.last_evaluation = evaluation
        self.fire("on_evaluation", evaluation)

    # -- checkpoints

    def payload(self, **extra: Any) -> dict[str, Any]:
        """A checkpoint's contents: format, metadata, weights, progress, the numerics the run trains
        in (``numerics``: its concrete precision and the images' memory format), and ``extra``."""
        return {"format": CHECKPOINT_FORMAT, **self.metadata, "model": self.model.state_dict(),
                "progress": asdict(self.progress), "numerics": self.numerics, **extra}

    def save_checkpoint(self) -> Path:
        """Write the resumable checkpoint (every rank's generator states, the log meter and the
        callbacks' states), written by rank 0; every rank must call it."""
        rng_states = all_gather_objects(rng_state(), self.context)
        if self.context.is_main:
            states = {key: callback.state_dict()
                      for key, callback in zip(_callback_keys(self.callbacks), self.callbacks)}
            save_checkpoint(self.payload(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                                         rng=rng_states, meter=asdict(self.meter), callbacks=states),
                            self.checkpoint_path)
            self.fire("on_checkpoint", self.checkpoint_path)
        barrier(self.context)
        return self.checkpoint_path

    def resume(self) -> None:
        """Restore model, optimiser, scaler, progress, generators, the log meter and the
        callbacks' states from ``out_dir``."""
        payload = load_checkpoint(self.checkpoint_path)
        if "optimizer" not in payload:
            raise TrainingError(f"{self.checkpoint_path} holds no training state to resume from")
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise TrainingError(f"{self.checkpoint_path} holds a different model: "
                                f"{str(error).splitlines()[0]}") from error
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.progress = Progress(**payload["progress"])
        self.meter = LossMeter(**payload.get("meter", {}))
        states = payload.get("callbacks", {})
        for key, callback in zip(_callback_keys(self.callbacks), self.callbacks):
            if key in states:
                callback.load_state_dict(states[key])
        generators = payload["rng"]
        if len(generators) == self.context.world_size:
            set_rng_state(generators[self.context.rank])
        else:  # resumed on another number of processes: a fresh, still seeded, stream per rank
            seed_everything(self.config.seed + self.context.rank + self.progress.iteration)

    # -- the loop

    def _loader(self) -> DataLoader:
        self.sampler.start = self.progress.iteration
        return DataLoader(SeededItems(self.dataset), batch_sampler=self.sampler, collate_fn=self.collate_fn,
                          num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed))

    def run(self, resume: bool | str = False) -> TrainResult:
        """Train until the budget is spent or a callback stops the run, then write model_final.pt,
        let the callbacks finish (the final evaluation) and write checkpoint.pt. ``resume``: True
        continues from checkpoint.pt, "auto" does when it exists (``resolve_resume``).

        A non-finite loss raises NonFiniteLossError before any weight changes, and the last
        checkpoint stays as it was. SIGINT or SIGTERM (in the main thread) lets the current step
        finish, writes checkpoint.pt and raises TrainingInterrupted; a second signal acts at once.
        """
        resume = resolve_resume(resume, self.checkpoint_path)
        if resume:
            self.resume()
        else:  # each rank its own stream (anchor and RoI sampling), all following the seed
            seed_everything(self.config.seed + self.context.rank)
        self.resumed = resume
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_leftovers(self.out_dir)  # the temporaries of writes a killed run left
        model = self.model
        if self.context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        model.train()
        batches = iter(self._loader())
        try:
            with self._stop_signals():
                self.fire("on_train_start")
                code = self._train_steps(model, batches)
            if code != _FINISH:
                raise TrainingInterrupted(code, self.progress.iteration, self.save_checkpoint())
            if self.meter.steps:
                self._log()
            if self.context.is_main:
                save_checkpoint(self.payload(), self.out_dir / FINAL_NAME)
            self.fire("on_train_end")
            self.save_checkpoint()
        finally:
            self.fire("on_close")
            del batches
        return TrainResult(self.progress.iteration, self.progress.elapsed_s, self.checkpoint_path,
                           self.out_dir / FINAL_NAME,
                           None if self.final_evaluation is None else self.final_evaluation.metrics,
                           self.stop_reason)

    def _train_steps(self, model: nn.Module, batches: Iterator[Any]) -> int:
        """Steps until rank 0 says stop; _FINISH, or the number of the signal that stopped it."""
        while True:
            code = broadcast_code(self._stop_code(), self.context, self.device)
            if code != _GO_ON:
                return code
            batch = next(batches)
            self.fire("on_step_start", batch)
            started = time.perf_counter()
            losses = self._step(model, batch)
            seconds = time.perf_counter() - started
            self.progress.iteration += 1
            self.progress.elapsed_s += seconds
            self.step_seconds = seconds
            self.meter.add(losses, self.config.batch_size * self.context.world_size, seconds)
            if self.progress.iteration % self.config.log_every == 0:
                self._log()
            self.fire("on_step_end", losses)

    def _stop_code(self) -> int:
        if self._signal is not None:
            return self._signal
        return _FINISH if self.stop_reason is not None or self.budget.exhausted(self.progress) else _GO_ON

    @contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM set a flag the loop reads after each step; the
        first one also puts the previous handlers back."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

        def handler(number: int, frame: Any) -> None:
            self._signal = number
            for other, action in previous.items():
                signal.signal(other, action)

        for number in STOP_SIGNALS:
            signal.signal(number, handler)
        try:
            yield
        finally:
            for number, action in previous.items():
                signal.signal(number, action)

    def _step(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """One optimisation step; the losses (averaged over ranks) and the rate, as floats."""
        lr = self.config.lr * lr_factor(self.config, self.progress.iteration,
                                        self.budget.fraction_used(self.progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(self.device, non_blocking=True)
        with autocast(self.precision, self.device):
            loss_dict = self.forward(model, batch)
        total = sum(loss_dict.values())
        values = self._checked_losses(loss_dict, total)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**values, "lr": lr}

    def _checked_losses(self, loss_dict: Mapping[str, Tensor], total: Tensor) -> dict[str, float]:
        """The losses as floats, averaged over ranks; NonFiniteLossError if one is not finite."""
        stacked = torch.stack([total.detach().float(), *(v.detach().float() for v in loss_dict.values())])
        values = dict(zip(["loss", *loss_dict], average(stacked, self.context).tolist()))
        if not all(math.isfinite(v) for v in values.values()):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(f"non-finite loss at iteration {self.progress.iteration + 1} ({shown}); "
                                     f"stopped, the last good checkpoint is {self.checkpoint_path}")
        return values

    def _log(self) -> None:
        """A log record (the means since the previous one) to every callback's ``on_log``."""
        record = {"iter": self.progress.iteration, "epoch": round(self.epoch, 4),
                  "elapsed_s": round(self.progress.elapsed_s, 2), **self.meter.flush()}
        self.fire("on_log", record)


class TrainerView:
    """The ``RunView`` of a ``Trainer``: what its callbacks see, read only, and what they may ask."""

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    config = property(lambda self: self._trainer.config)
    out_dir = property(lambda self: self._trainer.out_dir)
    model = property(lambda self: self._trainer.model)
    dataset = property(lambda self: self._trainer.dataset)
    forward = property(lambda self: self._trainer.forward)
    device = property(lambda self: self._trainer.device)
    precision = property(lambda self: self._trainer.precision)
    is_main = property(lambda self: self._trainer.context.is_main)
    world_size = property(lambda self: self._trainer.context.world_size)
    iteration = property(lambda self: self._trainer.progress.iteration)
    elapsed_s = property(lambda self: self._trainer.progress.elapsed_s)
    epoch = property(lambda self: self._trainer.epoch)
    iterations_per_epoch = property(lambda self: self._trainer.sampler.iterations_per_epoch)
    max_iters = property(lambda self: self._trainer.budget.max_iters)
    budget_spent = property(lambda self: self._trainer.budget.exhausted(self._trainer.progress))
    step_seconds = property(lambda self: self._trainer.step_seconds)
    resumed = property(lambda self: self._trainer.resumed)
    interrupted = property(lambda self: self._trainer.interrupted)
    last_evaluation = property(lambda self: self._trainer.last_evaluation)
    final_evaluation = property(lambda self: self._trainer.final_evaluation)

    def stop(self, reason: str) -> None:
        self._trainer.stop(reason)

    def save_checkpoint(self) -> Path:
        return self._trainer.save_checkpoint()

    def checkpoint_payload(self, **extra: Any) -> dict[str, Any]:
        return self._trainer.payload(**extra)

    def report_evaluation(self, evaluation: Evaluation) -> None:
        self._trainer.report_evaluation(evaluation)

    def report_final_evaluation(self, evaluation: Evaluation) -> None:
        self._trainer.final_evaluation = evaluation
