"""Datasets (VOC, COCO, synthetic), the transform and batching, on fixtures written here."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.config import PreprocessConfig, SyntheticConfig
from frcnn.data import (
    SHAPE_NAMES,
    VOC_CLASSES,
    AspectRatioBatchSampler,
    DatasetError,
    DetectionTransform,
    ReadOptions,
    build_dataset,
    build_loader,
    collate,
    ensure_synthetic,
    load_coco,
    load_voc,
)
from frcnn.data.synthetic import _draw_objects, _noise_tile, fingerprint, render_image
from frcnn.data.voc import internal_to_voc, voc_to_internal
from frcnn.preprocess import preprocess_images

# ---------------------------------------------------------------- fixtures

# stem -> (width, height, objects (name, VOC box, difficult)); VOC boxes are 1-based inclusive.
VOC_IMAGES = {
    "000001": (48, 32, [("dog", (1, 2, 20, 30), 0), ("cat", (10, 5, 48, 32), 1)]),
    "000002": (40, 40, []),
    "000003": (32, 48, [("person", (5, 5, 9, 9), 0)]),
}


def write_xml(path: Path, width: int, height: int, objects) -> None:
    """A VOC annotation file as the devkit has them."""
    parts = [f"<annotation><filename>{path.stem}.jpg</filename>"
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (xmin, ymin, xmax, ymax), difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    path.write_text("\n".join(parts + ["</annotation>"]))


def write_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_voc(year_dir: Path, images: dict = VOC_IMAGES,
              splits: dict | None = None) -> Path:
    """A VOC year folder with ``images``; splits default to train = first two, val = last."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True, exist_ok=True)
    for n, (stem, (width, height, objects)) in enumerate(images.items()):
        write_xml(year_dir / "Annotations" / f"{stem}.xml", width, height, objects)
        write_image(year_dir / "JPEGImages" / f"{stem}.jpg", width, height, n)
    stems = list(images)
    splits = splits if splits is not None else {"train": stems[:2], "val": stems[2:]}
    for split, names in splits.items():
        (year_dir / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    return year_dir


@pytest.fixture
def voc_devkit(tmp_path: Path) -> Path:
    write_voc(tmp_path / "VOCdevkit" / "VOC2007")
    return tmp_path / "VOCdevkit"


# Non-contiguous category ids, images listed out of id order, a crowd region, an image without
# annotations, an area that is not the box area.
COCO_CONTENT = {
    "images": [
        {"id": 42, "file_name": "b.png", "width": 50, "height": 40},
        {"id": 7, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 99, "file_name": "empty.png", "width": 30, "height": 30},
    ],
    "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 18, "bbox": [10.5, 4.0, 20.0, 30.25], "area": 400.0, "iscrowd": 0},
        {"id": 2, "image_id": 42, "category_id": 3, "bbox": [0.0, 0.0, 50.0, 40.0], "area": 2000.0, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 90, "bbox": [30.0, 20.0, 10.0, 8.0], "area": 70.0, "iscrowd": 1},
        {"id": 4, "image_id": 7, "category_id": 3, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0},
    ],
}


def write_coco(folder: Path, content: dict = COCO_CONTENT) -> tuple[Path, Path]:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(content["images"]):
        write_image(images / image["file_name"], image["width"], image["height"], n)
    annotation_file = folder / "instances.json"
    annotation_file.write_text(json.dumps(content))
    return annotation_file, images


# ---------------------------------------------------------------- VOC


def test_voc_to_internal_subtracts_one_from_the_minimum_corner_only():
    voc = np.array([[1, 1, 10, 20], [5.5, 3, 7, 9]])
    internal = voc_to_internal(voc)
    np.testing.assert_array_equal(internal, [[0, 0, 10, 20], [4.5, 2, 7, 9]])
    np.testing.assert_array_equal(internal_to_voc(internal), voc)


def test_voc_split_is_read_with_converted_boxes_difficult_flags_and_empty_images(voc_devkit):
    dataset = load_voc(voc_devkit, "train", ReadOptions(class_names=VOC_CLASSES))
    assert dataset.class_names == VOC_CLASSES
    assert [a.image_id for a in dataset.annotations] == ["000001", "000002"]
    first, empty = dataset.annotations
    np.testing.assert_array_equal(first.boxes, [[0, 1, 20, 30], [9, 4, 48, 32]])
    assert first.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert first.difficult.tolist() == [False, True]
    np.testing.assert_array_equal(first.areas, [20 * 29, 39 * 28])
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)

    image, target = dataset[0]
    assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["difficult"].tolist() == [False, True]
    assert target["ignore_boxes"].shape == (0, 4)
    assert target["image_id"] == "000001" and target["orig_size"] == (32, 48)
    target["boxes"][0, 0] = 1000.0  # targets are copies; the annotation stays as read
    assert first.boxes[0, 0] == 0


