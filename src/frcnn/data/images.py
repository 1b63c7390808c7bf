"""Image files: their size from the header, a cheap truncation check, and decoding to RGB.

Images are read as they are displayed: a camera that stores a portrait photo as landscape pixels
writes an EXIF orientation (tag 0x0112) saying how to turn them, and labelling tools show and label
the turned image. Orientations 2-8 are applied when decoding, and for 5-8 (a quarter turn, or a
transpose) the size from the header has width and height swapped, so sizes, pixels and labels
agree. The orientation is read from what opening the file parses, never from after the pixel data.

Every image mode PIL opens is decoded to 8-bit RGB: greyscale, palette (transparency dropped),
RGBA and LA (alpha dropped), CMYK (JPEG, as PIL reads it), and 16-bit greyscale (PIL's integer
modes, scaled from 0..65535 down to 0..255).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from .annotations import ImageAnnotation, Problem, ProblemLog, dataset_error, plain_annotation

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112
# Orientation -> (swap the axes, then flip the rows, then flip the columns): the stored pixels
# turned into the displayed image, as the EXIF standard defines the Orientation tag.
_ORIENTATION_STEPS = {
    1: (False, False, False), 2: (False, False, True), 3: (False, True, True), 4: (False, True, False),
    5: (True, False, False), 6: (True, False, True), 7: (True, True, True), 8: (True, True, False),
}
# Formats whose PIL reader turns the pixels itself, reporting the turned size (Pillow's TIFF reader).
_TURNED_BY_PIL = {"TIFF"}
# The last bytes that must hold a JPEG's end-of-image marker or a PNG's IEND chunk.
_TAIL_BYTES = 4096
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND", "MPO": b"\xff\xd9"}
# PIL reports some corrupt files with SyntaxError or ValueError rather than OSError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class _BadImage(Exception):
    """What is wrong with an image file (the message names no file)."""


class _Header(NamedTuple):
    """An image file's displayed width and height and its EXIF orientation (1..8)."""

    width: int
    height: int
    orientation: int


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) still to apply to an image PIL opened: 1 where it has none or
    an invalid one, or where PIL's reader turns the pixels itself (TIFF).

    Read from what opening parsed (JPEG and WebP headers, PNG chunks before the pixel data),
    without decoding: PIL's PNG reader would decode the whole image to look for an eXIf chunk after
    the pixels, which the size from the header could not see."""
    if image.format in _TURNED_BY_PIL:
        return 1
    value = Image.Image.getexif(image).get(EXIF_ORIENTATION, 1)
    return value if value in _ORIENTATION_STEPS else 1


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels (H, W, C) -> the displayed image that EXIF ``orientation`` describes,
    (H, W, C) for 1-4 and (W, H, C) for 5-8, contiguous."""
    swap, flip_rows, flip_columns = _ORIENTATION_STEPS[orientation]
    if swap:
        pixels = pixels.transpose(1, 0, 2)
    if flip_rows:
        pixels = pixels[::-1]
    if flip_columns:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)


def _read_header(path: Path) -> _Header:
    if not path.is_file():
        raise _BadImage("image file is missing")
    try:
        with Image.open(path) as image:
            (width, height), kind, orientation = image.size, image.format, exif_orientation(image)
    except _PIL_ERRORS as error:
        raise _BadImage(f"not an image PIL can read ({error})") from error
    marker = _END_MARKERS.get(kind or "")
    if marker is not None:
        with open(path, "rb") as file:
            file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            if marker not in file.read():
                raise _BadImage(f"{kind} image is truncated (no end marker)")
    if _ORIENTATION_STEPS[orientation][0]:
        width, height = height, width
    return _Header(width, height, orientation)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as displayed (EXIF orientation applied), from the file's
    header without decoding; DatasetError naming the file if it is missing, is not an image, or
    is a JPEG or PNG whose end is cut off."""
    try:
        return _read_header(path)[:2]
    except _BadImage as error:
        raise dataset_error(path, str(error)) from error


def checked_image_size(path: Path, log: ProblemLog, annotated: tuple[int, int] | None = None,
                       annotation_file: Path | None = None) -> tuple[int, int] | None:
    """``image_size``, or None when the image is bad (reported to ``log``, dropping the image):
    the errors of ``image_size``, or a displayed size other than the ``annotated`` (width, height)
    that ``annotation_file`` gives (the message says so when the EXIF orientation explains it)."""
    try:
        header = _read_header(path)
    except _BadImage as error:
        log.bad(Problem(str(path), str(error)), dropped="image")
        return None
    size = header[:2]
    if annotated is not None and tuple(annotated) != size:
        message = (f"says the image is {annotated[0]}x{annotated[1]} (width x height) but {path} is "
                   f"{size[0]}x{size[1]}")
        if _ORIENTATION_STEPS[header.orientation][0] and tuple(annotated) == size[::-1]:
            message += (f" as displayed: its EXIF orientation {header.orientation} turns the stored "
                        f"{size[1]}x{size[0]} pixels, and frcnn reads images as displayed (as labelling "
                        "tools show them); annotate the displayed image or remove the orientation tag")
        log.bad(Problem(str(annotation_file or path), message), dropped="image")
        return None
    return size


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file as displayed, (H, W, 3) uint8 RGB (``to_rgb``); DatasetError naming
    the file if it cannot. Every image frcnn reads from a file is read here."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except _PIL_ERRORS as error:
        raise dataset_error(path, f"cannot read the image: {error}") from error


def to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode as displayed, (H, W, 3) uint8 RGB: its EXIF orientation applied
    (``exif_orientation``; an image already turned by ``PIL.ImageOps.exif_transpose`` has none
    left), its mode converted (see the module docstring)."""
    orientation = exif_orientation(image)
    if image.mode.startswith("I"):
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        pixels = np.repeat(grey[:, :, None], 3, axis=2)
    else:
        pixels = np.array((image.convert("RGBA") if image.mode == "P" else image).convert("RGB"))
    return orient(pixels, orientation)


def image_annotation(path: str | Path, index: int) -> ImageAnnotation:
    """An image file as an annotation with no objects, ``index`` its id (its size from the
    header); DatasetError naming the file if it is missing or not an image."""
    path = Path(path)
    width, height = image_size(path)
    return plain_annotation(path, index, height, width, np.zeros((0, 4)), np.zeros(0))
