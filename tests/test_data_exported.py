"""Data as cameras, editors and labelling tools write it: EXIF-rotated photos, text files with a
byte-order mark, CRLF, tabs and blank lines, CVAT's VOC export, Roboflow's data.yaml and Label
Studio's YOLO export."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from frcnn.cli.main import main
from frcnn.data import DatasetError, build_dataset, image_size, load_voc
from frcnn.data.images import read_rgb, to_rgb
from frcnn.data.voc import split_line_id
from frcnn.data.yolo import label_path
from test_data_formats import CLASSES, SMALL_SET, draw, write_coco_layout, write_voc_layout, write_yolo_layout

# ---------------------------------------------------------------- EXIF orientation

# The photo as shown (and labelled): portrait, 160 wide and 200 high, one red part on grey.
SHOWN_WIDTH, SHOWN_HEIGHT = 160, 200
PART = (30, 110, 90, 170)  # internal x1, y1, x2, y2 on the shown image
RED = (230, 30, 30)


def shown_pixels() -> np.ndarray:
    pixels = np.full((SHOWN_HEIGHT, SHOWN_WIDTH, 3), 60, dtype=np.uint8)
    x1, y1, x2, y2 = PART
    pixels[y1:y2, x1:x2] = RED
    return pixels


def save_with_orientation(path: Path, stored: np.ndarray, orientation: int, **options) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored).save(path, exif=exif, **options)


def save_phone_photo(path: Path) -> None:
    """The shown image stored as a phone stores it: landscape pixels (200 x 160), turned a quarter
    counter-clockwise, with EXIF orientation 6 ("turn a quarter clockwise to show")."""
    save_with_orientation(path, np.rot90(shown_pixels(), 1), 6, quality=95)


def write_phone_voc(root: Path, xml_size: tuple[int, int] = (SHOWN_WIDTH, SHOWN_HEIGHT)) -> Path:
    for sub in ("Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    save_phone_photo(root / "JPEGImages" / "IMG_0001.jpg")
    x1, y1, x2, y2 = PART
    (root / "Annotations" / "IMG_0001.xml").write_text(
        f"<annotation><filename>IMG_0001.jpg</filename><size><width>{xml_size[0]}</width>"
        f"<height>{xml_size[1]}</height><depth>3</depth></size><object><name>part</name><bndbox>"
        f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("IMG_0001\n")
    return root


def write_phone_yolo(root: Path) -> Path:
    image = root / "images" / "train" / "IMG_0001.jpg"
    save_phone_photo(image)
    x1, y1, x2, y2 = PART
    label_path(image).parent.mkdir(parents=True)
    label_path(image).write_text(f"0 {(x1 + x2) / 2 / SHOWN_WIDTH} {(y1 + y2) / 2 / SHOWN_HEIGHT} "
                                 f"{(x2 - x1) / SHOWN_WIDTH} {(y2 - y1) / SHOWN_HEIGHT}\n")
    (root / "classes.txt").write_text("part\n")
    return root


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", ["png", "tiff", "webp"])
def test_every_exif_orientation_reads_as_pil_shows_it(tmp_path, orientation, suffix):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / f"o{orientation}.{suffix}"
    save_with_orientation(path, stored, orientation, **({"lossless": True} if suffix == "webp" else {}))
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert np.array_equal(read_rgb(path), expected)
    assert image_size(path) == (expected.shape[1], expected.shape[0])
    with Image.open(path) as image:
        assert np.array_equal(to_rgb(image), expected)
        # An image PIL has turned already carries no orientation and is not turned twice.
        assert np.array_equal(to_rgb(ImageOps.exif_transpose(image)), expected)


@pytest.mark.parametrize("layout", ["voc", "yolo"])
def test_a_rotated_phone_photo_reads_as_shown_and_labelled(tmp_path, capsys, layout):
    root = write_phone_voc(tmp_path / "voc") if layout == "voc" else write_phone_yolo(tmp_path / "yolo")
    dataset = build_dataset(f"{layout}:{root}", "train")
    annotation = dataset.annotations[0]
    assert (annotation.width, annotation.height) == (SHOWN_WIDTH, SHOWN_HEIGHT)
    np.testing.assert_allclose(annotation.boxes, [PART], atol=1e-4)
    image, target = dataset[0]
    assert image.shape == (3, SHOWN_HEIGHT, SHOWN_WIDTH)
    x1, y1, x2, y2 = (int(round(v)) for v in target["boxes"][0].tolist())
    inside = image[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].float().mean(dim=(1, 2))
    assert np.abs(inside.numpy() - RED).max() < 8  # JPEG
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - shown_pixels()).mean() < 2

    status = main(["data", f"{layout}:{root}", "--out", str(tmp_path / "report"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["problems"] == [] and report["objects"] == 1


def test_a_voc_size_of_the_stored_pixels_is_refused_naming_the_exif_orientation(tmp_path):
    root = write_phone_voc(tmp_path / "voc", xml_size=(SHOWN_HEIGHT, SHOWN_WIDTH))
    with pytest.raises(DatasetError) as raised:
        load_voc(root, "train")
    message = str(raised.value)
    assert message.startswith(str(root / "Annotations" / "IMG_0001.xml"))
    assert "says the image is 200x160 (width x height)" in message and "is 160x200 as displayed" in message
    assert "EXIF orientation 6 turns the stored 200x160 pixels" in message and "\n" not in message


def test_predict_detect_and_pictures_read_the_photo_as_shown(tmp_path):
    from frcnn.deploy.files import load_rgb
    from frcnn.draw import load_image
    from frcnn.preprocess import as_image_tensor

    path = tmp_path / "IMG_0001.jpg"
    save_phone_photo(path)
    with Image.open(path) as image:
        from_pil = as_image_tensor(image)
    for tensor in (as_image_tensor(path), as_image_tensor(str(path)), from_pil, load_rgb(path), load_image(path)):
        assert tuple(tensor.shape) == (3, SHOWN_HEIGHT, SHOWN_WIDTH)
    assert np.array_equal(load_image(path).permute(1, 2, 0).numpy(), read_rgb(path))


# ---------------------------------------------------------------- text files as editors write them


def as_windows_writes(text: str, encoding: str = "utf-8-sig") -> bytes:
    """Fields separated by tabs, CRLF line ends, blank lines at the end, a byte-order mark."""
    lines = ["\t".join(line.split(" ")) for line in text.splitlines()]
    return ("\r\n".join(lines) + "\r\n\r\n\r\n").encode(encoding)


def boxes_and_labels(dataset) -> list[tuple[str, list, list]]:
    return [(str(a.image_id), a.boxes.tolist(), a.labels.tolist()) for a in dataset.annotations]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_yolo_labels_names_lists_and_data_yaml_as_windows_editors_write_them(tmp_path, encoding):
    clean = write_yolo_layout(tmp_path / "clean")
    expected = {split: boxes_and_labels(build_dataset(f"yolo:{clean / 'data.yaml'}", split)) for split in SMALL_SET}
    root = write_yolo_layout(tmp_path / "edited")
    for labels in (root / "labels").rglob("*.txt"):
        labels.write_bytes(as_windows_writes(labels.read_text(), encoding))
    first_line = (root / "labels" / "train" / "img_a.txt").read_bytes().splitlines()[0]
    assert first_line.startswith(b"\xef\xbb\xbf1\t" if encoding == "utf-8-sig" else b"\xff\xfe")
    (root / "val.txt").write_bytes(as_windows_writes("images/val/img_e.jpg\n./images/val/img_f.jpg", encoding))
    (root / "data.yaml").write_bytes(
        ("path:\t.\r\ntrain:\timages/train\r\nval: val.txt\t\r\nnames:\r\n"
         + "".join(f"\t{n}:\t{name}\r\n" for n, name in enumerate(CLASSES))).encode(encoding))
    for split in SMALL_SET:
        assert boxes_and_labels(build_dataset(f"yolo:{root / 'data.yaml'}", split)) == expected[split]
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_bytes(as_windows_writes("\n".join(CLASSES) + "\n\t\n", encoding))
    assert boxes_and_labels(build_dataset(f"yolo:{root}", "train")) == expected["train"]


def test_a_data_yaml_that_does_not_parse_with_tabs_as_spaces_names_the_first_error(tmp_path):
    root = write_yolo_layout(tmp_path / "set")
    (root / "data.yaml").write_text("path: .\ntrain:\timages/train\nnames: [bolt, cross\n")
    with pytest.raises(DatasetError, match=r"data.yaml:2: malformed YAML: .*'\\t'"):
        build_dataset(f"yolo:{root / 'data.yaml'}", "train")


SPACED = {"train": {"IMG 0001": SMALL_SET["train"]["img_a"], "IMG 0002": SMALL_SET["train"]["img_b"],
                    "IMG 1": SMALL_SET["train"]["img_d"]}}


def test_voc_split_files_with_spaces_in_ids_a_bom_crlf_and_classification_flags(tmp_path):
    root = write_voc_layout(tmp_path / "voc", SPACED)
    main_lists = root / "ImageSets" / "Main"
    (main_lists / "train.txt").write_bytes("\ufeffIMG 0001\r\n  IMG 0002\t\r\nIMG 1\r\n\r\n".encode())
    dataset = load_voc(root, "train")
    assert [a.image_id for a in dataset.annotations] == ["IMG 0001", "IMG 0002", "IMG 1"]
    assert [a.image_path.name for a in dataset.annotations] == ["IMG 0001.jpg", "IMG 0002.jpg", "IMG 1.jpg"]
    assert [a.labels.tolist() for a in dataset.annotations] == [[2, 3, 5], [1, 4], [2, 2]]
    # VOC's classification lists: "ID FLAG", the flag 1 (present), -1 (absent) or 0 (difficult).
    (main_lists / "cross_train.txt").write_text("IMG 0001  1\nIMG 0002 -1\nIMG 1  0\n")
    assert [a.image_id for a in load_voc(root, "cross_train").annotations] == ["IMG 0001", "IMG 0002", "IMG 1"]
    (main_lists / "plain.txt").write_text("IMG 0001 1\n")
    assert [a.image_id for a in load_voc(root, "plain").annotations] == ["IMG 0001"]


@pytest.mark.parametrize("line, known, expected", [
    ("IMG 0001", {"IMG 0001"}, "IMG 0001"),
    ("IMG 0001", set(), "IMG 0001"),          # "0001" is no flag
    ("IMG 1", {"IMG 1"}, "IMG 1"),            # the whole line names an annotation
    ("IMG 1", {"IMG"}, "IMG"),                # else "ID FLAG"
    ("IMG 0001 -1", {"IMG 0001"}, "IMG 0001"),
    ("2008_000002  0", set(), "2008_000002"),
    ("2008_000002\t1", set(), "2008_000002"),
    ("1", set(), "1"),                        # a lone word is an id
    ("IMG 0001 2", set(), "IMG 0001 2"),
])
def test_split_line_id_rule(line, known, expected):
    assert split_line_id(line, known) == expected


def test_cvat_voc_annotations_and_images_in_sub_folders(tmp_path):
    """As CVAT (datumaro) exports a task whose images sit in folders: Annotations/<folder>/<name>.xml,
    JPEGImages/<folder>/<name>.jpg, <filename> the path under JPEGImages/, the id the path without
    suffix in ImageSets/Main/default.txt."""
    root = tmp_path / "cvat"
    items = {"site a/IMG 0001": ("jpg", SMALL_SET["train"]["img_a"]),
             "site b/IMG 0002": ("jpg", SMALL_SET["train"]["img_b"]),
             "site c/IMG 0003": ("png", SMALL_SET["train"]["img_d"])}
    for seed, (item, (suffix, (width, height, objects))) in enumerate(items.items()):
        draw(root / "JPEGImages" / f"{item}.{suffix}", width, height, objects, seed)
        xml = root / "Annotations" / f"{item}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(
            f"<annotation><folder></folder><filename>{item}.{suffix}</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth></depth></size>"
            + "".join(f"<object><name>{name}</name><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
                      f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for name, (x1, y1, x2, y2) in objects)
            + "</annotation>")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    # The last id is written without its folder: found by its stem, the only one of that name.
    (root / "ImageSets" / "Main" / "default.txt").write_text("site a/IMG 0001\nsite b/IMG 0002\nIMG 0003\n")
    dataset = build_dataset(f"voc:{root}", "default")
    assert dataset.class_names == CLASSES
    assert [a.image_path.relative_to(root / "JPEGImages").as_posix() for a in dataset.annotations] == [
        "site a/IMG 0001.jpg", "site b/IMG 0002.jpg", "site c/IMG 0003.png"]
    for annotation, (_, (width, height, objects)) in zip(dataset.annotations, items.values()):
        assert (annotation.width, annotation.height) == (width, height)
        assert annotation.boxes.tolist() == [list(box) for _, box in objects]
        assert annotation.labels.tolist() == [CLASSES.index(name) + 1 for name, _ in objects]


def test_a_coco_file_with_a_byte_order_mark(tmp_path):
    root = write_coco_layout(tmp_path / "coco")
    spec = f"coco:{root / 'instances_val.json'}:{root / 'images'}"
    expected = boxes_and_labels(build_dataset(spec, "val"))
    path = root / "instances_val.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b", ", b",\r\n\t"))
    assert boxes_and_labels(build_dataset(spec, "val")) == expected


# ---------------------------------------------------------------- layouts labelling tools export


def write_yolo_images(images_dir: Path, data: dict, seed: int = 0) -> None:
    """<stem>.jpg in ``images_dir`` and its label file (``label_path``)."""
    for stem, (width, height, objects) in data.items():
        image = images_dir / f"{stem}.jpg"
        draw(image, width, height, objects, seed)
        seed += 1
        label_path(image).parent.mkdir(parents=True, exist_ok=True)
        label_path(image).write_text("".join(
            f"{CLASSES.index(name)} {(x1 + x2) / 2 / width} {(y1 + y2) / 2 / height} {(x2 - x1) / width} "
            f"{(y2 - y1) / height}\n" for name, (x1, y1, x2, y2) in objects))


def expected_boxes(data: dict) -> list[tuple[str, list, list]]:
    return [(stem, [list(box) for _, box in objects], [CLASSES.index(name) + 1 for name, _ in objects])
            for stem, (_, _, objects) in data.items()]


def assert_reads(dataset, data: dict) -> None:
    read = boxes_and_labels(dataset)
    assert [(stem, labels) for stem, _, labels in read] == [(stem, labels) for stem, _, labels in expected_boxes(data)]
    for (_, boxes, _), (_, expected, _) in zip(read, expected_boxes(data)):
        np.testing.assert_allclose(np.array(boxes).reshape(-1, 4), np.array(expected).reshape(-1, 4), atol=1e-4)


def write_roboflow_export(root: Path) -> Path:
    """Roboflow's "YOLOv8" export: data.yaml beside train/, valid/ and test/, each with images/ and
    labels/, the data.yaml's entries written as "../<split>/images"."""
    write_yolo_images(root / "train" / "images", SMALL_SET["train"])
    write_yolo_images(root / "valid" / "images", SMALL_SET["val"])
    write_yolo_images(root / "test" / "images", {"img_t": SMALL_SET["train"]["img_c"]})
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\n"
        f"nc: {len(CLASSES)}\nnames: {list(CLASSES)}\n\nroboflow:\n  workspace: acme\n  project: parts\n"
        "  version: 1\n  license: CC BY 4.0\n  url: https://universe.roboflow.com/acme/parts/dataset/1\n")
    (root / "README.roboflow.txt").write_text("parts - v1\n")
    return root


