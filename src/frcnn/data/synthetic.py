"""The embedded synthetic dataset: coloured shapes on textured, noisy backgrounds.

Every image is a pure function of ``SyntheticConfig`` and its index. The dataset is written
once, atomically, in the VOC layout (Annotations/, JPEGImages/, ImageSets/Main/) so that the VOC
reader serves it; ``synthetic.json`` in the folder records the parameters it was made from.

A box is the tight box of the object's visible pixels (as VOC and COCO annotate); objects
less than ``min_visible`` visible (occluded or outside the image) are not drawn at all.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import SyntheticConfig
from .annotations import dataset_error
from .voc import VocObject, internal_to_voc, write_voc_xml

SHAPE_NAMES = ("circle", "cross", "ring", "square", "star", "triangle")
# RGB base colour of each shape, in SHAPE_NAMES order.
_SHAPE_COLOURS = np.array([[225, 45, 40], [45, 185, 60], [45, 85, 230], [235, 205, 40],
                           [200, 60, 215], [40, 205, 215]], dtype=np.float32)
# Bump when the drawing changes, so that cached datasets are regenerated.
_GENERATOR_VERSION = 1
_MARKER = "synthetic.json"
_SPLITS = ("train", "val")
_log = logging.getLogger(__name__)


def fingerprint(config: SyntheticConfig) -> str:
    """A short hash of the parameters and the generator version: the dataset's folder name."""
    stamp = json.dumps(_stamp(config), sort_keys=True).encode()
    return hashlib.sha1(stamp).hexdigest()[:12]


def _stamp(config: SyntheticConfig) -> dict:
    """The parameters as they read back from synthetic.json (tuples become lists)."""
    return json.loads(json.dumps({"generator_version": _GENERATOR_VERSION, **asdict(config)}))


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/frcnn, or ~/.cache/frcnn."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "frcnn"


