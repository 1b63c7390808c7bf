"""Training augmentation (``data.augment``): the recipes against the old flip rule, box and pixel
properties, determinism per item seed, and the list form's checks at config time."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from frcnn.config import DataConfig, PreprocessConfig, RunConfig
from frcnn.config.augment import DEFAULT_STEPS
from frcnn.data import MIN_BOX_SIDE, DetectionTransform, training_transform
from frcnn.field_checks import ConfigError

PREPROCESS = PreprocessConfig(min_size=64, max_size=100)
# Geometry beyond the default recipe's: rotations and affine maps move boxes to their enclosing boxes.
GEOMETRIC_LIST = [{"RandomRotation": {"degrees": 30}}, {"RandomAffine": {"degrees": 0, "translate": [0.3, 0.3],
                                                                          "scale": [0.5, 1.5]}},
                  {"RandomZoomOut": {"side_range": [1, 3], "p": 1.0}}, {"RandomIoUCrop": {}},
                  {"MultiScale": {"scales": [0.5, 1.5]}}, "RandomHorizontalFlip"]


def _target(boxes, labels, ignore_boxes=(), ignore_labels=(), size=(60, 80)) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.tensor([i % 2 == 1 for i in range(len(labels))], dtype=torch.bool),
            "ignore_boxes": torch.tensor(ignore_boxes, dtype=torch.float32).reshape(-1, 4),
            "ignore_labels": torch.tensor(ignore_labels, dtype=torch.int64), "image_id": "x", "orig_size": size}


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _seeded(transform, image, target, seed: int):
    """The item as the trainer makes it: torch's global generator seeded with the item's seed."""
    torch.manual_seed(seed)
    return transform(image, target)


def old_flip_rule(image: torch.Tensor, target: dict, preprocess: PreprocessConfig, flip_prob: float, seed: int):
    """Today's training transform, written out: one draw u from torch's generator seeded with
    ``seed``, flipped when u < flip_prob; factor s = min(min_size / shorter, max_size / longer) in
    float64, sides rounded half to even; pixels times 1/255 (torchvision's to_dtype), normalised,
    resized bilinearly with antialiasing (half-pixel centres); boxes times new / old side per axis,
    clamped to the image; a flip mirrors the image and maps x to W - x."""
    torch.manual_seed(seed)
    flipped = flip_prob > 0 and bool(torch.rand(()) < flip_prob)
    height, width = image.shape[-2:]
    factor = min(preprocess.min_size / min(height, width), preprocess.max_size / max(height, width))
    new_height, new_width = round(height * factor), round(width * factor)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(preprocess.std, dtype=torch.float32)[:, None, None]
    pixels = (image.to(torch.float32) * (1.0 / 255) - mean) / std
    resized = F.interpolate(pixels[None], size=(new_height, new_width), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    ratios = torch.tensor([new_width / width, new_height / height] * 2, dtype=torch.float32)
    limits = torch.tensor([new_width, new_height] * 2, dtype=torch.float32)
    result = {}
    for key in ("boxes", "ignore_boxes"):
        boxes = torch.minimum((target[key] * ratios).clamp(min=0), limits)
        result[key] = torch.stack([new_width - boxes[:, 2], boxes[:, 1], new_width - boxes[:, 0], boxes[:, 3]],
                                  dim=1) if flipped else boxes
    return (resized.flip(-1) if flipped else resized), result, flipped, factor


# ---------------------------------------------------------------- none and flip: today's behaviour


@pytest.mark.parametrize("height, width", [(60, 80), (97, 41), (64, 64)])
def test_flip_reproduces_the_old_transform_bit_for_bit(height: int, width: int) -> None:
    transform = training_transform(DataConfig(augment="flip", flip_prob=0.5), PREPROCESS)
    image = _image(height, width, height)
    target = _target([[0, 0, 10, 12], [5.5, 3.25, width + 0.5, height - 1], [20, 30, 21, 31]], [1, 2, 3],
                     [[2, 2, 9, 9]], [4], (height, width))
    flips = set()
    for seed in range(40):
        out, result = _seeded(transform, image, target, seed)
        expected, boxes, flipped, factor = old_flip_rule(image, target, PREPROCESS, 0.5, seed)
        flips.add(flipped)
        assert torch.equal(out, expected), seed
        assert torch.equal(result["boxes"], boxes["boxes"]) and torch.equal(result["ignore_boxes"],
                                                                             boxes["ignore_boxes"])
        assert result["flipped"] is flipped and result["scale"] == factor
        assert torch.equal(result["labels"], target["labels"]) and result["orig_size"] == (height, width)
    assert flips == {True, False}


def test_none_never_changes_geometry_beyond_the_resize() -> None:
    transform = training_transform(DataConfig(augment="none", flip_prob=1.0), PREPROCESS)
    assert transform == DetectionTransform(PREPROCESS)  # the evaluation transform
    image = _image(60, 80, 0)
    target = _target([[0, 0, 10, 12], [40, 30, 80, 60]], [1, 2])
    for seed in range(5):
        out, result = _seeded(transform, image, target, seed)
        expected, boxes, flipped, _ = old_flip_rule(image, target, PREPROCESS, 0.0, seed)
        assert not flipped and not result["flipped"]
        assert torch.equal(out, expected) and torch.equal(result["boxes"], boxes["boxes"])


# ---------------------------------------------------------------- properties of every augmented item

boxes_in = st.integers(32, 120).flatmap(lambda height: st.integers(32, 120).flatmap(lambda width: st.tuples(
    st.just((height, width)),
    st.lists(st.tuples(st.floats(0, width - 0.5), st.floats(0, height - 0.5), st.floats(0.5, width),
                       st.floats(0.5, height)), max_size=6),
    st.lists(st.tuples(st.floats(0, width - 0.5), st.floats(0, height - 0.5), st.floats(0.5, width),
                       st.floats(0.5, height)), max_size=2))))


def _corners(rows, height: int, width: int) -> list[list[float]]:
    """Hypothesis's (x, y, w, h) draws as boxes inside the image with positive sides."""
    return [[x, y, min(x + w, width), min(y + h, height)] for x, y, w, h in rows
            if min(x + w, width) > x and min(y + h, height) > y]


@pytest.mark.parametrize("augment", ["default", GEOMETRIC_LIST], ids=["default", "geometric-list"])
@settings(max_examples=40, deadline=None)
@given(drawn=boxes_in, seed=st.integers(0, 2**31 - 1))
def test_every_box_stays_inside_large_enough_and_with_its_label(augment, drawn, seed: int) -> None:
    (height, width), rows, crowd_rows = drawn
    boxes, crowd = _corners(rows, height, width), _corners(crowd_rows, height, width)
    target = _target(boxes, list(range(1, len(boxes) + 1)), crowd, [100 + i for i in range(len(crowd))],
                     (height, width))
    transform = training_transform(RunConfig().with_values({"data.augment": augment}).data, PREPROCESS)
    out, result = _seeded(transform, _image(height, width, seed % 7), target, seed)
    out_height, out_width = out.shape[-2:]
    augmented_height, augmented_width = result["orig_size"]
    minimum = torch.tensor([MIN_BOX_SIDE * out_width / augmented_width, MIN_BOX_SIDE * out_height / augmented_height])
    for key, labels in (("boxes", "labels"), ("ignore_boxes", "ignore_labels")):
        found = result[key]
        assert found.shape == (len(result[labels]), 4) and found.dtype == torch.float32
        assert (found >= 0).all() and (found[:, 0::2] <= out_width).all() and (found[:, 1::2] <= out_height).all()
        assert (found[:, 2:] - found[:, :2] >= minimum * (1 - 1e-5)).all()
    assert len(result["difficult"]) == len(result["labels"])
    # Labels keep their boxes' places: every label is one given, each at most once, with its
    # difficult flag (odd places were difficult), and crowd labels stay with crowd regions.
    assert len(set(result["labels"].tolist())) == len(result["labels"]) and set(result["labels"].tolist()) <= set(
        range(1, len(boxes) + 1))
    assert result["difficult"].tolist() == [(label - 1) % 2 == 1 for label in result["labels"].tolist()]
    assert set(result["ignore_labels"].tolist()) <= {100 + i for i in range(len(crowd))}
    assert result["scale"] > 0 and not out.isnan().any()


def _painted(height: int, width: int, boxes: list[list[int]]) -> torch.Tensor:
    """A grey image with box i painted in colour ``COLOURS[i]``."""
    image = torch.full((3, height, width), 128, dtype=torch.uint8)
    for (x1, y1, x2, y2), colour in zip(boxes, COLOURS):
        image[:, y1:y2, x1:x2] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    return image


COLOURS = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (250, 250, 20)]


