"""Fuzzing the dataset readers (hypothesis): a small valid dataset in each layout (VOC, YOLO,
COCO) has one file mutated (truncated, deleted, a byte flipped, a number changed, two fields
swapped) and is read. The outcome is either a clean read whose boxes are the ones the mutated files
say (read again here by a plain parser of each format), or one DatasetError line naming a file
of the dataset: never another exception, and never boxes that the files do not say.

The unmutated dataset reads as EXPECTED; for each layout, ``frcnn data`` and a one-iteration
``frcnn train`` run on a readable mutation and stop in one line on a file cut short.
``FRCNN_FUZZ_EXAMPLES`` sets the number of examples (default 300, derandomised so that ``make
test`` is repeatable; any other value draws afresh).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from frcnn.data import DatasetError, build_dataset

DEFAULT_EXAMPLES = 300
EXAMPLES = int(os.environ.get("FRCNN_FUZZ_EXAMPLES", DEFAULT_EXAMPLES))
CLASSES = ("cat", "dog")
# stem -> (width, height, objects (class, internal corners x1, y1, x2, y2))
EXPECTED = {
    "img_a": (48, 32, [("cat", (4.0, 6.0, 20.0, 30.0)), ("dog", (24.0, 2.0, 44.0, 18.0))]),
    "img_b": (40, 40, [("dog", (0.0, 0.0, 16.0, 24.0))]),
}
FORMATS = ("voc", "yolo", "coco")
# Boxes read and boxes said agree this closely (pixels; YOLO's normalised numbers are written to 6 places).
TOLERANCE = 1e-3


def _picture(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(path)


def write_voc(root: Path) -> str:
    """A VOC year folder (1-based inclusive boxes); its spec."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{stem}\n" for stem in EXPECTED))
    for stem, (width, height, objects) in EXPECTED.items():
        _picture(root / "JPEGImages" / f"{stem}.png", width, height)
        boxes = "".join(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1 + 1:g}</xmin>"
                        f"<ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>\n"
                        for name, (x1, y1, x2, y2) in objects)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename>\n<size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>\n{boxes}</annotation>\n")
    return f"voc:{root}"


def write_yolo(root: Path) -> str:
    """A YOLO folder (images/train, labels/train, classes.txt); its spec."""
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    for stem, (width, height, objects) in EXPECTED.items():
        _picture(root / "images" / "train" / f"{stem}.png", width, height)
        lines = [f"{CLASSES.index(name)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                 f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n" for name, (x1, y1, x2, y2) in objects]
        (root / "labels" / "train" / f"{stem}.txt").write_text("".join(lines))
    return f"yolo:{root}"


