"""The configuration tree: YAML round trips, one error style naming the dotted key, the model's
anchor-target preset, and a package that depends on neither the data nor the engine."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from frcnn.checkpoint import CHECKPOINT_FORMAT
from frcnn.config import (
    BACKBONES,
    TORCHVISION_ARCHS,
    AnchorTargetConfig,
    DataConfig,
    HeadConfig,
    ModelConfig,
    PreprocessConfig,
    RPNConfig,
    RunConfig,
    SyntheticConfig,
    TrainConfig,
    default_config,
    model_anchor_targets,
    torchvision_config,
)
from frcnn.field_checks import ConfigError
from frcnn.model import FasterRCNN
from frcnn.pretrained import read_checkpoint
from frcnn.weights import run_config

RECIPES = [*((backbone, fpn) for backbone in BACKBONES for fpn in (False, True)
             if not (backbone == "mobilenet_v3_large" and not fpn)), *TORCHVISION_ARCHS]


def _recipe(recipe) -> ModelConfig:
    return torchvision_config(recipe) if isinstance(recipe, str) else default_config(*recipe)


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_run_config_yaml_round_trip_for_every_recipe(recipe) -> None:
    config = RunConfig(model=_recipe(recipe), train=TrainConfig(epochs=2.5, lr_steps=(), patience=3),
                       data=DataConfig(val="voc:/x", class_names=("a", "b"), synthetic=SyntheticConfig(seed=4)))
    text = config.to_yaml()
    assert RunConfig.from_yaml(text) == config
    assert RunConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_yaml(config.model.to_yaml()) == config.model


# One invalid value in every node of the tree: (assignment, the message it must give).
INVALID = [
    ("model.preprocess.std=[1, 0, 1]", "model.preprocess.std must be 3 numbers > 0, got (1, 0, 1)"),
    ("model.preprocess.min_size=0", "model.preprocess.min_size must be an integer >= 1, got 0"),
    ("model.backbone.name=alexnet", "model.backbone.name must be one of 'small', 'vgg16', 'resnet50', "
                                    "'resnet101', 'mobilenet_v3_large', got 'alexnet'"),
    ("model.anchors.ratios=[]", "model.anchors.ratios must be one or more numbers > 0, got ()"),
    ("model.rpn.objectness=tanh", "model.rpn.objectness must be one of 'softmax', 'sigmoid', got 'tanh'"),
    ("model.rpn.targets.positive_overlap=1.5", "model.rpn.targets.positive_overlap must be a number in [0, 1], "
                                               "got 1.5"),
    ("model.proposals.nms_threshold=-0.1", "model.proposals.nms_threshold must be a number in [0, 1], got -0.1"),
    ("model.proposals.test.post_nms_top_n=0", "model.proposals.test.post_nms_top_n must be an integer >= 1, got 0"),
    ("model.roi_sampling.bg_threshold_hi=0.7", "model.roi_sampling.bg_threshold_hi must be <= fg_threshold (0.5), "
                                               "got 0.7"),
    ("model.head.fc_layers=0", "model.head.fc_layers must be an integer >= 1, got 0"),
    ("model.test.detections_per_image=true", "model.test.detections_per_image must be an integer >= 1, got True"),
    ("model.head.fc_dim=null", "model.head.fc_dim must be set: the small backbone and FPN have no head of their "
                               "own, got None"),
    ("train.lr=-1", "train.lr must be a number >= 0, got -1"),
    ("train.eval_images=0", "train.eval_images must be an integer >= 1 or null, got 0"),
    ("train.precision=fp8", "train.precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'fp8'"),
    ("model.test.precision=half", "model.test.precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'half'"),
    ("train.amp=true", "train.amp is no longer a configuration key: use train.precision instead"),
    ("data.flip_prob=2", "data.flip_prob must be a number in [0, 1], got 2"),
    ("data.class_names=[a, a]", "data.class_names must be names that differ from each other, got ('a', 'a')"),
    ("data.val=''", "data.val must be a non-empty string or null, got ''"),
    ("data.synthetic.jpeg_quality=101", "data.synthetic.jpeg_quality must be an integer in [1, 100], got 101"),
    ("model=3", "model must be a mapping, got 3"),
]


@pytest.mark.parametrize("assignment, message", INVALID, ids=[a for a, _ in INVALID])
def test_an_invalid_value_is_refused_naming_its_dotted_key(assignment: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        RunConfig().with_assignments([assignment])
    assert str(refused.value) == message


@pytest.mark.parametrize("make, message", [
    (lambda: HeadConfig(pooler="max"), "HeadConfig.pooler must be one of 'align', 'pool', got 'max'"),
    (lambda: TrainConfig(batch_size=0), "TrainConfig.batch_size must be an integer >= 1, got 0"),
    (lambda: DataConfig(on_bad="ignore"), "DataConfig.on_bad must be one of 'error', 'skip', got 'ignore'"),
    (lambda: AnchorTargetConfig(batch_size=0), "AnchorTargetConfig.batch_size must be an integer >= 1 or null, "
                                               "got 0"),
    (lambda: SyntheticConfig(long_side=(16, 40)), "SyntheticConfig.long_side must be 2 integers >= 32, "
                                                  "got (16, 40)"),
    (lambda: PreprocessConfig(mean=(0.5, 0.5)), "PreprocessConfig.mean must be 3 numbers, got (0.5, 0.5)"),
    (lambda: TrainConfig(max_minutes=None), "TrainConfig.max_minutes must be set when epochs and max_iters are "
                                            "null: a run needs at least one limit, got None"),
    (lambda: TrainConfig(lr=float("nan")), "TrainConfig.lr must be a number >= 0, got nan"),
])
def test_a_node_made_in_python_names_its_class(make, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        make()
    assert str(refused.value) == message


def test_yaml_errors_name_the_key_below_model() -> None:
    with pytest.raises(ValueError, match=r"^model\.head: unknown field\(s\) \['fc_dims'\]"):
        ModelConfig.from_yaml("head:\n  fc_dims: 3\n")
    with pytest.raises(ValueError, match=r"^model\.rpn\.conv_depth must be an integer >= 1, got 0$"):
        ModelConfig.from_yaml("rpn:\n  conv_depth: 0\n")


def test_config_errors_survive_pickling() -> None:
    error = ConfigError("model.head", "pooler", "max", "one of 'align', 'pool'")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.key == "model.head.pooler"


def test_the_model_takes_its_anchor_target_preset_and_the_layer_keeps_py_faster_rcnn() -> None:
    assert RPNConfig().targets == model_anchor_targets()
    assert model_anchor_targets() == AnchorTargetConfig.preset("torchvision", allowed_border=0)
    assert AnchorTargetConfig().legacy_plus_one and AnchorTargetConfig().allowed_border == 0
    with pytest.raises(ValueError, match=r"RPNConfig\.targets\.legacy_plus_one must be false: .*"
                                         r"frcnn\.config\.model_anchor_targets\(\)"):
        RPNConfig(targets=AnchorTargetConfig())


def test_partial_yaml_lays_over_the_model_defaults() -> None:
    config = ModelConfig.from_yaml("rpn:\n  targets:\n    batch_size: 128\nanchors:\n  ratios: [1.0]\n")
    assert config.rpn.targets == model_anchor_targets(batch_size=128)
    assert config.anchors == replace(ModelConfig().anchors, ratios=(1.0,))


def test_every_default_is_stated_once_in_the_recipes() -> None:
    assert ModelConfig() == default_config("small")
    assert DataConfig().synthetic == SyntheticConfig() and RunConfig().train == TrainConfig()


def test_the_config_package_imports_neither_the_data_nor_the_engine() -> None:
    probe = ("import frcnn.config, sys; "
             "assert not any(m.startswith(('frcnn.data', 'frcnn.engine')) for m in sys.modules), "
             "sorted(m for m in sys.modules if m.startswith('frcnn'))")
    result = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("amp, precision", [(True, "auto"), (False, "fp32")])
def test_a_stored_configuration_with_the_retired_amp_key_reads_as_the_nearest_precision(tmp_path, amp: bool,
                                                                                        precision: str) -> None:
    old = RunConfig().to_dict()
    del old["train"]["precision"]
    old["train"]["amp"] = amp
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": old, "class_names": ["a", "b"],
                "model": FasterRCNN(2).state_dict()}, path)
    checkpoint = read_checkpoint(str(path))
    assert run_config(checkpoint).train == replace(TrainConfig(), precision=precision)
    assert run_config(checkpoint, ["train.precision=bf16"]).train.precision == "bf16"
    assert FasterRCNN.load(checkpoint).config == ModelConfig()
    with pytest.raises(ValueError, match=r"^the configuration: train\.amp is no longer a configuration key: "
                                         r"use train\.precision instead$"):
        RunConfig.from_dict(old)


def test_a_yaml_file_with_the_retired_amp_key_is_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  amp: false\n")
    with pytest.raises(ValueError) as refused:
        RunConfig().with_yaml_file(path)
    assert str(refused.value) == f"{path}: train.amp is no longer a configuration key: use train.precision instead"