def ensure_synthetic(config: SyntheticConfig = SyntheticConfig(), root: str | Path | None = None) -> Path:
    """The folder holding the dataset of ``config``, generating it if it is absent or was made
    from other parameters. Default folder: ``default_cache_dir()/synthetic-<fingerprint>``.

    Generation writes a temporary sibling folder and renames it into place, so a reader never
    sees a partial dataset. A ``root`` that exists but is not a synthetic dataset is refused.
    """
    root = Path(root).expanduser() if root is not None else default_cache_dir() / f"synthetic-{fingerprint(config)}"
    if _made_from(root) == _stamp(config):
        return root
    if root.exists() and _made_from(root) is None and any(root.iterdir()):
        raise dataset_error(root, f"exists and is not a synthetic dataset (no {_MARKER}); "
                                  "choose another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        _log.info("generating the synthetic dataset in %s", root)
        write_synthetic(staging, config)
        _move_into_place(staging, root, _stamp(config))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _made_from(root: Path) -> dict | None:
    try:
        return json.loads((root / _MARKER).read_text())
    except (OSError, ValueError):
        return None


def _move_into_place(staging: Path, root: Path, stamp: dict) -> None:
    """Rename ``staging`` to ``root``, replacing an outdated dataset there."""
    if _made_from(root) == stamp:  # another process finished the same dataset meanwhile
        return
    if root.exists():
        outdated = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.replace(root, outdated / root.name)
        shutil.rmtree(outdated)
    try:
        os.rename(staging, root)
    except OSError:
        # Another process finished the same dataset first: keep theirs.
        if _made_from(root) != stamp:
            raise


def write_synthetic(folder: Path, config: SyntheticConfig) -> None:
    """Write every split of ``config`` into ``folder`` in the VOC layout."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    noise = _noise_tile(config)
    stems = {}
    for split_code, split in enumerate(_SPLITS):
        stems[split] = [f"{split}_{index:06d}" for index in range(config.split_size(split))]
        for index, stem in enumerate(stems[split]):
            rng = np.random.default_rng([config.seed, split_code, index])
            pixels, objects = render_image(rng, config, noise)
            Image.fromarray(pixels).save(folder / "JPEGImages" / f"{stem}.jpg", quality=config.jpeg_quality)
            write_voc_xml(folder / "Annotations" / f"{stem}.xml", f"{stem}.jpg",
                          pixels.shape[1], pixels.shape[0], objects)
    for split, names in {**stems, "trainval": stems["train"] + stems["val"]}.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    (folder / _MARKER).write_text(json.dumps(_stamp(config), indent=1, sort_keys=True))


def _noise_tile(config: SyntheticConfig) -> np.ndarray:
    """Unit Gaussian noise (3, S, S) float32, cropped per image (cheaper than drawing it anew)."""
    side = config.long_side[1] + 256
    return np.random.default_rng([config.seed, len(_SPLITS)]).standard_normal((3, side, side), np.float32)


def render_image(rng: np.random.Generator, config: SyntheticConfig,
                 noise: np.ndarray) -> tuple[np.ndarray, list[VocObject]]:
    """One image (H, W, 3) uint8 RGB and its objects (VOC coordinates)."""
    height, width = _image_size(rng, config)
    image = _background(rng, height, width)
    boxes, labels = _place_objects(rng, height, width, config)
    objects = _draw_objects(rng, image, boxes, labels, config.min_visible)
    top, left = rng.integers(0, noise.shape[1] - height + 1), rng.integers(0, noise.shape[2] - width + 1)
    image += np.float32(rng.uniform(3.0, 14.0)) * noise[:, top:top + height, left:left + width]
    np.clip(image, 0, 255, out=image)
    return np.ascontiguousarray(image.astype(np.uint8).transpose(1, 2, 0)), objects


def _image_size(rng: np.random.Generator, config: SyntheticConfig) -> tuple[int, int]:
    long_side = int(rng.integers(config.long_side[0], config.long_side[1] + 1))
    short_side = int(round(long_side * rng.uniform(config.min_side_ratio, 1.0)))
    return (short_side, long_side) if rng.random() < 0.5 else (long_side, short_side)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with stripes of random period and angle, (3, H, W) float32."""
    grid_h, grid_w = rng.integers(2, 6, size=2)
    grid = rng.uniform(60.0, 200.0, size=(3, grid_h, grid_w)).astype(np.float32)
    image = np.stack([np.asarray(Image.fromarray(channel).resize((width, height), Image.BILINEAR))
                      for channel in grid])
    amplitude, period = rng.uniform(0.0, 30.0), rng.uniform(4.0, 32.0)
    angle, phase = rng.uniform(0.0, math.pi), rng.uniform(0.0, 2 * math.pi)
    along_x = (2 * math.pi / period * math.cos(angle)) * np.arange(width, dtype=np.float32)
    along_y = (2 * math.pi / period * math.sin(angle)) * np.arange(height, dtype=np.float32) + phase
    # sin(a + b) as a sum of two outer products: only (H,) and (W,) sines are evaluated.
    stripes = np.sin(along_y)[:, None] * np.cos(along_x) + np.cos(along_y)[:, None] * np.sin(along_x)
    tint = amplitude * rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    image += tint[:, None, None] * stripes
    return image


def _place_objects(rng: np.random.Generator, height: int, width: int,
                   config: SyntheticConfig) -> tuple[list[tuple[float, ...]], list[int]]:
    """Full (unclipped) boxes and labels 1..C, bottom to top."""
    wanted = 0 if rng.random() < config.empty_fraction else int(rng.integers(1, config.max_objects + 1))
    low, high = config.object_size
    log_aspect = math.log(config.max_object_aspect)
    boxes: list[tuple[float, ...]] = []
    labels: list[int] = []
    for _ in range(4 * wanted):
        if len(boxes) == wanted:
            break
        size = math.exp(rng.uniform(math.log(low), math.log(high)))
        aspect = math.exp(rng.uniform(-log_aspect, log_aspect))
        w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
        grow = max(1.0, low / min(w, h))
        shrink = min(1.0, width / (w * grow), height / (h * grow))
        w, h = w * grow * shrink, h * grow * shrink
        x1, y1 = rng.uniform(-w / 2, width - w / 2), rng.uniform(-h / 2, height - h / 2)
        box = (x1, y1, x1 + w, y1 + h)
        label = int(rng.integers(len(SHAPE_NAMES))) + 1
        if all(_covered_fraction(box, other, height, width) <= config.max_overlap for other in boxes):
            boxes.append(box)
            labels.append(label)
    return boxes, labels


def _covered_fraction(a: tuple[float, ...], b: tuple[float, ...], height: int, width: int) -> float:
    """Intersection over the smaller area of two boxes, both clipped to the image."""
    a, b = (np.clip(box, 0, [width, height, width, height]) for box in (a, b))
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter / smaller if smaller > 0 else 1.0


def _draw_objects(rng: np.random.Generator, image: np.ndarray, boxes: list[tuple[float, ...]],
                  labels: list[int], min_visible: float) -> list[VocObject]:
    """Paint objects top-down into ``image`` (3, H, W); return the drawn ones."""
    height, width = image.shape[1:]
    taken = np.zeros((height, width), dtype=bool)
    objects = []
    for box, label in reversed(list(zip(boxes, labels))):
        cols, rows, u, v = _pixel_grid(box)
        mask = _shape_mask(SHAPE_NAMES[label - 1], u, v)
        inside = (slice(max(-rows.start, 0), min(height, rows.stop) - rows.start),
                  slice(max(-cols.start, 0), min(width, cols.stop) - cols.start))
        window = (slice(max(rows.start, 0), min(rows.stop, height)),
                  slice(max(cols.start, 0), min(cols.stop, width)))
        visible = mask[inside] & ~taken[window]
        angle = rng.uniform(0.0, 2 * math.pi)
        shading = 1.0 + 0.15 * (u * math.cos(angle) + v * math.sin(angle))[inside]
        colour = _SHAPE_COLOURS[label - 1] + rng.uniform(-25.0, 25.0, size=3).astype(np.float32)
        if visible.sum() < min_visible * mask.sum():
            continue
        taken[window] |= visible
        image[(slice(None), *window)][:, visible] = colour[:, None] * shading[visible]
        visible_box = _tight_box(visible) + [window[1].start, window[0].start] * 2
        truncated = rows.start < 0 or cols.start < 0 or rows.stop > height or cols.stop > width
        objects.append(VocObject(SHAPE_NAMES[label - 1], tuple(internal_to_voc(visible_box)[0]),
                                 truncated=truncated))
    return objects[::-1]


def _pixel_grid(box: tuple[float, ...]) -> tuple[range, range, np.ndarray, np.ndarray]:
    """Pixel columns and rows the box touches, and their centres in box units: u (1, w) and
    v (h, 1) run from -1 to 1 across the box."""
    x1, y1, x2, y2 = box
    cols, rows = range(math.floor(x1), math.ceil(x2)), range(math.floor(y1), math.ceil(y2))
    u = (np.arange(cols.start, cols.stop) + 0.5 - (x1 + x2) / 2) / ((x2 - x1) / 2)
    v = (np.arange(rows.start, rows.stop) + 0.5 - (y1 + y2) / 2) / ((y2 - y1) / 2)
    return cols, rows, u[None, :].astype(np.float32), v[:, None].astype(np.float32)


# A five-pointed star, point up: outer radius 1, inner radius _STAR_INNER; its box spans
# x in [-sin 72deg, sin 72deg] and y in [-1, -cos 144deg], stretched to fill [-1, 1]^2.
_STAR_INNER = 0.5
_STAR_HALF_WIDTH = math.sin(math.radians(72))
_STAR_HALF_HEIGHT = (1 - math.cos(math.radians(144))) / 2


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Pixels of ``shape`` inscribed in the box, (h, w) bool, from u (1, w) and v (h, 1)."""
    in_box = (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "circle":
        return u * u + v * v <= 1
    if shape == "ring":
        radius2 = u * u + v * v
        return (radius2 <= 1) & (radius2 >= 0.3)
    if shape == "square":
        return in_box
    if shape == "cross":
        return in_box & ((np.abs(u) <= 1 / 3) | (np.abs(v) <= 1 / 3))
    if shape == "triangle":
        return in_box & (np.abs(u) <= (v + 1) / 2)
    if shape == "star":
        return in_box & _inside_star(u * _STAR_HALF_WIDTH, (v + 1) * _STAR_HALF_HEIGHT - 1)
    raise ValueError(f"unknown shape {shape!r}")


def _inside_star(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Points (x, y), y down, inside the unit five-pointed star with a point at (0, -1)."""
    sector = math.radians(72)
    angle = np.mod(np.arctan2(x, -y), sector)
    angle = np.minimum(angle, sector - angle)
    radius = np.hypot(x, y)
    px, py = radius * np.cos(angle), radius * np.sin(angle)
    # The edge from the outer point (1, 0) to the inner one at 36 degrees; inside is the side
    # of the centre.
    ex, ey = _STAR_INNER * math.cos(sector / 2) - 1, _STAR_INNER * math.sin(sector / 2)
    return ex * py - ey * (px - 1) >= 0


def _tight_box(mask: np.ndarray) -> np.ndarray:
    """Internal corners (4,) of the set pixels of a non-empty mask (h, w)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
