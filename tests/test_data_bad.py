"""Bad data in each layout: one line naming the file (and line) from 'frcnn train', exit status 1,
no traceback; data.on_bad=skip drops and counts; a corrupt image met in training stops the run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from frcnn.cli.main import main
from frcnn.data import DatasetError, ReadOptions, build_dataset
from frcnn.data.report import check_data
from test_data_formats import write_coco_layout, write_voc_layout, write_yolo_layout

TINY_MODEL = ["model.preprocess.min_size=64", "model.preprocess.max_size=96", "train.batch_size=2",
              "train.log_every=1", "train.checkpoint_every=1"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt_middle(path: Path) -> None:
    """Overwrite the middle third of a PNG: the header and the IEND chunk stay, decoding fails."""
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third:2 * third] = os.urandom(third)
    path.write_bytes(bytes(data))


def replace_in(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


# ---------------------------------------------------------------- VOC

def break_voc(root: Path, case: str) -> tuple[list[str], str]:
    """Break the VOC layout one way; (extra --set values, what stderr must name)."""
    xml, image = root / "Annotations" / "img_a.xml", root / "JPEGImages" / "img_a.jpg"
    if case == "malformed xml":
        xml.write_text("<annotation>\n<size><width>96</width>\n<object>")
        return [], "img_a.xml:3: malformed XML"
    if case == "missing coordinate":
        replace_in(xml, "<ymax>50</ymax>", "")
        return [], "img_a.xml: object 0 ('cross'): has no <bndbox/ymax>"
    if case == "coordinate not a number":
        replace_in(xml, "<ymax>50</ymax>", "<ymax>5O</ymax>")
        return [], "img_a.xml: object 0 ('cross'): <bndbox/ymax> is not a number: '5O'"
    if case == "non-finite coordinate":
        replace_in(xml, "<ymax>50</ymax>", "<ymax>nan</ymax>")
        return [], "img_a.xml: object 0 ('cross'): non-finite coordinate"
    if case == "degenerate box":
        replace_in(xml, "<xmax>40</xmax>", "<xmax>3</xmax>")
        return [], "img_a.xml: object 0 ('cross'): box (x1, y1, x2, y2) = (4, 6, 3, 50) has x2 <= x1"
    if case == "box outside the image":
        replace_in(xml, "<xmax>40</xmax>", "<xmax>140</xmax>")
        return [], "img_a.xml: object 0 ('cross'): box (x1, y1, x2, y2) = (4, 6, 140, 50) lies outside"
    if case == "unknown class":
        return ["data.class_names=[bolt,cross,screw,washer]"], "img_a.xml: object 1: unknown class 'nut'"
    if case == "missing image":
        image.unlink()
        return [], "img_a.jpg: image file is missing"
    if case == "not an image":
        image.write_text("GIF? no, a text file")
        return [], "img_a.jpg: not an image PIL can read"
    if case == "truncated image":
        truncate(image)
        return [], "img_a.jpg: JPEG image is truncated"
    if case == "size differs from the xml":
        replace_in(xml, "<width>96</width>", "<width>97</width>")
        return [], "img_a.xml: says the image is 97x64 (width x height) but"
    if case == "empty split":
        (root / "ImageSets" / "Main" / "train.txt").write_text("\n")
        return [], "train.txt: split 'train' is empty"
    if case == "missing split":
        return [
            "data.train_split=default"
        ], "default.txt: no split 'default': the split file is missing; this folder has train, val"
    raise AssertionError(case)


VOC_CASES = ["malformed xml", "missing coordinate", "coordinate not a number", "non-finite coordinate",
             "degenerate box", "box outside the image", "unknown class", "missing image", "not an image",
             "truncated image", "size differs from the xml", "empty split", "missing split"]


# ---------------------------------------------------------------- COCO

def break_coco(root: Path, case: str) -> tuple[list[str], str]:
    path = root / "instances_train.json"
    content = json.loads(path.read_text())
    annotation, image = content["annotations"][0], root / "images" / "img_a.jpg"
    if case == "malformed json":
        path.write_text('{"images": [\n{"id": 1,\n "file_name": }]}')
        return [], "instances_train.json:3: malformed JSON"
    if case == "missing bbox":
        del annotation["bbox"]
    elif case == "bbox not numbers":
        annotation["bbox"] = [4, 6, "wide", 44]
    elif case == "non-finite bbox":
        annotation["bbox"] = [4, 6, float("inf"), 44]
    elif case == "degenerate box":
        annotation["bbox"] = [4, 6, 0, 44]
    elif case == "box outside the image":
        annotation["bbox"] = [4, 6, 136, 44]
    elif case == "unknown image id":
        annotation["image_id"] = 77
    elif case == "unknown category id":
        annotation["category_id"] = 9
    elif case == "duplicate image ids":
        content["images"][1]["id"] = 1
    elif case == "unknown class":
        path.write_text(json.dumps(content))
        return ["data.class_names=[bolt,nut,screw,washer]"], "instances_train.json: annotation 1: class 'cross'"
    elif case in ("missing image", "not an image", "truncated image"):
        if case == "missing image":
            image.unlink()
        elif case == "not an image":
            image.write_bytes(b"\x00" * 100)
        else:
            truncate(image)
        return [], {"missing image": "img_a.jpg: image file is missing", "not an image": "img_a.jpg: not an image",
                    "truncated image": "img_a.jpg: JPEG image is truncated"}[case]
    elif case == "empty split":
        content["images"] = []
    else:
        raise AssertionError(case)
    path.write_text(json.dumps(content))
    return [], {
        "missing bbox": "instances_train.json: annotation 1: bad or missing field 'bbox'",
        "bbox not numbers": "instances_train.json: annotation 1: bad or missing field",
        "non-finite bbox": "instances_train.json: annotation 1 of image 'img_a.jpg': non-finite coordinate",
        "degenerate box": "annotation 1 of image 'img_a.jpg': box (x1, y1, x2, y2) = (4, 6, 4, 50) has x2 <= x1",
        "box outside the image": (
            "annotation 1 of image 'img_a.jpg': box (x1, y1, x2, y2) = (4, 6, 140, 50) lies outside"
        ),
        "unknown image id": "instances_train.json: annotation 1: image_id 77 is not an image of the file",
        "unknown category id": "instances_train.json: annotation 1: category_id 9 is not a category of the file",
        "duplicate image ids": "instances_train.json: image #1: image id 1 is not a unique integer",
        "empty split": "instances_train.json: has no images",
    }[case]


COCO_CASES = ["malformed json", "missing bbox", "bbox not numbers", "non-finite bbox", "degenerate box",
              "box outside the image", "unknown image id", "unknown category id", "duplicate image ids",
              "unknown class", "missing image", "not an image", "truncated image", "empty split"]


# ---------------------------------------------------------------- YOLO

def break_yolo(root: Path, case: str) -> tuple[list[str], str]:
    labels, image = root / "labels" / "train" / "img_a.txt", root / "images" / "train" / "img_a.jpg"
    first = labels.read_text().splitlines()[0]

    def line2(text: str) -> None:
        lines = labels.read_text().splitlines()
        labels.write_text("\n".join([lines[0], text] + lines[2:]) + "\n")

    if case == "malformed yaml":
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [a, b\nval: x\n")
        return [], "data.yaml:4: malformed YAML"
    if case == "wrong number of fields":
        line2("2 0.5 0.5 0.1")
        return [], "img_a.txt:2: 4 fields, expected 5"
    if case == "not a number":
        line2("2 0.5 0.5 O.1 0.1")
        return [], "img_a.txt:2: not a number in '2 0.5 0.5 O.1 0.1'"
    if case == "class index out of range":
        line2("5 0.5 0.5 0.1 0.1")
        return [], "img_a.txt:2: class index 5 is not one of 0..4"
    if case == "non-finite value":
        line2("2 0.5 nan 0.1 0.1")
        return [], "img_a.txt:2: non-finite value"
    if case == "degenerate box":
        line2("2 0.5 0.5 0 0.1")
        return [], "img_a.txt:2: box with width 0 and height 0.1 has x2 <= x1"
    if case == "outside [0, 1]":
        line2("2 0.98 0.5 0.1 0.1")
        return [], "img_a.txt:2: box corners [0.93, 0.45, 1.03, 0.55] (normalised x1, y1, x2, y2) leave [0, 1]"
    if case == "unknown class":
        return [
            "data.class_names=[bolt,cross,screw,washer]"
        ], "img_a.txt:2: class 'nut' (index 2) is not one of data.class_names"
    if case == "missing image":
        (root / "train.txt").write_text("images/train/img_b.jpg\nimages/train/nothere.jpg\n")
        replace_in(root / "data.yaml", "train: images/train", "train: train.txt")
        return [], "nothere.jpg: image file is missing"
    if case == "not an image":
        image.write_bytes(b"\xff\xd8 not really")
        return [], "img_a.jpg: not an image"
    if case == "truncated image":
        truncate(image)
        return [], "img_a.jpg: JPEG image is truncated"
    if case == "empty split":
        for path in (root / "images" / "train").iterdir():
            path.unlink()
        return [], "data.yaml: split 'train' has no images"
    assert first
    raise AssertionError(case)


YOLO_CASES = ["malformed yaml", "wrong number of fields", "not a number", "class index out of range",
              "non-finite value", "degenerate box", "outside [0, 1]", "unknown class", "missing image",
              "not an image", "truncated image", "empty split"]

LAYOUTS = {"voc": (write_voc_layout, break_voc, lambda root: f"voc:{root}"),
           "coco": (write_coco_layout, break_coco,
                    lambda root: f"coco:{root / 'instances_train.json'}:{root / 'images'}"),
           "yolo": (write_yolo_layout, break_yolo, lambda root: f"yolo:{root / 'data.yaml'}")}
CASES = ([("voc", case) for case in VOC_CASES] + [("coco", case) for case in COCO_CASES]
         + [("yolo", case) for case in YOLO_CASES])


@pytest.mark.parametrize("kind, case", CASES)
def test_bad_data_stops_frcnn_train_with_one_line_naming_the_file(tmp_path, capsys, kind, case):
    write, breaks, spec = LAYOUTS[kind]
    root = write(tmp_path / kind)
    settings, named = breaks(root, case)
    status = main(["train", "--data", spec(root), "--out", str(tmp_path / "run"), "--no-eval",
                   "--set", *TINY_MODEL, "train.max_iters=1", *settings])
    stderr = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "error" in line]
    assert line.startswith("frcnn train: error: ") and named in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


SKIPPABLE = [
    ("voc", "degenerate box", 0, 1),
    ("voc", "not an image", 1, 0),
    ("voc", "malformed xml", 1, 0),
    ("coco", "unknown image id", 0, 1),
    ("coco", "duplicate image ids", 1, 2),  # its two annotations point nowhere now
    ("yolo", "outside [0, 1]", 0, 1),
    ("yolo", "wrong number of fields", 0, 1),
    ("yolo", "truncated image", 1, 0),
]


@pytest.mark.parametrize("kind, case, images, objects", SKIPPABLE)
def test_on_bad_skip_drops_warns_and_counts(tmp_path, kind, case, images, objects):
    write, breaks, spec = LAYOUTS[kind]
    root = write(tmp_path / kind)
    breaks(root, case)
    with pytest.warns(UserWarning, match="dropped"):
        dataset = build_dataset(spec(root), "train", ReadOptions(on_bad="skip"))
    dropped = [p.dropped for p in dataset.problems]
    assert (dropped.count("image"), dropped.count("object")) == (images, objects)
    assert len(dataset) == 4 - images
    report = check_data(spec(root), "train")
    assert report.dropped == {"image": images, "object": objects, "class": 0}
    assert report.num_images == 4 - images


def test_frcnn_data_lists_every_problem_and_exits_1_when_training_would_stop(tmp_path, capsys):
    root = write_yolo_layout(tmp_path / "yolo")
    labels = root / "labels" / "train"
    (labels / "img_a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    (labels / "img_b.txt").write_text("1 0.5 0.5 0.2\n")
    status = main(["data", f"yolo:{root / 'data.yaml'}", "--out", str(tmp_path / "report"), "--json"])
    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.err
    assert "frcnn data: error: 2 problems would stop training" in captured.err
    report = json.loads(captured.out)
    assert [(Path(p["file"]).name, p["line"], p["dropped"]) for p in report["problems"] if p["dropped"]] == [
        ("img_a.txt", 3, "object"), ("img_b.txt", 1, "object")]
    assert report["duplicate_boxes"] == 1 and report["images"] == 4 and report["objects"] == 4
    assert (tmp_path / "report" / "labels.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["data", f"yolo:{root / 'data.yaml'}", "--out", str(tmp_path / "report"),
                 "--set", "data.on_bad=skip"]) == 0


def _corrupt_voc(tmp_path: Path) -> Path:
    """A VOC layout whose img_b is a PNG that passes the header check but cannot be decoded."""
    root = write_voc_layout(tmp_path / "voc")
    jpg = root / "JPEGImages" / "img_b.jpg"
    Image.open(jpg).save(root / "JPEGImages" / "img_b.png")
    jpg.unlink()
    corrupt_middle(root / "JPEGImages" / "img_b.png")
    return root


def test_a_corrupt_image_met_when_reading_raises_a_dataset_error_naming_it(tmp_path):
    dataset = build_dataset(f"voc:{_corrupt_voc(tmp_path)}", "train")
    dataset[0]
    with pytest.raises(DatasetError, match=r"img_b\.png: cannot read the image"):
        dataset[1]
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, sampler=[1])
    with pytest.raises(DatasetError) as raised:  # re-raised from the worker, still one line
        next(iter(loader))
    assert str(raised.value).startswith(str(dataset.annotations[1].image_path)) and "\n" not in str(raised.value)


def test_a_corrupt_image_met_in_training_stops_the_run_naming_it(tmp_path, capsys):
    root = _corrupt_voc(tmp_path)
    status = main(["train", "--data", f"voc:{root}", "--out", str(tmp_path / "run"), "--no-eval",
                   "--set", *TINY_MODEL, "train.max_iters=4", "train.batch_size=1"])
    stderr = capsys.readouterr().err
    assert status == 1 and "Traceback" not in stderr
    assert f"frcnn train: error: {root / 'JPEGImages' / 'img_b.png'}: cannot read the image" in stderr