@pytest.mark.parametrize("augment", [
    [{"RandomZoomOut": {"side_range": [1, 3], "p": 1.0}}, {"MultiScale": {"scales": [0.6, 1.4]}}],
    [{"RandomIoUCrop": {}}, "RandomHorizontalFlip"],
    [{"RandomZoomOut": {"side_range": [1, 2], "p": 0.5}}, {"RandomApply": {"transforms": [{"RandomIoUCrop": {}}]}}],
], ids=["zoom-out", "crop", "zoom-out-crop"])
def test_a_box_keeps_its_content_through_zoom_out_and_crops(augment) -> None:
    preprocess = PreprocessConfig(min_size=120, max_size=200)
    boxes = [[10, 10, 50, 40], [70, 15, 110, 70], [20, 60, 60, 95], [80, 80, 115, 98]]
    image = _painted(100, 120, boxes)
    transform = training_transform(RunConfig().with_values({"data.augment": augment}).data, preprocess)
    mean = torch.tensor(preprocess.mean)[:, None, None]
    std = torch.tensor(preprocess.std)[:, None, None]
    checked = 0
    for seed in range(20):
        out, result = _seeded(transform, image, _target(boxes, [1, 2, 3, 4], size=(100, 120)), seed)
        pixels = out * std + mean
        for box, label in zip(result["boxes"].tolist(), result["labels"].tolist()):
            x1, y1, x2, y2 = (round(v) for v in box)
            if x2 - x1 < 6 or y2 - y1 < 6:
                continue
            inside = pixels[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].reshape(3, -1).mean(dim=1)
            torch.testing.assert_close(inside, torch.tensor(COLOURS[label - 1]) / 255, atol=0.02, rtol=0)
            checked += 1
    assert checked >= 20