def test_voc_root_may_be_the_year_folder_and_several_years_must_be_named(voc_devkit):
    assert len(load_voc(voc_devkit / "VOC2007", "val")) == 1
    write_voc(voc_devkit / "VOC2012")
    with pytest.raises(DatasetError, match="several VOC years.*VOC2007, VOC2012"):
        load_voc(voc_devkit, "train")


def test_voc_found_class_names_are_sorted_and_shared_by_splits(voc_devkit):
    train, val = (load_voc(voc_devkit, split) for split in ("train", "val"))
    assert train.class_names == val.class_names == ("cat", "dog", "person")
    assert val.annotations[0].labels.tolist() == [3]


def test_voc_box_overhanging_by_one_pixel_is_accepted(voc_devkit):
    # xmin = 0 (internal -1), as some VOC annotations have.
    write_xml(voc_devkit / "VOC2007" / "Annotations" / "000003.xml", 32, 48, [("person", (0, 1, 32, 48), 0)])
    np.testing.assert_array_equal(load_voc(voc_devkit, "val").annotations[0].boxes, [[-1, 0, 32, 48]])


# ---------------------------------------------------------------- COCO


def test_coco_boxes_categories_crowds_and_empty_images(tmp_path):
    dataset = load_coco(*write_coco(tmp_path))
    assert dataset.source_format == "coco"
    assert dataset.category_ids == (3, 18, 90)
    assert dataset.class_names == ("car", "dog", "toothbrush")
    assert [a.image_id for a in dataset.annotations] == [7, 42, 99]
    image7, image42, image99 = dataset.annotations
    np.testing.assert_array_equal(image7.boxes, [[10.5, 4.0, 30.5, 34.25], [1, 2, 4, 6]])
    assert image7.labels.tolist() == [2, 1]
    np.testing.assert_array_equal(image7.areas, [400.0, 12.0])
    np.testing.assert_array_equal(image7.ignore_boxes, [[30, 20, 40, 28]])
    assert image7.ignore_labels.tolist() == [3]
    assert not image7.difficult.any()
    assert image42.labels.tolist() == [1] and image42.ignore_boxes.shape == (0, 4)
    assert image99.boxes.shape == (0, 4) and image99.ignore_boxes.shape == (0, 4)

    image, target = dataset[0]
    assert image.shape == (3, 48, 64)
    assert target["image_id"] == 7 and target["ignore_labels"].tolist() == [3]


# ---------------------------------------------------------------- specs


def test_build_dataset_reads_voc_and_coco_specs(voc_devkit, tmp_path):
    assert build_dataset(f"voc:{voc_devkit}", "val").annotations[0].image_id == "000003"
    annotation_file, images = write_coco(tmp_path / "coco")
    assert len(build_dataset(f"coco:{annotation_file}:{images}", "train")) == 3


@pytest.mark.parametrize("spec", ["imagenet:/x", "voc", "voc:", "coco:only.json", ""])
def test_bad_spec_is_a_dataset_error(spec):
    with pytest.raises(DatasetError, match="bad dataset spec"):
        build_dataset(spec, "train")


# ---------------------------------------------------------------- synthetic

TINY = SyntheticConfig(num_train=24, num_val=6, long_side=(64, 96), object_size=(8.0, 60.0),
                       empty_fraction=0.2)


