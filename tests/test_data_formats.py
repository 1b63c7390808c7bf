"""One small dataset written in the VOC, COCO and YOLO layouts reads the same in each; class
names come from the data or data.class_names; image modes decode to RGB."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn.config import DataConfig
from frcnn.data import DatasetError, ReadOptions, build_dataset, image_annotation, load_voc, open_dataset
from frcnn.data.images import read_rgb
from frcnn.data.yolo import label_path
from frcnn.evaluation import evaluate_detections

CLASSES = ("bolt", "cross", "nut", "screw", "washer")  # sorted, as read from the data
# split -> stem -> (width, height, objects (class, internal corners x1, y1, x2, y2)); no area is
# on a COCO size limit (32², 96²), where YOLO's rounding could move a box across.
SMALL_SET = {
    "train": {
        "img_a": (96, 64, [("cross", (4, 6, 40, 50)), ("nut", (50, 10, 90, 30)), ("washer", (60, 35, 95, 63))]),
        "img_b": (64, 96, [("bolt", (0, 0, 30, 40)), ("screw", (10, 50, 60, 95))]),
        "img_c": (80, 80, []),
        "img_d": (90, 70, [("cross", (20, 20, 45, 60)), ("cross", (50, 5, 85, 45))]),
    },
    "val": {
        "img_e": (96, 72, [("nut", (8, 8, 41, 40)), ("bolt", (50, 30, 90, 70)), ("washer", (2, 45, 30, 70))]),
        "img_f": (72, 96, [("screw", (5, 10, 65, 50)), ("cross", (20, 55, 50, 90))]),
    },
}


def draw(path: Path, width: int, height: int, objects, seed: int) -> None:
    """A noisy image with each object a filled rectangle of its class's colour."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for name, (x1, y1, x2, y2) in objects:
        pixels[y1:y2, x1:x2] = [(40 + 50 * CLASSES.index(name)) % 256, 200, 255 - 40 * CLASSES.index(name)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_voc_layout(root: Path, data: dict = SMALL_SET) -> Path:
    """Annotations/*.xml (1-based inclusive boxes), JPEGImages/*.jpg, ImageSets/Main/<split>.txt."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, images in data.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in images))
        for stem, (width, height, objects) in images.items():
            draw(root / "JPEGImages" / f"{stem}.jpg", width, height, objects, seed)
            seed += 1
            parts = [f"<annotation><folder>JPEGImages</folder><filename>{stem}.jpg</filename>"
                     f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
            parts += [f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin>"
                      f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                      for name, (x1, y1, x2, y2) in objects]
            (root / "Annotations" / f"{stem}.xml").write_text("\n".join(parts + ["</annotation>"]))
    return root


def write_coco_layout(root: Path, data: dict = SMALL_SET) -> Path:
    """images/*.jpg and instances_<split>.json, category ids 1..C in CLASSES order."""
    seed = 0
    for split, images in data.items():
        content = {"images": [], "annotations": [],
                   "categories": [{"id": n, "name": name} for n, name in enumerate(CLASSES, start=1)]}
        for image_id, (stem, (width, height, objects)) in enumerate(images.items(), start=1):
            draw(root / "images" / f"{stem}.jpg", width, height, objects, seed)
            seed += 1
            content["images"].append({"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height})
            content["annotations"] += [
                {"id": len(content["annotations"]) + 1 + k, "image_id": image_id,
                 "category_id": CLASSES.index(name) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0,
                 "area": (x2 - x1) * (y2 - y1)} for k, (name, (x1, y1, x2, y2)) in enumerate(objects)]
        (root / f"instances_{split}.json").write_text(json.dumps(content))
    return root


def write_yolo_layout(root: Path, data: dict = SMALL_SET, names=CLASSES) -> Path:
    """images/<split>/*.jpg, labels/<split>/*.txt (6 decimals) and data.yaml with a names mapping."""
    seed = 0
    for split, images in data.items():
        for stem, (width, height, objects) in images.items():
            image = root / "images" / split / f"{stem}.jpg"
            draw(image, width, height, objects, seed)
            seed += 1
            lines = [f"{names.index(name)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}" for name, (x1, y1, x2, y2) in objects]
            label_path(image).parent.mkdir(parents=True, exist_ok=True)
            label_path(image).write_text("".join(f"{line}\n" for line in lines))
    names_yaml = "".join(f"  {n}: {name}\n" for n, name in enumerate(names))
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names_yaml}")
    return root


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {"voc": write_voc_layout(root / "voc"), "coco": write_coco_layout(root / "coco"),
            "yolo": write_yolo_layout(root / "yolo")}


def specs(layouts: dict[str, Path], split: str) -> dict[str, str]:
    coco = layouts["coco"]
    return {"voc": f"voc:{layouts['voc']}", "coco": f"coco:{coco / f'instances_{split}.json'}:{coco / 'images'}",
            "yolo": f"yolo:{layouts['yolo'] / 'data.yaml'}"}


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_three_layouts_read_to_the_same_boxes_and_classes(layouts, split):
    datasets = {kind: build_dataset(spec, split) for kind, spec in specs(layouts, split).items()}
    expected = SMALL_SET[split]
    for kind, dataset in datasets.items():
        assert dataset.class_names == CLASSES, kind
        assert len(dataset) == len(expected), kind
        for annotation, (stem, (width, height, objects)) in zip(dataset.annotations, expected.items()):
            assert annotation.image_path.stem == stem and (annotation.width, annotation.height) == (width, height)
            assert annotation.labels.tolist() == [CLASSES.index(name) + 1 for name, _ in objects], kind
            # YOLO writes 6 decimals of the normalised coordinates: 0.5e-6 * 96 px at most.
            np.testing.assert_allclose(annotation.boxes, np.array([b for _, b in objects]).reshape(-1, 4),
                                       atol=1e-4 if kind == "yolo" else 0, err_msg=kind)


def _fixed_detections(dataset) -> list[dict[str, np.ndarray]]:
    """Per image: each object found (shifted a little, score by position), one false positive of
    every class and a wrong-class copy of each object."""
    rng = np.random.default_rng(0)
    detections = []
    for annotation in dataset.annotations:
        boxes = [annotation.boxes + rng.uniform(-3, 3, annotation.boxes.shape),
                 np.column_stack([annotation.boxes[:, :2], annotation.boxes[:, 2:] + 4])]
        labels = [annotation.labels, annotation.labels % len(CLASSES) + 1]
        false = np.column_stack([rng.uniform(0, 30, (5, 2)), rng.uniform(35, 60, (5, 2))])
        detections.append({"boxes": np.concatenate(boxes + [false]),
                           "labels": np.concatenate(labels + [np.arange(1, 6)]),
                           "scores": rng.uniform(0.05, 1, 2 * annotation.num_objects + 5)})
    return detections


def test_fixed_detections_score_the_same_on_every_layout(layouts):
    datasets = {kind: build_dataset(spec, "val") for kind, spec in specs(layouts, "val").items()}
    detections = _fixed_detections(datasets["voc"])
    metrics = {kind: evaluate_detections(dataset, detections) for kind, dataset in datasets.items()}
    assert 0.1 < metrics["voc"]["voc07_map"] < 1 and 0.05 < metrics["voc"]["coco_ap"] < 1
    for kind in ("coco", "yolo"):
        assert set(metrics[kind]) == set(metrics["voc"])
        for key, value in metrics["voc"].items():
            assert metrics[kind][key] == pytest.approx(value, abs=1e-3, nan_ok=True), (kind, key)


def test_class_names_fix_the_order_and_unknown_classes_are_an_error_or_skipped(layouts, tmp_path):
    order = ("washer", "nut", "cross", "bolt", "screw")
    for kind, spec in specs(layouts, "train").items():
        dataset = build_dataset(spec, "train", ReadOptions(class_names=order))
        assert dataset.class_names == order
        assert [order[label - 1] for label in dataset.annotations[0].labels] == ["cross", "nut", "washer"], kind
        with pytest.raises(DatasetError, match="nut|washer|bolt|screw") as raised:
            build_dataset(spec, "train", ReadOptions(class_names=("cross",)))
        assert ("img_a" in str(raised.value) or "instances_train.json" in str(raised.value)), kind
        with warnings.catch_warnings(record=True):
            skipped = build_dataset(spec, "train", ReadOptions(class_names=("cross",), unknown_classes="skip"))
        assert [a.labels.tolist() for a in skipped.annotations] == [[1], [], [], [1, 1]], kind
        assert sum(p.dropped == "class" for p in skipped.problems) == 4, kind


def test_class_names_may_come_from_a_text_file_and_yolo_folders_need_names(layouts, tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("screw\nbolt\n\ncross\nnut\nwasher\n")
    data = DataConfig(train=f"voc:{layouts['voc']}", class_names=str(names_file))
    assert open_dataset(data, "train").class_names == ("screw", "bolt", "cross", "nut", "washer")
    bare = write_yolo_layout(tmp_path / "bare")
    (bare / "data.yaml").unlink()
    with pytest.raises(DatasetError, match="neither data.yaml nor classes.txt"):
        build_dataset(f"yolo:{bare}", "train")
    (bare / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    assert build_dataset(f"yolo:{bare}", "val").annotations[0].labels.tolist() == [3, 1, 5]


def test_yolo_data_yaml_forms_lists_nc_and_a_relative_root(tmp_path):
    root = write_yolo_layout(tmp_path / "set")
    (root / "lists").mkdir()
    (root / "lists" / "val.txt").write_text("../images/val/img_f.jpg\n")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "set.yaml").write_text(
        "path: ../set\ntrain: [images/train, lists/val.txt]\nval: lists/val.txt\nnc: 5\n"
        f"names: {list(CLASSES)}\n")
    train = build_dataset(f"yolo:{tmp_path / 'cfg' / 'set.yaml'}", "train")
    assert [a.image_id for a in train.annotations] == ["img_a", "img_b", "img_c", "img_d", "img_f"]
    assert len(build_dataset(f"yolo:{tmp_path / 'cfg' / 'set.yaml'}", "val")) == 1


def test_voc_images_may_have_other_suffixes_and_the_xml_size_may_be_absent(tmp_path):
    root = write_voc_layout(tmp_path / "voc", {"train": SMALL_SET["train"]})
    Image.open(root / "JPEGImages" / "img_a.jpg").save(root / "JPEGImages" / "img_a.png")
    (root / "JPEGImages" / "img_a.jpg").unlink()
    xml = root / "Annotations" / "img_a.xml"
    xml.write_text(xml.read_text().replace("<width>96</width><height>64</height>", ""))
    annotation = load_voc(root, "train").annotations[0]
    assert annotation.image_path.name == "img_a.png" and (annotation.width, annotation.height) == (96, 64)


def _mode_images(folder: Path) -> dict[str, Path]:
    """The same 12x8 picture in several modes and formats."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = np.tile(np.arange(0, 240, 20, dtype=np.uint8), (8, 1))
    rgb = Image.fromarray(np.stack([grey] * 3, axis=2))
    paths = {}
    for name, image, suffix in [
        ("grey", Image.fromarray(grey), "png"),
        ("palette", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "png"),
        ("rgba", rgb.convert("RGBA"), "png"),
        ("grey16", Image.fromarray(grey.astype(np.uint16) * 257), "png"),
        ("cmyk", rgb.convert("CMYK"), "jpg"),
        ("la", Image.fromarray(grey).convert("LA"), "png"),
    ]:
        paths[name] = folder / f"{name}.{suffix}"
        image.save(paths[name])
    return paths


@pytest.mark.parametrize("mode", ["grey", "palette", "rgba", "grey16", "cmyk", "la"])
def test_image_modes_decode_to_rgb(tmp_path, mode):
    path = _mode_images(tmp_path)[mode]
    pixels = read_rgb(path)
    assert pixels.shape == (8, 12, 3) and pixels.dtype == np.uint8
    expected = np.tile(np.arange(0, 240, 20), (8, 1))
    tolerance = 12 if mode == "cmyk" else 1  # JPEG
    assert np.abs(pixels.astype(int) - expected[:, :, None]).max() <= tolerance
    annotation = image_annotation(path, 0)
    assert (annotation.width, annotation.height) == (12, 8)
