"""The training loop: budgeted, logged, checkpointed, resumable, optionally distributed.

A run is budgeted by iterations (``max_iters`` / ``epochs``), by wall-clock time (``max_minutes``)
or both; the learning rate follows the fraction of that budget used, so a time-budgeted run ends
its decay at the deadline. With no time budget a run is a pure function of ``seed`` on the CPU,
and a run stopped and resumed from a checkpoint ends with the same weights as one left alone.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import Batch
from ..viz import plot_loss_log
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_atomic, seed_everything, set_rng_state
from .distributed import DistContext, all_gather_objects, average, barrier, broadcast_flag
from .sampler import IterationBatchSampler, SeededItems
from .schedule import Budget, Progress, build_optimizer, lr_factor
from .settings import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "model_final.pt"
LOG_NAME = "log.jsonl"
LOSS_PLOT_NAME = "loss.png"
# Log fields that are not losses.
_NOT_LOSSES = ("iter", "epoch", "elapsed_s", "images_per_s", "lr")

Forward = Callable[[nn.Module, Any], Mapping[str, Tensor]]


class TrainingError(RuntimeError):
    """A run that cannot go on."""


class NonFiniteLossError(TrainingError):
    """A loss became NaN or infinite; the message names the iteration and the losses."""


def detector_losses(model: nn.Module, batch: Batch) -> Mapping[str, Tensor]:
    """The detector's training call on a collated batch (already on the model's device)."""
    return model(batch.images, batch.im_info, batch.gt_boxes, batch.num_boxes,
                 ignore_boxes=batch.ignore_boxes, num_ignore=batch.num_ignore)


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run stopped and the files it wrote."""

    iterations: int
    elapsed_s: float
    checkpoint: Path
    final_model: Path
    log: Path
    loss_plot: Path | None


@dataclass
class _LossMeter:
    """Loss sums since the last log record, and exponential averages for the progress bar."""

    sums: dict[str, float] = field(default_factory=dict)
    smooth: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, values: Mapping[str, float], images: int, seconds: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.smooth[key] = value if key not in self.smooth else 0.9 * self.smooth[key] + 0.1 * value
        self.steps += 1
        self.images += images
        self.seconds += seconds

    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def flush(self) -> dict[str, float]:
        """The means since the last flush, and images per second; then start over."""
        means = {key: total / self.steps for key, total in self.sums.items()}
        means["images_per_s"] = self.images_per_s()
        self.sums, self.steps, self.images, self.seconds = {}, 0, 0, 0.0
        return means