def test_roboflow_data_yaml_entries_resolve_as_ultralytics_resolves_them(tmp_path):
    root = write_roboflow_export(tmp_path / "parts.v1i.yolov8")
    for spec in (f"yolo:{root / 'data.yaml'}", f"yolo:{root}"):
        assert_reads(build_dataset(spec, "train"), SMALL_SET["train"])
        assert_reads(build_dataset(spec, "val"), SMALL_SET["val"])
        assert [a.image_id for a in build_dataset(spec, "test").annotations] == ["img_t"]
    # With a 'path' key the entries are relative to it, "../" falling back the same way.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "parts.yaml").write_text(
        f"path: ../{root.name}\ntrain: ../train/images\nnames: {list(CLASSES)}\n")
    assert_reads(build_dataset(f"yolo:{tmp_path / 'configs' / 'parts.yaml'}", "train"), SMALL_SET["train"])
    # A "../" entry that exists relative to the root is taken as it is (ultralytics' order).
    write_yolo_images(tmp_path / "train" / "images", {"img_outside": SMALL_SET["train"]["img_c"]})
    assert [a.image_id for a in build_dataset(f"yolo:{root}", "train").annotations] == ["img_outside"]
    (root / "data.yaml").write_text(f"train: ../training/images\nnames: {list(CLASSES)}\n")
    with pytest.raises(DatasetError, match=r"data.yaml: split 'train': '../training/images' is .*training/images, "
                                           r"which does not exist \(entries are relative to"):
        build_dataset(f"yolo:{root}", "train")


