"""Per-image annotations in internal coordinates, how readers treat bad data, and the error.

Internal boxes are float corners (x1, y1, x2, y2) in 0-based continuous pixel coordinates: a box
covering pixel columns 0..9 has x1 = 0, x2 = 10.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import BAD_DATA_POLICIES as POLICIES
from .textfiles import text_lines

# Annotations may overhang the image by this many pixels (VOC has xmin = 0 in 1-based
# coordinates); such boxes are kept as written and clipped by the transforms.
BORDER_SLACK = 1.0


class DatasetError(ValueError):
    """Bad input data. The message names the file (and line or object) and what is wrong.

    Built from a single message. A DataLoader worker re-raises it as "Caught DatasetError in
    DataLoader worker process N. Original Traceback ...": the original message, its last line, is
    taken back so that the error still reads as one line naming the file.
    """

    def __init__(self, message: str = "", problem: Problem | None = None) -> None:
        text = str(message)
        if text.startswith("Caught ") and "Original Traceback" in text:
            text = text.rstrip().splitlines()[-1].partition("DatasetError: ")[2] or text
        super().__init__(text)
        self.problem = problem or Problem("<data>", text)


class DatasetWarning(UserWarning):
    """Bad data that was dropped on request (``on_bad="skip"``, ``unknown_classes="skip"``)."""


def dataset_error(path: str | Path, problem: str, item: str | None = None,
                  line: int | None = None) -> DatasetError:
    """A DatasetError reading "PATH[:LINE]: [ITEM: ]PROBLEM" (its ``problem`` the same, in parts)."""
    where = Problem(str(path), problem, line, item)
    return DatasetError(str(where), where)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: the file, the line or object, what is wrong, and (when it
    was skipped) what was dropped: "object", "image" or "class" (an object of an unknown class)."""

    file: str
    message: str
    line: int | None = None
    item: str | None = None
    dropped: str | None = None

    @property
    def where(self) -> str:
        """FILE or FILE:LINE."""
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.item}: {self.message}" if self.item else f"{self.where}: {self.message}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "item": self.item, "message": self.message,
                "dropped": self.dropped}


@dataclass(frozen=True)
class ReadOptions:
    """How a reader names classes and treats bad data (``DataConfig`` fills it from ``data.*``).

    ``class_names``: None takes them from the data (VOC: the sorted names found in
    Annotations/; COCO: the categories by id; YOLO: the data.yaml's names); otherwise label i + 1
    is class_names[i]. ``unknown_classes``: "error" stops at an object of another class, "skip"
    leaves it out and counts it. ``on_bad``: "error" stops at the first bad file, line or object,
    "skip" drops the object (or the whole image, when the image or its annotation file is bad),
    warns, and counts it.
    """

    class_names: tuple[str, ...] | None = None
    unknown_classes: str = "error"
    on_bad: str = "error"

    def __post_init__(self) -> None:
        for name in ("unknown_classes", "on_bad"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"data.{name} must be one of {', '.join(POLICIES)}, got {getattr(self, name)!r}")
        if self.class_names is not None:
            names = tuple(self.class_names)
            if not names or not all(isinstance(n, str) and n.strip() for n in names):
                raise ValueError(f"data.class_names must be non-empty names, got {list(names)!r}")
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"data.class_names names {', '.join(map(repr, repeated))} more than once")
            object.__setattr__(self, "class_names", names)


@dataclass
class ProblemLog:
    """Where a reader reports bad data: raises it (policy "error") or records it as dropped."""

    options: ReadOptions = field(default_factory=ReadOptions)
    problems: list[Problem] = field(default_factory=list)

    def bad(self, problem: Problem, dropped: str = "object") -> None:
        """Bad data: DatasetError unless ``on_bad`` is "skip"."""
        self._report(problem, dropped, self.options.on_bad)

    def unknown_class(self, problem: Problem) -> None:
        """An object of a class outside ``class_names``: DatasetError unless skipped."""
        self._report(problem, "class", self.options.unknown_classes)

    def _report(self, problem: Problem, dropped: str, policy: str) -> None:
        if policy == "error":
            raise DatasetError(str(problem), problem)
        self.problems.append(Problem(problem.file, problem.message, problem.line, problem.item, dropped))

    def warn(self, source: str) -> None:
        """One DatasetWarning summing up what was dropped (none when nothing was)."""
        if not self.problems:
            return
        counts = {kind: sum(p.dropped == kind for p in self.problems) for kind in ("image", "object", "class")}
        parts = [f"{n} {'objects of unknown classes' if kind == 'class' else kind + 's'}"
                 for kind, n in counts.items() if n]
        warnings.warn(f"{source}: dropped {', '.join(parts)} (first: {self.problems[0]}); "
                      "'frcnn data' lists them all", DatasetWarning, stacklevel=3)


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


