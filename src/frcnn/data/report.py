"""What a dataset holds and what is wrong with it: ``data_report``, its text and JSON forms, the
one-paragraph ``summary`` that ``frcnn train`` prints, and the ``plot_labels`` picture.

Box sizes are in the original image's pixels and, "resized", after the training resize (the
model's ``preprocess``: shorter side ``min_size``, longer at most ``max_size``). COCO's size
buckets use the annotated area (COCO: the segment's; other formats: the box's): small below 32²,
medium below 96², large from 96² pixels.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from ..config import SyntheticConfig
from ..preprocess import resize_factor
from .annotations import DatasetWarning, Problem, ReadOptions
from .dataset import DetectionDataset
from .specs import build_dataset
from .transforms import DetectionTransform

QUANTILES = {"min": 0.0, "p5": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}
COCO_SMALL, COCO_MEDIUM = 32 ** 2, 96 ** 2
# Two boxes of one class in one image overlapping at least this much are reported as duplicates.
DUPLICATE_IOU = 0.95
LABELS_PLOT_NAME = "labels.png"


@dataclass(frozen=True, eq=False)
class DataReport:
    """The counts and problems of one dataset split (see the module docstring for the sizes).

    ``problems``: what the reader dropped (each with ``dropped`` set) and what the report found
    (duplicate boxes, images listed twice; ``dropped`` None). ``labels`` (n,), ``centres`` (n, 2)
    (x, y as fractions of the image's width and height) and ``sizes`` (n, 2) (width, height in
    original pixels) are per object, for ``plot_labels``.
    """

    spec: str
    split: str
    class_names: tuple[str, ...]
    num_images: int
    background_images: int
    objects_per_class: dict[str, int]
    objects_per_image: dict[str, float]
    difficult_objects: int
    crowd_regions: int
    coco_sizes: dict[str, int]
    box_sizes: dict[str, dict[str, dict[str, float]]]
    resize: tuple[int, int] | None
    duplicate_boxes: int
    images_listed_twice: int
    problems: tuple[Problem, ...]
    labels: np.ndarray = field(repr=False)
    centres: np.ndarray = field(repr=False)
    sizes: np.ndarray = field(repr=False)

    @property
    def num_objects(self) -> int:
        return int(sum(self.objects_per_class.values()))

    @property
    def dropped(self) -> dict[str, int]:
        """How many images, objects and objects of unknown classes the reader dropped."""
        return {kind: sum(p.dropped == kind for p in self.problems) for kind in ("image", "object", "class")}

    def to_dict(self) -> dict[str, Any]:
        """Every count and the problem list, as plain JSON-ready values."""
        return {
            "spec": self.spec, "split": self.split, "class_names": list(self.class_names),
            "images": self.num_images, "objects": self.num_objects, "background_images": self.background_images,
            "objects_per_class": self.objects_per_class, "objects_per_image": self.objects_per_image,
            "difficult_objects": self.difficult_objects, "crowd_regions": self.crowd_regions,
            "coco_sizes": self.coco_sizes, "box_sizes": self.box_sizes,
            "resize": None if self.resize is None else list(self.resize),
            "duplicate_boxes": self.duplicate_boxes, "images_listed_twice": self.images_listed_twice,
            "dropped": self.dropped, "problems": [p.to_dict() for p in self.problems],
        }


def data_report(dataset: DetectionDataset, spec: str = "", split: str = "",
                transform: DetectionTransform | None = None) -> DataReport:
    """The report of ``dataset`` (read from ``spec`` at ``split``); sizes after ``transform``'s
    resize too when it is given."""
    annotations = dataset.annotations
    counts = np.array([a.num_objects for a in annotations], dtype=np.int64)
    labels = np.concatenate([a.labels for a in annotations]).astype(np.int64)
    boxes = np.concatenate([a.boxes for a in annotations]).reshape(-1, 4)
    frame = np.repeat([[a.width, a.height] for a in annotations], counts, axis=0).reshape(-1, 2).astype(np.float64)
    sizes = boxes[:, 2:] - boxes[:, :2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / np.maximum(frame, 1)
    areas = np.concatenate([a.areas for a in annotations]).astype(np.float64)
    box_sizes = {"original": _size_quantiles(sizes)}
    resize = None
    if transform is not None:
        resize = (transform.preprocess.min_size, transform.preprocess.max_size)
        scales = np.repeat([resize_factor(a.height, a.width, transform.preprocess) for a in annotations], counts)
        box_sizes["resized"] = _size_quantiles(sizes * scales[:, None])
    pairs = [duplicate_pairs(a.boxes, a.labels) for a in annotations]
    duplicates = [_duplicate_problem(dataset, a, found) for a, found in zip(annotations, pairs) if found]
    listed = Counter(a.image_path for a in annotations)
    twice = [Problem(str(path), f"image is listed {n} times in the split") for path, n in listed.items() if n > 1]
    return DataReport(
        spec=spec, split=split, class_names=dataset.class_names, num_images=len(annotations),
        background_images=int((counts == 0).sum()),
        objects_per_class={name: int((labels == n).sum()) for n, name in enumerate(dataset.class_names, start=1)},
        objects_per_image={"mean": round(float(counts.mean()), 3) if len(counts) else 0.0,
                           "median": float(np.median(counts)) if len(counts) else 0.0,
                           "max": int(counts.max(initial=0))},
        difficult_objects=int(sum(a.difficult.sum() for a in annotations)),
        crowd_regions=int(sum(len(a.ignore_boxes) for a in annotations)),
        coco_sizes={"small": int((areas < COCO_SMALL).sum()),
                    "medium": int(((areas >= COCO_SMALL) & (areas < COCO_MEDIUM)).sum()),
                    "large": int((areas >= COCO_MEDIUM).sum())},
        box_sizes=box_sizes, resize=resize,
        duplicate_boxes=sum(len(found) for found in pairs),
        images_listed_twice=len(twice),
        problems=tuple(dataset.problems) + tuple(duplicates) + tuple(twice),
        labels=labels, centres=centres, sizes=sizes)


def _size_quantiles(sizes: np.ndarray) -> dict[str, dict[str, float]]:
    """Quantiles of width, height, sqrt(area) and aspect ratio (width / height) of (n, 2) sizes."""
    widths, heights = sizes[:, 0], sizes[:, 1]
    columns = {"width": widths, "height": heights, "sqrt_area": np.sqrt(widths * heights),
               "aspect": widths / np.maximum(heights, 1e-9)}
    if not len(sizes):
        return {name: {} for name in columns}
    return {name: {key: round(float(np.quantile(values, q)), 3) for key, q in QUANTILES.items()}
            for name, values in columns.items()}


def duplicate_pairs(boxes: np.ndarray, labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of boxes (n, 4) of the same label whose IoU is at least DUPLICATE_IOU."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    width = np.clip(np.minimum(x2[:, None], x2) - np.maximum(x1[:, None], x1), 0, None)
    height = np.clip(np.minimum(y2[:, None], y2) - np.maximum(y1[:, None], y1), 0, None)
    inter = width * height
    area = (x2 - x1) * (y2 - y1)
    iou = inter / np.maximum(area[:, None] + area - inter, 1e-12)
    same = (labels[:, None] == labels) & np.triu(np.ones((len(boxes),) * 2, dtype=bool), 1)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(same & (iou >= DUPLICATE_IOU)))]


def _duplicate_problem(dataset: DetectionDataset, annotation: Any, pairs: list[tuple[int, int]]) -> Problem:
    shown = ", ".join(f"{dataset.class_names[annotation.labels[i] - 1]} objects {i} and {j}" for i, j in pairs[:3])
    return Problem(str(annotation.image_path), f"boxes of one class overlapping with IoU >= {DUPLICATE_IOU}: {shown}",
                   item=f"{len(pairs)} duplicate box{'es' if len(pairs) > 1 else ''}")


def summary(report: DataReport) -> str:
    """One paragraph: images, objects per class, sizes, problems (what ``frcnn train`` prints)."""
    classes = ", ".join(f"{name} {n}" for name, n in report.objects_per_class.items())
    sentences = [f"{report.spec or 'data'} {report.split}: {report.num_images} images "
                 f"({report.background_images} without objects), {report.num_objects} objects "
                 f"({report.objects_per_image['mean']:g} per image, at most {report.objects_per_image['max']}) "
                 f"of {len(report.class_names)} classes: {classes}."]
    original = report.box_sizes["original"]["sqrt_area"]
    if original:
        sizes = (f"Box size sqrt(w h): median {original['median']:.0f} px, "
                 f"5-95% {original['p5']:.0f}-{original['p95']:.0f} px")
        resized = report.box_sizes.get("resized", {}).get("sqrt_area")
        if resized:
            sizes += (f"; after the resize to {report.resize[0]}-{report.resize[1]} px median {resized['median']:.0f}, "
                      f"5-95% {resized['p5']:.0f}-{resized['p95']:.0f} px")
        total = max(report.num_objects, 1)
        buckets = ", ".join(f"{n / total:.0%} {name}" for name, n in report.coco_sizes.items())
        sentences.append(f"{sizes} (COCO: {buckets}).")
    dropped = report.dropped
    if any(dropped.values()):
        sentences.append(f"Dropped {dropped['image']} images, {dropped['object']} bad objects and "
                         f"{dropped['class']} objects of other classes (data.on_bad / data.unknown_classes skip).")
    if report.duplicate_boxes or report.images_listed_twice:
        sentences.append(f"Found {report.duplicate_boxes} duplicate boxes and {report.images_listed_twice} images "
                         "listed twice.")
    if len(report.problems):
        sentences.append(f"First problem: {report.problems[0]}; 'frcnn data {report.spec}"
                         f"{' --split ' + report.split if report.split else ''}' lists all {len(report.problems)}.")
    return " ".join(sentences)


def format_report(report: DataReport) -> str:
    """The whole report as aligned text (what ``frcnn data`` prints)."""
    lines = [f"dataset {report.spec} split {report.split}",
             f"images              {report.num_images}",
             f"  without objects   {report.background_images}",
             f"  listed twice      {report.images_listed_twice}",
             f"objects             {report.num_objects}",
             f"  per image         mean {report.objects_per_image['mean']:g}, median "
             f"{report.objects_per_image['median']:g}, max {report.objects_per_image['max']}",
             f"  difficult         {report.difficult_objects}",
             f"  crowd regions     {report.crowd_regions}",
             f"  duplicate boxes   {report.duplicate_boxes}",
             "  COCO sizes        " + ", ".join(f"{name} {n}" for name, n in report.coco_sizes.items()),
             "", f"{'class':<20} {'objects':>8}"]
    lines += [f"{name:<20} {n:>8}" for name, n in report.objects_per_class.items()]
    for stage, columns in report.box_sizes.items():
        title = "box sizes (px)" if stage == "original" else f"resized {report.resize[0]}-{report.resize[1]}"
        lines += ["", f"{title:<20} " + " ".join(f"{key:>8}" for key in QUANTILES)]
        lines += [f"{name:<20} " + " ".join(f"{values.get(key, float('nan')):>8.1f}" if name != "aspect" else
                                            f"{values.get(key, float('nan')):>8.2f}" for key in QUANTILES)
                  for name, values in columns.items()]
    dropped = report.dropped
    lines += ["", f"problems            {len(report.problems)} (dropped: {dropped['image']} images, "
                  f"{dropped['object']} objects, {dropped['class']} objects of other classes)"]
    lines += [f"  {problem}" + (f"  [dropped {problem.dropped}]" if problem.dropped else "")
              for problem in report.problems]
    return "\n".join(lines)


def plot_labels(report_or_dataset: DataReport | DetectionDataset, path: str | Path) -> Path:
    """Write the labels picture to ``path`` (PNG, written atomically) and return the path:
    objects per class, box centres (fractions of the image), and box width against height in
    original pixels (log scales, with COCO's small / medium / large limits)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    report = report_or_dataset if isinstance(report_or_dataset, DataReport) else data_report(report_or_dataset)
    names = report.class_names
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = [palette(n % palette.N) for n in range(len(names))]
    figure = Figure(figsize=(15, 4.6), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    counts_axis, centres_axis, sizes_axis = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 1, 1.1]})
    counts = [report.objects_per_class[name] for name in names]
    positions = np.arange(len(names))
    counts_axis.barh(positions, counts, color=colours)
    counts_axis.set_yticks(positions, names if len(names) <= 40 else [""] * len(names))
    counts_axis.invert_yaxis()
    counts_axis.set_xlabel("objects")
    counts_axis.set_title(f"objects per class ({report.num_objects} in {report.num_images} images)")
    for y, n in zip(positions, counts):
        counts_axis.annotate(str(n), (n, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    counts_axis.margins(x=0.15)
    point_colours = [colours[label - 1] for label in report.labels]
    marker = max(2.0, min(12.0, 6000.0 / max(len(report.labels), 1)))
    centres_axis.scatter(report.centres[:, 0], report.centres[:, 1], s=marker, c=point_colours, alpha=0.5, linewidths=0)
    centres_axis.set(xlim=(0, 1), ylim=(1, 0), aspect="equal", xlabel="x / image width", ylabel="y / image height",
                     title="box centres")
    if len(report.sizes):
        sizes_axis.scatter(report.sizes[:, 0], report.sizes[:, 1], s=marker, c=point_colours, alpha=0.5, linewidths=0)
        low, high = max(report.sizes.min() * 0.8, 0.5), report.sizes.max() * 1.25
        span = np.geomspace(low, high, 50)
        for limit, name in ((COCO_SMALL, "small | medium"), (COCO_MEDIUM, "medium | large")):
            sizes_axis.plot(span, limit / span, color="0.5", linestyle="--", linewidth=0.8)
            edge = np.sqrt(limit)
            sizes_axis.annotate(name, (edge, edge), xytext=(4, 4), textcoords="offset points", fontsize=8, color="0.35")
        sizes_axis.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), aspect="equal")
    sizes_axis.set(xlabel="box width (px)", ylabel="box height (px)", title="box sizes (original pixels)")
    return write_atomic(path, canvas.print_png)


def check_data(spec: str, split: str, options: ReadOptions = ReadOptions(),
               synthetic: SyntheticConfig = SyntheticConfig(),
               transform: DetectionTransform | None = None) -> DataReport:
    """Read ``spec`` at ``split`` with every skippable problem skipped and counted, so that the
    report lists them all (``options`` gives the class names), and report it. Problems that leave
    nothing to read (a malformed data.yaml, a missing split) still raise DatasetError."""
    lenient = replace(options, on_bad="skip", unknown_classes="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        dataset = build_dataset(spec, split, lenient, synthetic)
    return data_report(dataset, spec, split, transform)


def stopping_problems(report: DataReport, options: ReadOptions) -> list[Problem]:
    """The problems of ``report`` that reading with ``options`` would stop at (not skip)."""
    policy = {"image": options.on_bad, "object": options.on_bad, "class": options.unknown_classes}
    return [p for p in report.problems if p.dropped is not None and policy[p.dropped] == "error"]
