"""The training engine: configuration, schedule, data order, checkpoints, resume, failure modes,
validation during training, the best checkpoint, early stopping and stopping by a signal."""
from __future__ import annotations

import json
import math
import os
import random
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn.config import RunConfig, SyntheticConfig, TrainConfig
from frcnn.data import DetectionTransform, collate, open_dataset, training_transform
from frcnn.engine import (
    RESULTS_COLUMNS,
    Budget,
    Callback,
    IterationBatchSampler,
    NonFiniteLossError,
    Progress,
    RunPictures,
    Trainer,
    TrainingInterrupted,
    build_callbacks,
    detector_losses,
    load_checkpoint,
    lr_factor,
    read_log,
    read_results,
    save_checkpoint,
    seed_everything,
    training_state_kept,
    validation_losses,
)
from frcnn.engine.eval_loop import evaluate, json_safe
from frcnn.engine.results import METRIC_COLUMNS
from frcnn.engine.rng import rng_state, set_rng_state
from frcnn.model import FasterRCNN

TINY_SYNTHETIC = SyntheticConfig(num_train=8, num_val=4, long_side=(64, 96), object_size=(12.0, 40.0),
                                 max_objects=3)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    """A run on 8 small synthetic images, 2 per batch, budgeted by iterations only."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    config = RunConfig()
    data = replace(config.data, train=f"synthetic:{root}", synthetic=TINY_SYNTHETIC)
    model = replace(config.model, preprocess=replace(config.model.preprocess, min_size=64, max_size=96))
    train = replace(config.train, batch_size=2, max_iters=4, max_minutes=None, warmup_iters=2,
                    checkpoint_every=2, log_every=1)
    return replace(config, model=model, data=data, train=train)


class _Interrupted(Exception):
    """Stands for a run killed between two iterations."""


def _forward_failing_at(call: int, failure: str):
    """The detector's forward, except that call number ``call`` is interrupted or gives NaN."""
    calls = [0]

    def forward(model, batch):
        calls[0] += 1
        if calls[0] == call and failure == "interrupt":
            raise _Interrupted
        losses = detector_losses(model, batch)
        if calls[0] == call and failure == "nan":
            losses = {**losses, "rcnn_cls": losses["rcnn_cls"] * math.nan}
        return losses

    return forward


def _train(config: RunConfig, out: Path, resume: bool = False, forward=detector_losses, validate: bool = False,
           extra_callbacks: tuple[Callback, ...] = (), pictures: bool = True):
    seed_everything(config.train.seed)
    dataset = open_dataset(config.data, "train")
    model = FasterRCNN(len(dataset.class_names), config=config.model)
    callbacks = build_callbacks(config.train, open_dataset(config.data, "val") if validate else None,
                                DetectionTransform(config.model.preprocess), progress_bar=False)
    callbacks = [c for c in callbacks if pictures or not isinstance(c, RunPictures)]
    training = training_transform(config.data, config.model.preprocess)
    trainer = Trainer(model, dataset.with_transform(training), collate, config.train,
                      out, metadata={"config": config.to_dict(), "class_names": list(dataset.class_names)},
                      device=torch.device("cpu"), forward=forward, callbacks=[*callbacks, *extra_callbacks])
    return trainer.run(resume=resume), model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("lr", -1.0), ("schedule", "linear"),
                                          ("lr_steps", (0.9, 0.5)), ("max_minutes", 0), ("epochs", -2)])
def test_train_config_refuses_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        TrainConfig(**{field: value})


def test_train_config_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="at least one"):
        TrainConfig(max_minutes=None)


def test_run_config_yaml_round_trip_and_assignments(tmp_path: Path) -> None:
    config = RunConfig().with_assignments(["train.lr=1e-3", "model.head.fc_dim=128", "data.val=voc:/x",
                                           "train.lr_steps=[0.5, 0.8]"])
    assert config.train.lr == 0.001 and config.model.head.fc_dim == 128 and config.data.val == "voc:/x"
    assert config.train.lr_steps == (0.5, 0.8)
    assert RunConfig.from_yaml(config.to_yaml()) == config


def test_partial_yaml_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  roi_sampling:\n    fg_fraction: 0.5\ntrain:\n  lr: 0.01\n")
    config = RunConfig().with_yaml_file(path)
    assert config.model.roi_sampling.fg_fraction == 0.5
    assert config.model.roi_sampling.batch_size_per_image == RunConfig().model.roi_sampling.batch_size_per_image
    assert config.train.lr == 0.01 and config.train.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("assignment, message", [("train.lrr=1", "unknown config key 'train.lrr'"),
                                                 ("train.lr", "KEY=VALUE"),
                                                 ("train.batch_size=0", "train.batch_size")])
