"""Per-image annotations in internal coordinates, their validation, and the bad-data error.

Internal boxes are float corners (x1, y1, x2, y2) in 0-based continuous pixel coordinates: a box
covering pixel columns 0..9 has x1 = 0, x2 = 10.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

# Annotations may overhang the image by this many pixels (VOC has xmin = 0 in 1-based
# coordinates); such boxes are kept as written and clipped by the transforms.
BORDER_SLACK = 1.0


class DatasetError(ValueError):
    """Bad input data. The message names the file and, where there is one, the object.

    Built from a single message so that it survives being re-raised from a DataLoader worker.
    """


class DatasetWarning(UserWarning):
    """Data that was dropped on request (``drop_degenerate=True``)."""


def dataset_error(path: str | Path, problem: str, item: str | None = None) -> DatasetError:
    """A DatasetError reading "PATH: ITEM: PROBLEM"."""
    where = f"{path}: {item}" if item else str(path)
    return DatasetError(f"{where}: {problem}")


@dataclass(frozen=True, eq=False)
class ImageAnnotation:
    """One image and its objects, as annotated (original image coordinates).

    boxes (n, 4) float64, labels (n,) int64 in 1..C, difficult (n,) bool, areas (n,) float64 (the
    annotation's own area for COCO, the box area otherwise); ignore_boxes (m, 4) float64 and
    ignore_labels (m,) int64 are crowd regions, which are neither objects nor background.
    """

    image_path: Path
    image_id: str | int
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    areas: np.ndarray
    ignore_boxes: np.ndarray
    ignore_labels: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of corner boxes (n, 4) -> (n,) float64."""
    boxes = boxes.astype(np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def check_boxes(
    boxes: np.ndarray,
    image_sizes: np.ndarray,
    describe: Callable[[int], tuple[Path, str]],
    drop_degenerate: bool = False,
) -> np.ndarray:
    """Validate corner boxes (n, 4) against their images' (height, width) (n, 2).

    Non-finite coordinates and boxes reaching more than BORDER_SLACK pixels outside the image
    raise DatasetError; boxes with x2 <= x1 or y2 <= y1 raise too, or are dropped with a
    DatasetWarning when ``drop_degenerate``. ``describe(i)`` gives (file, object) for box i.
    Returns the (n,) bool mask of boxes to keep.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    non_finite = ~np.isfinite(boxes).all(axis=1)
    _raise_first(non_finite, describe, lambda i: f"non-finite box {boxes[i].tolist()}")
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if degenerate.any():
        if not drop_degenerate:
            _raise_first(degenerate, describe,
                         lambda i: f"degenerate box {_corners(boxes[i])} has x2 <= x1 or y2 <= y1 "
                                   "(pass drop_degenerate=True to drop such boxes)")
        for i in np.flatnonzero(degenerate):
            path, item = describe(int(i))
            warnings.warn(f"{path}: {item}: dropped degenerate box {_corners(boxes[i])}",
                          DatasetWarning, stacklevel=2)
        keep &= ~degenerate
    heights, widths = image_sizes[:, 0], image_sizes[:, 1]
    outside = keep & ((boxes[:, 0] < -BORDER_SLACK) | (boxes[:, 1] < -BORDER_SLACK)
                      | (boxes[:, 2] > widths + BORDER_SLACK) | (boxes[:, 3] > heights + BORDER_SLACK))
    _raise_first(outside, describe,
                 lambda i: f"box {_corners(boxes[i])} lies outside the "
                           f"{int(widths[i])}x{int(heights[i])} (width x height) image")
    return keep


def _corners(box: np.ndarray) -> str:
    return "(x1, y1, x2, y2) = (" + ", ".join(f"{v:g}" for v in box) + ")"


def _raise_first(bad: np.ndarray, describe: Callable[[int], tuple[Path, str]],
                 problem: Callable[[int], str]) -> None:
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        path, item = describe(first)
        raise dataset_error(path, problem(first), item)