class _Log:
    """The JSON-lines log of a run. A fresh run starts it empty; a resumed one keeps the
    records up to the checkpoint's iteration."""

    def __init__(self, path: Path, keep_through: int | None) -> None:
        self.path = path
        records = read_log(path) if keep_through is not None and path.exists() else []
        self.records = [r for r in records if r.get("iter", 0) <= (keep_through or 0)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(records: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The loss curves of a log as a PNG."""
    keys = [key for key in (records[0] if records else {}) if key not in _NOT_LOSSES]
    return plot_loss_log(records, keys, path)


def _orientation_groups(dataset: Dataset) -> list[int]:
    """1 for a landscape image, 0 for a portrait one (all 0 for a dataset that cannot tell)."""
    if hasattr(dataset, "aspect_ratios"):
        return [int(ratio >= 1.0) for ratio in dataset.aspect_ratios()]
    return [0] * len(dataset)


class Trainer:
    """One training run of ``model`` on ``dataset``, writing to ``out_dir`` (rank 0 only).

    ``forward(model, batch)`` returns the dict of scalar losses whose sum is minimised (the
    detector's training call by default). ``metadata`` (config, class names) goes into every
    checkpoint. Call ``seed_everything(config.seed)`` before making the model, so that its
    initial weights follow the seed too.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, collate_fn: Callable, config: TrainConfig,
                 out_dir: str | Path, *, metadata: Mapping[str, Any], device: torch.device,
                 forward: Forward = detector_losses, context: DistContext | None = None,
                 progress_bar: bool = True) -> None:
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        self.context = context or DistContext()
        self.model = model.to(device)
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.forward = forward
        self.metadata = dict(metadata)
        self.progress_bar = progress_bar and self.context.is_main
        self.optimizer = build_optimizer(self.model, config)
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        self.progress = Progress()
        self.sampler = IterationBatchSampler(_orientation_groups(dataset), config.batch_size, config.seed,
                                             self.context.rank, self.context.world_size)
        self.budget = Budget(config.iteration_budget(self.sampler.iterations_per_epoch), config.max_seconds)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    # -- checkpoints

    def _payload(self, **extra: Any) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, **self.metadata, "model": self.model.state_dict(),
                "progress": asdict(self.progress), **extra}

    def save_checkpoint(self) -> None:
        """Write the resumable checkpoint: every rank's generator states, written by rank 0."""
        rng_states = all_gather_objects(rng_state(), self.context)
        if self.context.is_main:
            save_atomic(self._payload(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                                      rng=rng_states), self.checkpoint_path)
        barrier(self.context)

    def resume(self) -> None:
        """Restore model, optimiser, scaler, progress and generators from ``out_dir``."""
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
        states = payload["rng"]
        if len(states) == self.context.world_size:
            set_rng_state(states[self.context.rank])
        else:  # resumed on another number of processes: a fresh, still seeded, stream per rank
            seed_everything(self.config.seed + self.context.rank + self.progress.iteration)

    # -- the loop

    def _loader(self) -> DataLoader:
        self.sampler.start = self.progress.iteration
        return DataLoader(SeededItems(self.dataset), batch_sampler=self.sampler, collate_fn=self.collate_fn,
                          num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.config.seed))

    def run(self, resume: bool = False) -> TrainResult:
        """Train until the budget is spent; checkpoint every ``checkpoint_every`` iterations and
        at the end. A non-finite loss raises NonFiniteLossError before any weight changes, and
        the last checkpoint stays as it was."""
        if resume:
            self.resume()
        else:  # each rank its own stream (anchor and RoI sampling), all following the seed
            seed_everything(self.config.seed + self.context.rank)
        log = None
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log = _Log(self.out_dir / LOG_NAME, self.progress.iteration if resume else None)
        model = self.model
        if self.context.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        model.train()
        meter = _LossMeter()
        bar = self._bar()
        batches = iter(self._loader())
        try:
            while not broadcast_flag(self.budget.exhausted(self.progress), self.context, self.device):
                started = time.perf_counter()
                losses = self._step(model, next(batches))
                self.progress.iteration += 1
                if self.progress.iteration % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
                seconds = time.perf_counter() - started
                self.progress.elapsed_s += seconds
                meter.add(losses, self.config.batch_size * self.context.world_size, seconds)
                self._report(meter, bar, log)
            if meter.steps:
                self._report(meter, bar, log, last=True)
        finally:
            bar.close()
            del batches
        self.save_checkpoint()
        return self._finish(log)

    def _step(self, model: nn.Module, batch: Any) -> dict[str, float]:
        """One optimisation step; the losses (averaged over ranks) and the rate, as floats."""
        lr = self.config.lr * lr_factor(self.config, self.progress.iteration,
                                        self.budget.fraction_used(self.progress))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = batch.to(self.device, non_blocking=True)
        autocast = torch.autocast(self.device.type, dtype=torch.float16) if self.use_amp else nullcontext()
        with autocast:
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

    def _bar(self) -> tqdm:
        interactive = sys.stderr.isatty()
        return tqdm(total=self.budget.max_iters, initial=self.progress.iteration, disable=not self.progress_bar,
                    desc="train", unit="it", dynamic_ncols=True, mininterval=0.5 if interactive else 30.0,
                    file=sys.stderr)

    def _report(self, meter: _LossMeter, bar: tqdm, log: _Log | None, last: bool = False) -> None:
        """Advance the bar; write a log record every ``log_every`` iterations and at the end."""
        if not last:
            bar.update(1)
            shown = {k: f"{v:.3f}" for k, v in meter.smooth.items() if k != "lr"}
            bar.set_postfix({**shown, "img/s": f"{meter.images_per_s():.1f}"}, refresh=False)
        if log is None or not (last or self.progress.iteration % self.config.log_every == 0):
            return
        record = {"iter": self.progress.iteration,
                  "epoch": round(self.progress.iteration / self.sampler.iterations_per_epoch, 4),
                  "elapsed_s": round(self.progress.elapsed_s, 2), **meter.flush()}
        log.write(record)

    def _finish(self, log: _Log | None) -> TrainResult:
        """Write the final model (weights and metadata, no training state) and the loss curves."""
        final = self.out_dir / FINAL_NAME
        plot = None
        if log is not None:
            save_atomic(self._payload(), final)
            plot = plot_losses(log.records, self.out_dir / LOSS_PLOT_NAME)
        barrier(self.context)
        return TrainResult(self.progress.iteration, self.progress.elapsed_s, self.checkpoint_path, final,
                           self.out_dir / LOG_NAME, plot)