def test_bad_assignments_are_refused(assignment: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig().with_assignments([assignment])


# ---------------------------------------------------------------- schedule and budget


def test_lr_warms_up_linearly_then_decays_to_the_end_of_the_budget() -> None:
    cosine = TrainConfig(warmup_iters=10, warmup_factor=0.1)
    assert lr_factor(cosine, 0, 0.0) == pytest.approx(0.1)
    assert lr_factor(cosine, 5, 0.0) == pytest.approx(0.55)
    assert lr_factor(cosine, 10, 0.5) == pytest.approx(0.5)
    assert lr_factor(cosine, 100, 1.0) == pytest.approx(0.0)
    step = TrainConfig(schedule="step", warmup_iters=0, lr_steps=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(step, 0, f) for f in (0.2, 0.5, 0.8)] == pytest.approx([1.0, 0.1, 0.01])


def test_budget_ends_at_whichever_limit_comes_first() -> None:
    budget = Budget(max_iters=100, max_seconds=60.0)
    assert budget.fraction_used(Progress(iteration=50, elapsed_s=15.0)) == 0.5
    assert budget.fraction_used(Progress(iteration=10, elapsed_s=45.0)) == 0.75
    assert budget.exhausted(Progress(iteration=10, elapsed_s=61.0))
    assert TrainConfig(epochs=1.5, max_minutes=None).iteration_budget(iterations_per_epoch=10) == 15


# ---------------------------------------------------------------- data order


def test_batches_are_fixed_per_iteration_and_one_orientation_each() -> None:
    groups = [0, 1] * 10
    sampler = IterationBatchSampler(groups, batch_size=2, seed=3)
    assert sampler.iterations_per_epoch == 10
    first = [sampler.batch(i) for i in range(25)]
    assert [IterationBatchSampler(groups, 2, 3, start=0).batch(i) for i in range(25)] == first
    restarted = iter(IterationBatchSampler(groups, 2, 3, start=17))
    assert [next(restarted) for _ in range(8)] == first[17:25]
    for batch in first:
        assert len({groups[index] for index, _ in batch}) == 1
    epoch = sorted(index for batch in first[:10] for index, _ in batch)
    assert epoch == list(range(20))
    assert len({seed for batch in first for _, seed in batch}) == 50


def test_ranks_share_an_epoch_without_overlap() -> None:
    groups = [0] * 16
    ranks = [IterationBatchSampler(groups, batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].iterations_per_epoch == 4
    seen = [index for sampler in ranks for i in range(4) for index, _ in sampler.batch(i)]
    assert sorted(seen) == list(range(16))


# ---------------------------------------------------------------- checkpoints


def test_an_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"format": "frcnn-checkpoint/1", "value": torch.arange(3)}, path)

    def killed_midway(payload, handle, *args, **kwargs):
        handle.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"format": "frcnn-checkpoint/1", "value": torch.arange(5)}, path)
    assert torch.equal(load_checkpoint(path)["value"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an frcnn checkpoint"):
        load_checkpoint(path)


def test_generator_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    seed_everything(5)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("augment, workers, precision",
                         [("flip", 0, "fp32"), ("default", 0, "fp32"), ("default", 2, "fp32"), ("flip", 0, "bf16")])
def test_resumed_run_ends_with_the_same_weights(tiny_config: RunConfig, tmp_path: Path, augment: str,
                                                workers: int, precision: str) -> None:
    """An uninterrupted run without loader workers, and the same run stopped and resumed with
    ``workers`` of them, end with the same weights."""
    tiny_config = replace(tiny_config, data=replace(tiny_config.data, augment=augment),
                          train=replace(tiny_config.train, precision=precision))
    straight, straight_model = _train(tiny_config, tmp_path / "straight")
    stopping = _with_train(tiny_config, num_workers=workers)
    with pytest.raises(_Interrupted):
        _train(stopping, tmp_path / "stopped", forward=_forward_failing_at(3, "interrupt"))
    stored = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    progress = stored["progress"]
    assert progress["iteration"] == 2
    assert stored["numerics"] == {"precision": precision, "memory_format": "contiguous"}
    assert round(progress["elapsed_s"], 2) == read_log(tmp_path / "stopped" / "log.jsonl")[1]["elapsed_s"]
    resumed, resumed_model = _train(stopping, tmp_path / "stopped", resume=True)
    assert straight.iterations == resumed.iterations == 4
    _same_weights(straight_model, resumed_model)
    assert [r["iter"] for r in read_log(tmp_path / "stopped" / "log.jsonl")] == [1, 2, 3, 4]
    losses = [r["loss"] for r in read_log(tmp_path / "straight" / "log.jsonl")]
    assert losses == [r["loss"] for r in read_log(tmp_path / "stopped" / "log.jsonl")]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_config: RunConfig,
                                                                       tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="iteration 3"):
        _train(tiny_config, tmp_path, forward=_forward_failing_at(3, "nan"))
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["progress"]["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    assert not (tmp_path / "model_final.pt").exists()


def test_a_time_budget_stops_the_run_and_writes_the_final_files(tiny_config: RunConfig, tmp_path: Path) -> None:
    config = replace(tiny_config, train=replace(tiny_config.train, max_iters=None, max_minutes=0.0001,
                                                schedule="step", clip_grad_norm=1.0))
    result, _ = _train(config, tmp_path)
    assert result.iterations >= 1 and result.elapsed_s >= 0.006
    final = load_checkpoint(result.final_model)
    assert final["class_names"] == list(open_dataset(config.data, "train").class_names)
    assert RunConfig.from_dict(final["config"]) == config
    assert final["progress"]["elapsed_s"] == result.elapsed_s
    assert load_checkpoint(result.checkpoint)["progress"] == final["progress"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- validation, best checkpoint, stopping

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PICTURES = ("results.png", "PR_curve.png", "F1_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
            "labels.png", "train_batch0.png", "val_batch0_labels.png", "val_batch0_pred.png", "loss.png")
TRAIN_TAGS = {f"train/{key}" for key in ("loss", "rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "lr", "images_per_s")}
VAL_TAGS = {f"val/{key}" for key in ("val_loss", "val_rpn_cls", "val_rpn_box", "val_rcnn_cls", "val_rcnn_box",
                                     "voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75", "rpn_recall@300")}


def _with_train(config: RunConfig, **values) -> RunConfig:
    return replace(config, train=replace(config.train, **values))


class _Recorder(Callback):
    """Records the hooks called, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __getattribute__(self, name: str):
        if name.startswith("on_"):
            return lambda run, *args: self.calls.append((name, run.iteration))
        return super().__getattribute__(name)


def test_a_trainer_given_no_callbacks_runs_alone_and_shows_callbacks_a_view(tiny_config: RunConfig,
                                                                             tmp_path: Path) -> None:
    seen = []

    class Spy(Callback):
        def on_step_end(self, run, losses) -> None:
            seen.append((run.iteration, round(run.epoch * run.iterations_per_epoch, 9), run.is_main,
                         run.budget_spent, hasattr(run, "optimizer")))

    seed_everything(tiny_config.train.seed)
    dataset = open_dataset(tiny_config.data, "train")
    model = FasterRCNN(len(dataset.class_names), config=tiny_config.model)
    training = DetectionTransform(tiny_config.model.preprocess, tiny_config.data.flip_prob)
    bare = Trainer(model, dataset.with_transform(training), collate,
                   _with_train(tiny_config, max_iters=2).train, tmp_path, metadata={"config": {}},
                   device=torch.device("cpu"))
    assert bare.callbacks == []
    bare.callbacks.append(Spy())
    result = bare.run()
    assert result.iterations == 2 and result.metrics is None and result.stop_reason is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint.pt", "model_final.pt"]
    assert seen == [(1, 1.0, True, False, False), (2, 2.0, True, True, False)]


def test_train_config_refuses_unknown_best_metrics_and_zero_patience() -> None:
    with pytest.raises(ValueError, match="TrainConfig.best_metric must be one of 'voc07_map'"):
        TrainConfig(best_metric="accuracy")
    with pytest.raises(ValueError, match="TrainConfig.patience"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="needs a validation set"):
        build_callbacks(TrainConfig(patience=2), None, None)


def test_evaluation_does_not_change_the_training_state() -> None:
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    model.train()
    model[2].eval()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    expected = torch.get_rng_state()
    with training_state_kept(model):
        model.train()
        model(torch.randn(2, 3, 8, 8))
        model.eval()
    assert torch.equal(torch.get_rng_state(), expected)
    assert [m.training for m in model] == [True, True, False]
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_validation_writes_the_run_folder_and_leaves_training_alone(tiny_config: RunConfig, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _with_train(tiny_config, eval_every=2, eval_images=3, best_metric="val_loss")
    recorder = _Recorder()
    result, model = _train(config, tmp_path / "run", validate=True, extra_callbacks=(recorder,))
    _, plain = _train(config, tmp_path / "plain")
    _same_weights(model, plain)

    out = tmp_path / "run"
    rows = read_results(out / "results.csv")
    assert (out / "results.csv").read_text().splitlines()[0] == ",".join(RESULTS_COLUMNS)
    assert [row["iter"] for row in rows] == [2, 4]
    log = read_log(out / "log.jsonl")
    for row, records in zip(rows, (log[:2], log[2:])):
        for key in ("loss", "rpn_cls", "rcnn_box"):
            assert row[key] == pytest.approx(sum(r[key] for r in records) / 2, rel=1e-12)
        assert row["lr"] == records[-1]["lr"] and row["elapsed_s"] == records[-1]["elapsed_s"]
    val_set = open_dataset(config.data, "val")
    subset = replace(val_set, annotations=val_set.annotations[:3])
    transform, cpu = DetectionTransform(config.model.preprocess), torch.device("cpu")
    final_losses = validation_losses(model, subset, transform, detector_losses, cpu, 2, 0)
    assert {key: rows[-1][key] for key in final_losses} == final_losses
    on_subset, _ = evaluate(model, subset, transform, cpu, 2)
    assert {key: rows[-1][key] for key in METRIC_COLUMNS} == {key: on_subset[key] for key in METRIC_COLUMNS}
    on_whole, _ = evaluate(model, val_set, transform, cpu, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"checkpoint": "model_final.pt", "iteration": 4, "images": 4, **json_safe(on_whole)}
    assert result.metrics == on_whole

    best = load_checkpoint(out / "model_best.pt")
    best_row = min(rows, key=lambda row: row["val_loss"])
    assert best["best"] == {"metric": "val_loss", "value": best_row["val_loss"], "iteration": best_row["iter"]}
    best_model = FasterRCNN(len(val_set.class_names), config=config.model)
    best_model.load_state_dict(best["model"])
    again = validation_losses(best_model, subset, transform, detector_losses, cpu, 2, 0)
    assert again["val_loss"] == best_row["val_loss"]

    events = EventAccumulator(str(out))
    events.Reload()
    assert set(events.Tags()["scalars"]) == TRAIN_TAGS | VAL_TAGS
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.value for e in events.Scalars("val/val_loss")] == pytest.approx([row["val_loss"] for row in rows])
    assert [e.step for e in events.Scalars("val/voc07_map")] == [2, 4]
    for name in PICTURES:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name

    hooks = [name for name, _ in recorder.calls]
    assert hooks[:3] == ["on_train_start", "on_step_start", "on_log"] and hooks[-3:] == [
        "on_train_end",
        "on_checkpoint",
        "on_close",
    ]
    assert [i for name, i in recorder.calls if name == "on_evaluation"] == [2, 4]
    assert [i for name, i in recorder.calls if name == "on_checkpoint"] == [2, 4, 4]


def test_early_stopping_after_patience_evaluations_without_improvement(tiny_config: RunConfig,
                                                                        tmp_path: Path) -> None:
    config = _with_train(tiny_config, lr=0.0, eval_every=1, patience=2, max_iters=20)
    result, _ = _train(config, tmp_path, validate=True, pictures=False)
    assert result.iterations == 3 and "did not improve" in result.stop_reason
    rows = read_results(tmp_path / "results.csv")
    assert [row["iter"] for row in rows] == [1, 2, 3]
    assert len({row["val_loss"] for row in rows}) == 1
    assert load_checkpoint(tmp_path / "model_best.pt")["best"]["iteration"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["iteration"] == 3


def _signalling_at(call: int, number: int):
    """The detector's forward, sending this process ``number`` during call number ``call``."""
    calls = [0]

    def forward(model, batch):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), number)
        return detector_losses(model, batch)

    return forward


def test_a_signal_stops_after_the_step_and_the_resumed_run_is_the_same(tiny_config: RunConfig,
                                                                       tmp_path: Path) -> None:
    config = _with_train(tiny_config, max_iters=6, eval_every=3, log_every=2, checkpoint_every=100)
    _, straight = _train(config, tmp_path / "straight", validate=True, pictures=False)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM after iteration 3") as stopped:
        _train(config, tmp_path / "stopped", validate=True, forward=_signalling_at(3, signal.SIGTERM),
               pictures=False)
    assert stopped.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    checkpoint = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")
    assert checkpoint["progress"]["iteration"] == 3
    assert not (tmp_path / "stopped" / "results.csv").exists()  # the evaluation due at 3 waits for the resume
    _, resumed = _train(config, tmp_path / "stopped", resume=True, validate=True, pictures=False)
    _same_weights(straight, resumed)
    expected, got = (read_results(tmp_path / name / "results.csv") for name in ("straight", "stopped"))
    assert [row["iter"] for row in got] == [3, 6]
    for a, b in zip(expected, got):
        assert {k: v for k, v in a.items() if k != "elapsed_s"} == {k: v for k, v in b.items() if k != "elapsed_s"}
    expected, got = ([{k: v for k, v in r.items() if k not in ("elapsed_s", "images_per_s")}
                      for r in read_log(tmp_path / name / "log.jsonl")] for name in ("straight", "stopped"))
    assert [r["iter"] for r in got] == [2, 4, 6] and got == expected
