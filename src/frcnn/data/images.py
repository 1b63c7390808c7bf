"""Image files: their size from the header, a cheap truncation check, and decoding to RGB.

Every image mode PIL opens is decoded to 8-bit RGB: greyscale, palette (transparency dropped),
RGBA and LA (alpha dropped), CMYK (JPEG, as PIL reads it), and 16-bit greyscale (PIL's integer
modes, scaled from 0..65535 down to 0..255).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .annotations import ImageAnnotation, Problem, ProblemLog, dataset_error, plain_annotation

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# The last bytes that must hold a JPEG's end-of-image marker or a PNG's IEND chunk.
_TAIL_BYTES = 4096
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND", "MPO": b"\xff\xd9"}
# PIL reports some corrupt files with SyntaxError or ValueError rather than OSError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class _BadImage(Exception):
    """What is wrong with an image file (the message names no file)."""


def _header_size(path: Path) -> tuple[int, int]:
    if not path.is_file():
        raise _BadImage("image file is missing")
    try:
        with Image.open(path) as image:
            size, kind = image.size, image.format
    except _PIL_ERRORS as error:
        raise _BadImage(f"not an image PIL can read ({error})") from error
    marker = _END_MARKERS.get(kind or "")
    if marker is not None:
        with open(path, "rb") as file:
            file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            if marker not in file.read():
                raise _BadImage(f"{kind} image is truncated (no end marker)")
    return size


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding; DatasetError naming the file if
    it is missing, is not an image, or is a JPEG or PNG whose end is cut off."""
    try:
        return _header_size(path)
    except _BadImage as error:
        raise dataset_error(path, str(error)) from error


def checked_image_size(path: Path, log: ProblemLog, annotated: tuple[int, int] | None = None,
                       annotation_file: Path | None = None) -> tuple[int, int] | None:
    """``image_size``, or None when the image is bad (reported to ``log``, dropping the image):
    the errors of ``image_size``, or a header size other than the ``annotated`` (width, height)
    that ``annotation_file`` gives."""
    try:
        size = _header_size(path)
    except _BadImage as error:
        log.bad(Problem(str(path), str(error)), dropped="image")
        return None
    if annotated is not None and tuple(annotated) != size:
        log.bad(Problem(str(annotation_file or path),
                        f"says the image is {annotated[0]}x{annotated[1]} (width x height) but {path} is "
                        f"{size[0]}x{size[1]}"), dropped="image")
        return None
    return size


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file as (H, W, 3) uint8 RGB; DatasetError naming the file if it cannot."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except _PIL_ERRORS as error:
        raise dataset_error(path, f"cannot read the image: {error}") from error


def to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode as (H, W, 3) uint8 RGB (see the module docstring)."""
    if image.mode.startswith("I"):
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"))


def image_annotation(path: str | Path, index: int) -> ImageAnnotation:
    """An image file as an annotation with no objects, ``index`` its id (its size from the
    header); DatasetError naming the file if it is missing or not an image."""
    path = Path(path)
    width, height = image_size(path)
    return plain_annotation(path, index, height, width, np.zeros((0, 4)), np.zeros(0))