def test_zoom_out_fills_with_the_mean_pixel_which_normalises_to_zero() -> None:
    transform = training_transform(DataConfig(augment=({"RandomZoomOut": {"side_range": [3, 3], "p": 1.0}},)),
                                   PREPROCESS)
    out, result = _seeded(transform, _image(40, 40, 0), _target([[0, 0, 40, 40]], [1], size=(40, 40)), 0)
    x1, y1, x2, y2 = result["boxes"][0].tolist()
    outside = torch.ones(out.shape[-2:], dtype=torch.bool)
    outside[int(y1) - 2:int(y2) + 3, int(x1) - 2:int(x2) + 3] = False
    assert outside.float().mean() > 0.5
    assert out[:, outside].abs().max() < 1e-5


# ---------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_item_whatever_pythons_and_numpys_generators_hold() -> None:
    transform = training_transform(DataConfig(augment="default"), PREPROCESS)
    image = _image(60, 80, 1)
    target = _target([[5, 5, 30, 40], [40, 10, 75, 55]], [1, 2], [[0, 0, 10, 10]], [3])
    items = []
    for place, seed in enumerate((*range(12), 0)):
        random.seed(1000 + place)
        np.random.seed(place)
        items.append(_seeded(transform, image, target, seed))
    first, again = items[0], items[-1]
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(first[1][key], again[1][key]) for key in ("boxes", "labels", "ignore_boxes"))
    assert first[1]["orig_size"] == again[1]["orig_size"] and first[1]["scale"] == again[1]["scale"]
    shapes = {(tuple(out.shape), tuple(t["boxes"].flatten().tolist())) for out, t in items[:-1]}
    assert len(shapes) >= 8  # different seeds draw different augmentations


def test_the_augmentation_draws_nothing_from_the_callers_stream_at_config_time() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    RunConfig().with_values({"data.augment": GEOMETRIC_LIST})
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------- the list form and its errors


def test_the_list_form_builds_round_trips_and_stores_one_form() -> None:
    config = RunConfig().with_assignments(
        ["data.augment=[{RandomPhotometricDistort: {p: 0.5}}, {RandomZoomOut: {side_range: [1, 2]}}, "
         "RandomHorizontalFlip]"])
    assert config.data.augment == ({"RandomPhotometricDistort": {"p": 0.5}}, {"RandomZoomOut": {"side_range": [1, 2]}},
                                   {"RandomHorizontalFlip": {}})
    assert RunConfig.from_yaml(config.to_yaml()) == config
    assert DataConfig(augment=[{"RandomZoomOut": {"side_range": (1, 2)}}, "RandomHorizontalFlip"]).augment == \
        config.data.augment[1:]
    assert RunConfig().with_values({"data.augment": list(DEFAULT_STEPS)}).data.augment == DEFAULT_STEPS
    transform = training_transform(config.data, PREPROCESS)
    assert transform.flip_prob == 0.0 and transform.augment.scales is None  # the list is the whole augmentation