def plain_annotation(image_path: Path, image_id: str | int, height: int, width: int,
                     boxes: np.ndarray, labels: np.ndarray,
                     difficult: np.ndarray | None = None) -> ImageAnnotation:
    """An annotation without crowd regions whose areas are its box areas."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ImageAnnotation(
        image_path=image_path, image_id=image_id, height=height, width=width, boxes=boxes,
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        difficult=np.zeros(len(boxes), dtype=bool) if difficult is None else np.asarray(difficult, dtype=bool),
        areas=box_areas(boxes), ignore_boxes=np.zeros((0, 4), dtype=np.float64),
        ignore_labels=np.zeros(0, dtype=np.int64))


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Areas of corner boxes (n, 4) -> (n,) float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_problems(boxes: np.ndarray, image_sizes: np.ndarray) -> list[str | None]:
    """What is wrong with each corner box (n, 4) in its image of (height, width) (n, 2): None for
    a good box; otherwise a non-finite coordinate, x2 <= x1 or y2 <= y1, or reaching more than
    BORDER_SLACK pixels outside the image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    heights, widths = sizes[:, 0], sizes[:, 1]
    with np.errstate(invalid="ignore"):
        non_finite = ~np.isfinite(boxes).all(axis=1)
        degenerate = ~non_finite & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        outside = ~non_finite & ~degenerate & (
            (boxes[:, 0] < -BORDER_SLACK) | (boxes[:, 1] < -BORDER_SLACK)
            | (boxes[:, 2] > widths + BORDER_SLACK) | (boxes[:, 3] > heights + BORDER_SLACK))
    problems: list[str | None] = [None] * len(boxes)
    for i in np.flatnonzero(non_finite | degenerate | outside):
        corners = _corners(boxes[i])
        if non_finite[i]:
            problems[i] = f"non-finite coordinate in box {corners}"
        elif degenerate[i]:
            problems[i] = f"box {corners} has x2 <= x1 or y2 <= y1"
        else:
            problems[i] = f"box {corners} lies outside the {int(widths[i])}x{int(heights[i])} (width x height) image"
    return problems


def check_boxes(boxes: np.ndarray, image_sizes: np.ndarray, log: ProblemLog,
                describe: Callable[[int, str], Problem]) -> np.ndarray:
    """Report every bad box (``box_problems``) to ``log``; ``describe(i, message)`` places box i.
    Returns the (n,) bool mask of the boxes to keep."""
    problems = box_problems(boxes, image_sizes)
    keep = np.ones(len(problems), dtype=bool)
    for i, message in enumerate(problems):
        if message is not None:
            log.bad(describe(i, message))
            keep[i] = False
    return keep


def names_of(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file, one a line (blank lines and surrounding whitespace left out,
    text as editors write it: ``text_lines``); DatasetError if it cannot be read or is empty."""
    path = Path(path).expanduser()
    try:
        names = tuple(text_lines(path))
    except FileNotFoundError as error:
        raise dataset_error(path, "class names file is missing") from error
    except (OSError, UnicodeDecodeError) as error:
        raise dataset_error(path, f"cannot read the class names: {error}") from error
    if not names:
        raise dataset_error(path, "holds no class names")
    return names


def resolve_class_names(value: Sequence[str] | str | Path | None) -> tuple[str, ...] | None:
    """``data.class_names`` as names: None, a list, or a text file with one name a line."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return names_of(value)
    return tuple(value)


def _corners(box: np.ndarray) -> str:
    return "(x1, y1, x2, y2) = (" + ", ".join(f"{v:g}" for v in box) + ")"