def write_coco(root: Path) -> str:
    """instances.json and images/; its spec."""
    content = {"images": [], "annotations": [],
               "categories": [{"id": n, "name": name} for n, name in enumerate(CLASSES, start=1)]}
    for image_id, (stem, (width, height, objects)) in enumerate(EXPECTED.items(), start=1):
        _picture(root / "images" / f"{stem}.png", width, height)
        content["images"].append({"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height})
        for name, (x1, y1, x2, y2) in objects:
            content["annotations"].append({"id": len(content["annotations"]) + 1, "image_id": image_id,
                                           "category_id": CLASSES.index(name) + 1, "iscrowd": 0,
                                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    (root / "instances.json").write_text(json.dumps(content, indent=1))
    return f"coco:{root / 'instances.json'}:{root / 'images'}"


WRITERS = {"voc": write_voc, "yolo": write_yolo, "coco": write_coco}


# ---------------------------------------------------------------- the boxes the files say


def _said_voc(root: Path) -> dict[str, list]:
    stems = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    said = {}
    for stem in stems:
        tree = ET.parse(root / "Annotations" / f"{stem}.xml").getroot()
        said[stem] = [(o.findtext("name").strip(), tuple(float(o.find("bndbox").findtext(k)) - (k[1:] == "min")
                                                         for k in ("xmin", "ymin", "xmax", "ymax")))
                      for o in tree.iter("object")]
    return said


def _said_yolo(root: Path) -> dict[str, list]:
    classes = (root / "classes.txt").read_text().split()
    said = {}
    for image in (root / "images" / "train").iterdir():
        with Image.open(image) as picture:
            width, height = picture.size
        labels = root / "labels" / "train" / f"{image.stem}.txt"
        lines = labels.read_text().splitlines() if labels.exists() else []
        said[image.stem] = []
        for line in filter(str.strip, lines):
            index, cx, cy, w, h = line.split()
            assert float(index) == int(index) >= 0
            x1, y1, x2, y2 = np.clip([float(cx) - float(w) / 2, float(cy) - float(h) / 2,
                                      float(cx) + float(w) / 2, float(cy) + float(h) / 2], 0.0, 1.0)
            said[image.stem].append((classes[int(index)], (x1 * width, y1 * height, x2 * width, y2 * height)))
    return said


def _said_coco(root: Path) -> dict[str, list]:
    content = json.loads((root / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in content["categories"]}
    stems = {image["id"]: Path(image["file_name"]).stem for image in content["images"]}
    said = {stem: [] for stem in stems.values()}
    for item in content["annotations"]:
        x, y, w, h = (float(v) for v in item["bbox"])
        said[stems[item["image_id"]]].append((names[item["category_id"]], (x, y, x + w, y + h)))
    return said


SAID = {"voc": _said_voc, "yolo": _said_yolo, "coco": _said_coco}


def _read_boxes(spec: str) -> dict[str, list]:
    """stem -> [(class name, box)] as frcnn reads the dataset (objects and crowd regions), every
    image decoded."""
    dataset = build_dataset(spec, "train")
    read = {}
    for index, annotation in enumerate(dataset.annotations):
        image, _ = dataset[index]
        assert image.shape[1:] == (annotation.height, annotation.width)
        boxes = np.concatenate([annotation.boxes, annotation.ignore_boxes])
        labels = np.concatenate([annotation.labels, annotation.ignore_labels])
        read[Path(annotation.image_path).stem] = [(dataset.class_names[label - 1], tuple(box))
                                                  for box, label in zip(boxes.tolist(), labels.tolist())]
    return read


def _same_boxes(read: dict[str, list], said: dict[str, list], tolerance: float = TOLERANCE) -> bool:
    """The same images, each with the same class names and boxes within ``tolerance``."""
    if sorted(read) != sorted(said):
        return False
    for stem in read:
        a, b = sorted(read[stem]), sorted(said[stem])
        if [name for name, _ in a] != [name for name, _ in b]:
            return False
        if a and not np.allclose([box for _, box in a], [box for _, box in b], atol=tolerance):
            return False
    return True


@pytest.mark.parametrize("layout", FORMATS)
def test_the_unmutated_dataset_reads_as_expected(tmp_path: Path, layout: str) -> None:
    spec = WRITERS[layout](tmp_path / layout)
    expected = {stem: objects for stem, (_, _, objects) in EXPECTED.items()}
    assert _same_boxes(_read_boxes(spec), expected)
    assert _same_boxes(SAID[layout](tmp_path / layout), expected)
    assert not _same_boxes(SAID[layout](tmp_path / layout), {**expected, "img_b": [("dog", (0.0, 0.0, 16.0, 25.0))]})


# ---------------------------------------------------------------- mutations

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e-?\d+)?")
_FIELD = re.compile(rb"[^\s,:<>\"\[\]{}/]+")
_NUMBERS = st.one_of(st.integers(-100, 10_000).map(lambda n: str(n).encode()),
                     st.floats(-2.0, 200.0, allow_nan=False).map(lambda x: repr(x).encode()),
                     st.sampled_from([b"", b"nan", b"inf", b"-0", b"1e30", b"0.5", b"0x10", b"1,5", b"\xc3\xa9"]))


@st.composite
def mutations(draw):
    """(layout, which file (an index into the sorted files), what to do, its arguments)."""
    layout = draw(st.sampled_from(FORMATS))
    kind = draw(st.sampled_from(("truncate", "delete", "flip", "number", "number", "swap", "swap")))
    return (layout, draw(st.integers(0, 1000)), kind, draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000)),
            draw(_NUMBERS), draw(st.integers(1, 255)))


def _mutate(path: Path, kind: str, first: int, second: int, number: bytes, xor: int) -> None:
    data = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        path.write_bytes(data[:first % max(len(data), 1)])
    elif kind == "flip" and data:
        at = first % len(data)
        path.write_bytes(data[:at] + bytes([data[at] ^ xor]) + data[at + 1:])
    elif kind in ("number", "swap"):
        spans = [m.span() for m in (_NUMBER if kind == "number" else _FIELD).finditer(data)]
        if not spans:
            return
        a = spans[first % len(spans)]
        if kind == "number":
            path.write_bytes(data[:a[0]] + number + data[a[1]:])
            return
        b = spans[second % len(spans)]
        a, b = sorted((a, b))
        if a != b:
            path.write_bytes(data[:a[0]] + data[b[0]:b[1]] + data[a[1]:b[0]] + data[a[0]:a[1]] + data[b[1]:])


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == DEFAULT_EXAMPLES,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_a_mutated_dataset_reads_as_it_says_or_is_one_line_naming_a_file(mutation) -> None:
    layout, which, kind, first, second, number, xor = mutation
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / layout
        spec = WRITERS[layout](root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        # Annotations twice as often as pictures: they hold the boxes.
        texts = [p for p in files if p.suffix != ".png"]
        target = (texts + files)[which % (len(texts) + len(files))]
        _mutate(target, kind, first, second, number, xor)
        try:
            read = _read_boxes(spec)
        except DatasetError as error:
            message = str(error)
            assert "\n" not in message and message.strip() == message and message, message
            assert str(root) in message, f"{kind} {target.name}: {message}"
            event("one line naming a file")
            return
        try:
            said = SAID[layout](root)
        except Exception:  # the plain parser is stricter than the reader: no reference to compare with
            event("read; the plain parser refuses the files")
            return
        event("read; boxes compared")
        assert _same_boxes(read, said), f"{kind} {target.relative_to(root)}: read {read}, the files say {said}"


# ---------------------------------------------------------------- through the command line

_TINY_RUN = ["--set", "model.preprocess.min_size=32", "model.preprocess.max_size=64", "train.batch_size=2",
             "train.max_iters=1", "train.warmup_iters=1", "train.log_every=1"]
# One mutation per layout that leaves a readable dataset (a box edge moved by a pixel or so) and one
# that does not (the annotation file cut short).
_READABLE = {"voc": ("Annotations/img_a.xml", b"<xmax>20</xmax>", b"<xmax>21</xmax>"),
             "yolo": ("labels/train/img_b.txt", b"1 0.200000 ", b"1 0.210000 "),
             "coco": ("instances.json", b"0.0,\n    0.0,\n    16.0", b"1.0,\n    0.0,\n    16.0")}
_CUT = {"voc": "Annotations/img_b.xml", "yolo": "classes.txt", "coco": "instances.json"}


@pytest.mark.parametrize("layout", FORMATS)
def test_frcnn_data_and_train_run_on_a_readable_mutation_and_stop_in_one_line_on_a_cut_file(
        tmp_path: Path, layout: str, capsys) -> None:
    from frcnn.cli.main import main

    root = tmp_path / layout
    spec = WRITERS[layout](root)
    name, old, new = _READABLE[layout]
    text = (root / name).read_bytes()
    assert text.count(old) == 1
    (root / name).write_bytes(text.replace(old, new))
    assert _same_boxes(_read_boxes(spec), SAID[layout](root))
    assert not _same_boxes(_read_boxes(spec), {stem: objects for stem, (_, _, objects) in EXPECTED.items()})
    assert main(["data", spec, "--out", str(tmp_path / "report")]) == 0
    assert main(["train", "--data", spec, "--out", str(tmp_path / "run"), "--no-eval", *_TINY_RUN]) == 0
    assert (tmp_path / "run" / "model_final.pt").is_file()
    capsys.readouterr()

    cut = root / _CUT[layout]
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    for command in (["data", spec, "--out", str(tmp_path / "report")],
                    ["train", "--data", spec, "--out", str(tmp_path / "run2"), "--no-eval", *_TINY_RUN]):
        assert main(command) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        # frcnn data may write its report first, then say that training would stop, naming the file.
        assert all(line.startswith("wrote ") for line in lines[:-1]) and (command[0] == "data" or len(lines) == 1)
        assert lines[-1].startswith(f"frcnn {command[0]}: error: ") and str(root) in lines[-1], lines
