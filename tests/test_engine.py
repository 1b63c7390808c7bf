"""The training engine: configuration, schedule, data order, checkpoints, resume and failure modes."""
from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from frcnn.data import SyntheticConfig, collate
from frcnn.engine import (Budget, IterationBatchSampler, NonFiniteLossError, Progress, RunConfig, TrainConfig,
                          Trainer, detector_losses, load_checkpoint, lr_factor, read_log, save_atomic,
                          seed_everything)
from frcnn.engine.checkpoint import rng_state, set_rng_state
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


def _train(config: RunConfig, out: Path, resume: bool = False, forward=detector_losses):
    seed_everything(config.train.seed)
    dataset = config.data.dataset("train")
    model = FasterRCNN(len(dataset.class_names), config=config.model)
    trainer = Trainer(model, dataset.with_transform(config.transform(training=True)), collate, config.train,
                      out, metadata={"config": config.to_dict(), "class_names": list(dataset.class_names)},
                      device=torch.device("cpu"), forward=forward, progress_bar=False)
    return trainer.run(resume=resume), model


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("lr", -1.0), ("schedule", "linear"),
                                          ("lr_steps", (0.9, 0.5)), ("max_minutes", 0), ("epochs", -2)])
def test_train_config_refuses_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"train.{field}"):
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
    save_atomic({"format": "frcnn-checkpoint/1", "value": torch.arange(3)}, path)

    def killed_midway(payload, handle, *args, **kwargs):
        handle.write(b"partial garbage")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"format": "frcnn-checkpoint/1", "value": torch.arange(5)}, path)
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
    save_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


# ---------------------------------------------------------------- the loop


def test_resumed_run_ends_with_the_same_weights(tiny_config: RunConfig, tmp_path: Path) -> None:
    straight, straight_model = _train(tiny_config, tmp_path / "straight")
    with pytest.raises(_Interrupted):
        _train(tiny_config, tmp_path / "stopped", forward=_forward_failing_at(3, "interrupt"))
    assert load_checkpoint(tmp_path / "stopped" / "checkpoint.pt")["progress"]["iteration"] == 2
    resumed, resumed_model = _train(tiny_config, tmp_path / "stopped", resume=True)
    assert straight.iterations == resumed.iterations == 4
    for (name, a), b in zip(straight_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["iter"] for r in read_log(resumed.log)] == [1, 2, 3, 4]
    losses = [r["loss"] for r in read_log(straight.log)]
    assert losses == [r["loss"] for r in read_log(resumed.log)]


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
    assert final["class_names"] == list(config.data.dataset("train").class_names)
    assert RunConfig.from_dict(final["config"]) == config
    assert result.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