BAD_LISTS = [
    ("data.augment=fancy", "data.augment must be one of 'none', 'flip', 'default' or a list of "
                           "torchvision.transforms.v2 steps, got 'fancy'"),
    ("data.augment=[Foo]", "data.augment[0] must be a torchvision.transforms.v2 transform or MultiScale, got 'Foo'"),
    ("data.augment=[RandomHorizontalFlip, {RandomZoomOut: {side_range: [2, 1]}}]",
     "data.augment[1] must be RandomZoomOut with valid parameters (Invalid side range provided [2, 1].), "
     "got {'RandomZoomOut': {'side_range': [2, 1]}}"),
    ("data.augment=[{RandomZoomOut: {sides: 2}}]", "data.augment[0] must be RandomZoomOut with valid parameters "
     "(RandomZoomOut.__init__() got an unexpected keyword argument 'sides'), got {'RandomZoomOut': {'sides': 2}}"),
    ("data.augment=[{RandomApply: {transforms: [Foo]}}]",
     "data.augment[0].transforms[0] must be a torchvision.transforms.v2 transform or MultiScale, got 'Foo'"),
    ("data.augment=[AutoAugment]", "data.augment[0] must be a transform of an image with its boxes (Inputs of "
                                   "type BoundingBoxes are not supported by AutoAugment()), got 'AutoAugment'"),
    ("data.augment=[{RandomChoice: {transforms: [RandomHorizontalFlip, AutoAugment]}}]",
     "data.augment[0].transforms[1] must be a transform of an image with its boxes (Inputs of type BoundingBoxes "
     "are not supported by AutoAugment()), got 'AutoAugment'"),
    ("data.augment=[{RandomApply: {transforms: [Grayscale], p: 0.01}}]",
     "data.augment[0].transforms[0] must be a transform that keeps the image a (3, H, W) float image in [0, 1] "
     "with its boxes (frcnn augments before the model's own resize and normalisation), got 'Grayscale'"),
    ("data.augment=[Grayscale]", "data.augment[0] must be a transform that keeps the image a (3, H, W) float "
                                 "image in [0, 1] with its boxes (frcnn augments before the model's own resize and "
                                 "normalisation), got 'Grayscale'"),
    ("data.augment=[{RandomIoUCrop: {sampler_options: [0.3, 0.5]}}]",
     "data.augment[0] must be RandomIoUCrop with a sampler option >= 1 (no crop): without one, an image whose "
     "boxes no crop fits is tried forever, got {'RandomIoUCrop': {'sampler_options': [0.3, 0.5]}}"),
    ("data.augment=[{MultiScale: {scales: [0, 1]}}]", "data.augment[0] must be {MultiScale: {scales: [low, high]}} "
     "with 0 < low <= high, at the top of the list, got {'MultiScale': {'scales': [0, 1]}}"),
    ("data.augment=[{MultiScale: {scales: [1, 2]}}, {MultiScale: {scales: [1, 2]}}]",
     "data.augment must be a list with at most one MultiScale, got ({'MultiScale': {'scales': [1, 2]}}, "
     "{'MultiScale': {'scales': [1, 2]}})"),
    ("data.augment=[{RandomHorizontalFlip: 0.5}]", "data.augment[0] must be RandomHorizontalFlip's parameters as "
                                                   "a mapping of names to values, got {'RandomHorizontalFlip': 0.5}"),
]


@pytest.mark.parametrize("assignment, message", BAD_LISTS, ids=[a for a, _ in BAD_LISTS])
def test_a_bad_list_is_one_line_naming_its_entry(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        RunConfig().with_assignments([assignment])
    assert str(refused.value) == message


def test_the_command_line_refuses_a_bad_list_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "frcnn", "train", "--out", str(tmp_path / "run"), "--set",
                             "data.augment=[RandomHorizontalFlip, {RandomZoomOut: {side_range: [2, 1]}}]"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert result.stderr == ("frcnn train: error: data.augment[1] must be RandomZoomOut with valid parameters "
                             "(Invalid side range provided [2, 1].), got {'RandomZoomOut': {'side_range': [2, 1]}} "
                             "(--debug shows the traceback)\n")
    assert not (tmp_path / "run").exists()