def test_synthetic_generation_is_deterministic_and_cached(tmp_path):
    first = ensure_synthetic(TINY, tmp_path / "a")
    second = ensure_synthetic(TINY, tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    stamp = (first / "synthetic.json").stat().st_mtime_ns
    assert ensure_synthetic(TINY, first) == first
    assert (first / "synthetic.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folders left


def test_synthetic_default_folder_is_named_by_the_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = ensure_synthetic(TINY)
    assert root == tmp_path / "frcnn" / f"synthetic-{fingerprint(TINY)}"
    assert fingerprint(TINY) != fingerprint(replace(TINY, seed=1))


def test_synthetic_is_regenerated_when_parameters_change(tmp_path):
    root = ensure_synthetic(TINY, tmp_path / "data")
    other = replace(TINY, num_train=5)
    assert ensure_synthetic(other, root) == root
    assert len((root / "ImageSets/Main/train.txt").read_text().split()) == 5
    assert len(list((root / "JPEGImages").iterdir())) == 5 + TINY.num_val


def test_synthetic_config_is_checked():
    with pytest.raises(ValueError, match=r"SyntheticConfig.long_side must be \(low, high\) with low <= high"):
        SyntheticConfig(long_side=(400, 300))
    with pytest.raises(ValueError, match=r"SyntheticConfig.min_side_ratio must be a number in \(0, 1\]"):
        SyntheticConfig(min_side_ratio=0.0)


def test_synthetic_refuses_a_folder_that_is_not_its_own(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        ensure_synthetic(TINY, tmp_path / "mine")


def test_synthetic_splits_have_shape_classes_varied_sizes_and_boxes_inside(tmp_path):
    train = build_dataset(f"synthetic:{tmp_path / 'data'}", "train", synthetic=TINY)
    val = build_dataset(f"synthetic:{tmp_path / 'data'}", "val", synthetic=TINY)
    assert len(train) == 24 and len(val) == 6
    assert train.class_names == SHAPE_NAMES == tuple(sorted(SHAPE_NAMES)) and len(SHAPE_NAMES) >= 5
    sizes = {(a.height, a.width) for a in train.annotations}
    assert len(sizes) > 10 and all(64 * 0.6 - 1 <= min(s) and max(s) <= 96 for s in sizes)
    counts = [a.num_objects for a in train.annotations]
    assert 0 in counts and max(counts) > 1
    labels = np.concatenate([a.labels for a in train.annotations])
    assert set(labels.tolist()) == set(range(1, len(SHAPE_NAMES) + 1))
    for a in train.annotations + val.annotations:
        assert ((a.boxes[:, :2] >= 0) & (a.boxes[:, 2:] <= [a.width, a.height])).all()
        assert (a.boxes[:, 2:] > a.boxes[:, :2]).all()
    image, _ = train[0]
    assert image.shape == (3, train.annotations[0].height, train.annotations[0].width)


# The fraction of its box each shape covers: pi/4; (1 - 0.3) pi/4; 1; 5/9; 1/2; and a star of
# radii 1 and 0.5, 10 triangles of area sin(36 deg)/4 in a 2 sin(72 deg) x (1 - cos(144 deg)) box.
SHAPE_FILL = {"circle": math.pi / 4, "ring": 0.7 * math.pi / 4, "square": 1.0, "cross": 5 / 9,
              "triangle": 0.5, "star": 10 * math.sin(math.radians(36)) / 4
              / (2 * math.sin(math.radians(72)) * (1 - math.cos(math.radians(144))))}


@pytest.mark.parametrize("label", range(1, len(SHAPE_NAMES) + 1))
def test_each_shape_fills_its_box_and_its_box_is_tight(label):
    image = np.zeros((3, 80, 100), dtype=np.float32)
    box = (20.3, 10.6, 80.2, 70.4)
    objects = _draw_objects(np.random.default_rng(0), image, [box], [label], 0.4)
    assert [o.name for o in objects] == [SHAPE_NAMES[label - 1]]
    painted = image.any(axis=0)
    rows, cols = np.flatnonzero(painted.any(axis=1)), np.flatnonzero(painted.any(axis=0))
    tight = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    np.testing.assert_array_equal(voc_to_internal(objects[0].box)[0], tight)
    np.testing.assert_allclose(tight, box, atol=2.0)
    fill = painted.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
    assert fill == pytest.approx(SHAPE_FILL[SHAPE_NAMES[label - 1]], abs=0.03)


def test_occluded_objects_are_boxed_by_their_visible_part_or_left_out():
    image = np.zeros((3, 60, 60), dtype=np.float32)
    square = SHAPE_NAMES.index("square") + 1
    boxes = [(0.0, 0.0, 40.0, 40.0), (20.0, 0.0, 60.0, 40.0), (21.0, 0.0, 59.0, 40.0)]
    objects = _draw_objects(np.random.default_rng(0), image, boxes, [square] * 3, 0.4)
    # The third square hides all but 2 of the second's 40 columns; the first keeps 21 of its 40.
    np.testing.assert_array_equal(voc_to_internal([o.box for o in objects]), [[0, 0, 21, 40], [21, 0, 59, 40]])


def test_render_image_is_a_pure_function_of_its_generator():
    config = SyntheticConfig()
    noise = _noise_tile(config)
    one, objects_one = render_image(np.random.default_rng(5), config, noise)
    two, objects_two = render_image(np.random.default_rng(5), config, noise)
    np.testing.assert_array_equal(one, two)
    assert objects_one == objects_two
    assert one.dtype == np.uint8 and 256 <= max(one.shape[:2]) <= 400


# ---------------------------------------------------------------- transform


def _item(height: int, width: int, boxes, labels=None, difficult=None, ignore=()):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels if labels is not None else [1] * len(boxes), dtype=torch.int64)
    image = torch.arange(3 * height * width, dtype=torch.int64).reshape(3, height, width).remainder(256).to(torch.uint8)
    return image, {
        "boxes": boxes, "labels": labels,
        "difficult": torch.tensor(difficult if difficult is not None else [False] * len(boxes), dtype=torch.bool),
        "ignore_boxes": torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        "ignore_labels": torch.ones(len(ignore), dtype=torch.int64),
        "image_id": "x", "orig_size": (height, width),
    }


@pytest.mark.parametrize(("height", "width", "expected"), [(300, 400, 2.0), (400, 300, 2.0),
                                                          (100, 400, 2.5), (600, 600, 1.0)])
def test_the_resize_sets_the_shorter_side_and_caps_the_longer(height, width, expected):
    image, target = _item(height, width, [[0, 0, 10, 10]])
    out, result = DetectionTransform(PreprocessConfig(min_size=600, max_size=1000))(image, target)
    assert result["scale"] == pytest.approx(expected)
    assert out.shape[-2:] == (round(height * expected), round(width * expected))


def test_transform_resizes_image_and_boxes_and_normalises():
    image, target = _item(30, 40, [[4, 6, 20, 30]], ignore=[[0, 0, 10, 10]])
    out, result = DetectionTransform(PreprocessConfig(min_size=60, max_size=100))(image, target)
    assert out.shape == (3, 60, 80) and out.dtype == torch.float32
    assert result["scale"] == 2.0 and result["flipped"] is False
    np.testing.assert_allclose(result["boxes"], [[8, 12, 40, 60]])
    np.testing.assert_allclose(result["ignore_boxes"], [[0, 0, 20, 20]])
    constant = torch.full((3, 30, 40), 255, dtype=torch.uint8)
    out, _ = DetectionTransform(
        PreprocessConfig(min_size=30, max_size=100, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))(constant, target)
    np.testing.assert_allclose(out[:, 0, 0], [2.0, 1.0, 0.5], rtol=1e-6)


def test_flip_mirrors_boxes_about_the_resized_width():
    image, target = _item(30, 40, [[4, 6, 20, 30], [0, 0, 40, 10]])
    preprocess = PreprocessConfig(min_size=30, max_size=100)
    plain, kept = DetectionTransform(preprocess)(image, target)
    flipped, moved = DetectionTransform(preprocess, flip_prob=1.0)(image, target)
    assert moved["flipped"] is True
    np.testing.assert_allclose(moved["boxes"], [[20, 6, 36, 30], [0, 0, 40, 10]])
    torch.testing.assert_close(flipped, plain.flip(-1))
    assert torch.equal(kept["labels"], moved["labels"])


def test_flips_follow_the_generator():
    image, target = _item(10, 10, [[1, 1, 5, 5]])

    def flips(seed):
        transform = DetectionTransform(PreprocessConfig(min_size=10), flip_prob=0.5,
                                       generator=torch.Generator().manual_seed(seed))
        return [transform(image, target)[1]["flipped"] for _ in range(40)]

    assert flips(1) == flips(1)
    assert 5 < sum(flips(1)) < 35 and flips(1) != flips(2)


def test_transform_clips_overhanging_boxes():
    image, target = _item(20, 20, [[-1, 0, 21, 20]])
    _, result = DetectionTransform(PreprocessConfig(min_size=20))(image, target)
    np.testing.assert_allclose(result["boxes"], [[0, 0, 20, 20]])


@pytest.mark.parametrize("preprocess", [PreprocessConfig(min_size=50, max_size=70),
                                        PreprocessConfig(min_size=41, max_size=90, resize_rounding="floor",
                                                         interpolation="bicubic", antialias=False)])
def test_the_transform_gives_the_models_own_input(preprocess):
    image, target = _item(30, 43, [[4, 6, 20, 30]])
    out, result = DetectionTransform(preprocess)(image, target)
    batch = preprocess_images([image.float() / 255], preprocess)
    height, width = (int(v) for v in batch.im_info[0, :2])
    assert out.shape == (3, height, width) and result["scale"] == pytest.approx(batch.im_info[0, 2].item())
    torch.testing.assert_close(out, batch.images[0, :, :height, :width], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- batching


def _transformed(height, width, boxes, scale=1.0, **kwargs):
    image, target = _item(height, width, boxes, **kwargs)
    return image.float(), {**target, "scale": scale}


def test_collate_pads_images_and_ground_truth():
    items = [_transformed(30, 50, [[1, 2, 3, 4]], labels=[2], scale=1.5),
             _transformed(40, 20, [[0, 0, 5, 5], [1, 1, 9, 9], [2, 2, 4, 4]], labels=[1, 3, 4],
                          ignore=[[0, 0, 8, 8]])]
    batch = collate(items, size_divisibility=32)
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.float32
    torch.testing.assert_close(batch.images[0, :, :30, :50], items[0][0])
    assert batch.images[0, :, 30:].abs().sum() == 0 and batch.images[0, :, :, 50:].abs().sum() == 0
    torch.testing.assert_close(batch.im_info, torch.tensor([[30, 50, 1.5], [40, 20, 1.0]]))
    assert batch.gt_boxes.shape == (2, 3, 5)
    torch.testing.assert_close(batch.gt_boxes[0], torch.tensor([[1, 2, 3, 4, 2.0], [0] * 5, [0] * 5]))
    torch.testing.assert_close(batch.gt_boxes[1, :, 4], torch.tensor([1.0, 3, 4]))
    assert batch.num_boxes.tolist() == [1, 3] and batch.num_boxes.dtype == torch.int64
    assert batch.ignore_boxes.shape == (2, 1, 4) and batch.num_ignore.tolist() == [0, 1]
    assert batch.image_ids == ("x", "x")
    assert batch.orig_sizes.tolist() == [[30, 50], [40, 20]]
    assert collate(items, size_divisibility=1).images.shape == (2, 3, 40, 50)


def test_collate_drops_difficult_objects_unless_kept_and_allows_no_objects():
    items = [_transformed(10, 10, [[0, 0, 5, 5], [1, 1, 6, 6]], labels=[1, 2], difficult=[True, False]),
             _transformed(10, 10, [])]
    assert collate(items).gt_boxes[0, :, 4].tolist() == [2.0]
    assert collate(items, keep_difficult=True).num_boxes.tolist() == [2, 0]
    empty = collate([_transformed(10, 10, [])])
    assert empty.gt_boxes.shape == (1, 0, 5) and empty.num_boxes.tolist() == [0]
    assert empty.ignore_boxes.shape == (1, 0, 4)


def test_aspect_ratio_batches_are_homogeneous_and_cover_every_index():
    ratios = np.array([1.5, 0.5, 0.7, 1.0, 2.0, 0.6, 1.2, 0.9, 1.1])
    sampler = AspectRatioBatchSampler(
        torch.utils.data.RandomSampler(range(9), generator=torch.Generator().manual_seed(0)), ratios, batch_size=2
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 + 2
    assert sorted(i for b in batches for i in b) == list(range(9))
    for batch in batches:
        assert len({bool(ratios[i] >= 1) for i in batch}) == 1
    dropping = AspectRatioBatchSampler(range(9), ratios, batch_size=2, drop_last=True)
    assert len(list(dropping)) == len(dropping) == 4


def test_loader_yields_batches_of_the_dataset(voc_devkit):
    dataset = load_voc(voc_devkit, "train")
    loader = build_loader(dataset, DetectionTransform(PreprocessConfig(min_size=64, max_size=128)), batch_size=2,
                          shuffle=False, num_workers=0)
    (batch,) = list(loader)
    assert batch.image_ids == ("000001", "000002")
    assert batch.num_boxes.tolist() == [1, 0]  # the difficult cat is left out
    np.testing.assert_allclose(batch.gt_boxes[0, 0], [0, 2, 40, 60, dataset.class_names.index("dog") + 1])
    assert batch.im_info[:, 2].tolist() == pytest.approx([2.0, 1.6])


def test_loader_with_workers_grouping_and_seed_is_repeatable(tmp_path):
    dataset = build_dataset(f"synthetic:{tmp_path / 'data'}", "train", synthetic=TINY)

    def epoch():
        loader = build_loader(dataset, DetectionTransform(PreprocessConfig(min_size=64, max_size=96), flip_prob=0.5),
                              batch_size=4, shuffle=True, num_workers=2, group_by_aspect_ratio=True, seed=3)
        return [(b.image_ids, b.gt_boxes) for b in loader]

    first, second = epoch(), epoch()
    assert [ids for ids, _ in first] == [ids for ids, _ in second]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert sorted(i for ids, _ in first for i in ids) == sorted(a.image_id for a in dataset.annotations)