def write_label_studio_export(root: Path) -> Path:
    """Label Studio's "YOLO" export: classes.txt, notes.json, images/ and labels/ without splits,
    files named with the upload's prefix."""
    write_yolo_images(root / "images", {f"8f3a{n}c2-{stem}": item for n, (stem, item) in
                                        enumerate(SMALL_SET["train"].items())})
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "notes.json").write_text(json.dumps({
        "categories": [{"id": n, "name": name} for n, name in enumerate(CLASSES)],
        "info": {"year": 2024, "version": "1.0", "contributor": "Label Studio"}}))
    return root


def test_label_studio_yolo_export_is_one_unsplit_set_read_as_train(tmp_path):
    root = write_label_studio_export(tmp_path / "project-1-at-2024-05-01")
    dataset = build_dataset(f"yolo:{root}", "train")
    assert dataset.class_names == CLASSES
    assert_reads(dataset, {f"8f3a{n}c2-{stem}": item for n, (stem, item) in enumerate(SMALL_SET["train"].items())})
    with pytest.raises(DatasetError, match="no split 'val': images/ holds one unsplit set \\(as Label Studio "
                                           "exports\\), read as split 'train'; evaluate on another dataset"):
        build_dataset(f"yolo:{root}", "val")


def test_layouts_not_read_are_refused_naming_the_layouts_that_are(tmp_path):
    folder = tmp_path / "export"
    draw(folder / "pictures" / "a.jpg", 32, 32, [], 0)
    with pytest.raises(DatasetError) as raised:
        build_dataset(f"yolo:{folder}", "train")
    assert str(raised.value).startswith(f"{folder}: not a YOLO folder: no data.yaml and no images/; expected a "
                                        "data.yaml (ultralytics, Roboflow), or a folder with images/<split>/")
    assert "Label Studio" in str(raised.value)
    (folder / "images" / "training").mkdir(parents=True)
    with pytest.raises(DatasetError, match="images: holds neither split folders \\(train, val, test\\) nor images"):
        build_dataset(f"yolo:{folder}", "train")
    (folder / "images" / "val").mkdir()
    with pytest.raises(DatasetError, match="no split 'train': this YOLO folder has images/val/$"):
        build_dataset(f"yolo:{folder}", "train")
    with pytest.raises(DatasetError, match="not a VOC folder: no Annotations/; expected a VOCdevkit folder .* or a "
                                           "year folder itself"):
        build_dataset(f"voc:{folder}", "train")
