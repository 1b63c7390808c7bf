"""The anchor report of ``frcnn anchors --fit [--suggest]``: the fit, the suggestion, the bounds,
the warnings, as one JSON-ready dict and as a text table (docs/anchors.md)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import write_json_atomic, write_text_atomic
from ..config import AnchorConfig, ModelConfig, to_plain
from ..data import DetectionDataset
from .anchor_fit import STATUS_NAMES, GtFit, anchor_description, anchor_fields, fit_ground_truth, summarize
from .anchor_plot import plot_anchor_fit
from .anchor_search import SAMPLE_IMAGES, Suggestion, suggest_anchors
from .bound import best_possible_iou, level_origins
from .geometry import FeatureGeometry, base_anchors
from .ground_truth import GroundTruth, resized_ground_truth

REPORT_NAME, PLOT_NAME, ANCHORS_NAME = "anchors_fit.json", "anchors_fit.png", "anchors.yaml"

# Boxes with a side below this many pixels after the resize get a warning.
TINY_SIDE = 4.0
# The resize factor the report tries as "a larger resize".
LARGER_RESIZE = 2


@dataclass(frozen=True, eq=False)
class AnchorReport:
    """The JSON-ready ``summary`` and what the picture needs."""

    summary: dict[str, Any]
    gt: GroundTruth
    current: GtFit
    suggestion: Suggestion | None
    strides: tuple[int, ...]


def coverage_bound(gt: GroundTruth, model: ModelConfig, geometry: FeatureGeometry) -> float | None:
    """The largest coverage any anchor shapes could give at the centres of ``model.anchors`` on
    ``geometry``'s levels: the fraction of gts whose best possible IoU (``frcnn.analysis.bound``)
    reaches positive_overlap."""
    if not len(gt):
        return None
    best = best_possible_iou(gt.boxes, geometry.strides, level_origins(base_anchors(model.anchors, geometry.strides)))
    return float((best >= model.rpn.targets.positive_overlap).double().mean())


def alternatives(dataset: DetectionDataset, model: ModelConfig, keep_difficult: bool) -> list[dict[str, Any]]:
    """The coverage bound under a larger resize and with a feature pyramid (finer strides)."""
    preprocess = model.preprocess
    larger = replace(preprocess, min_size=preprocess.min_size * LARGER_RESIZE,
                     max_size=preprocess.max_size * LARGER_RESIZE)
    found = [{"change": f"model.preprocess.min_size={larger.min_size} model.preprocess.max_size={larger.max_size}",
              "coverage_bound": coverage_bound(resized_ground_truth(dataset, larger, keep_difficult),
                                               replace(model, preprocess=larger), FeatureGeometry(model.backbone))}]
    if not model.backbone.fpn:
        pyramid = replace(model.backbone, fpn=True)
        geometry = FeatureGeometry(pyramid)
        found.append({"change": f"--fpn (strides {', '.join(map(str, geometry.strides))})",
                      "coverage_bound": coverage_bound(resized_ground_truth(dataset, preprocess, keep_difficult),
                                                       model, geometry)})
    return found


def tiny_boxes(gt: GroundTruth) -> dict[str, Any]:
    """How many gts have a side below TINY_SIDE pixels after the resize."""
    sides = torch.minimum(gt.boxes[:, 2] - gt.boxes[:, 0], gt.boxes[:, 3] - gt.boxes[:, 1])
    count = int((sides < TINY_SIDE).sum())
    return {"side_below": TINY_SIDE, "gts": count, "fraction": count / len(gt) if len(gt) else None}


def anchor_report(dataset: DetectionDataset, model: ModelConfig, *, suggest: bool = False,
                  anchors_per_cell: int | None = None, keep_difficult: bool = False,
                  sample_images: int = SAMPLE_IMAGES, seed: int = 0,
                  progress: Callable[[str], None] | None = None) -> AnchorReport:
    """The fit of ``model``'s anchors on ``dataset`` and, with ``suggest``, better anchors."""
    gt = resized_ground_truth(dataset, model.preprocess, keep_difficult)
    geometry = FeatureGeometry(model.backbone)
    current = fit_ground_truth(gt, model, geometry)
    summary = {"anchors": anchor_description(model, geometry.strides), **summarize(gt, current, geometry.strides),
               "coverage_bound": coverage_bound(gt, model, geometry), "tiny_boxes": tiny_boxes(gt)}
    suggestion = None
    if suggest:
        suggestion = suggest_anchors(gt, model, current, anchors_per_cell=anchors_per_cell,
                                     sample_images=sample_images, seed=seed, progress=progress)
        fit = summarize(gt, suggestion.fit, geometry.strides)
        summary["suggested"] = {**anchor_fields(suggestion.anchors),
                                **{key: fit[key] for key in (*STATUS_NAMES, "positives_per_gt", "best_iou")},
                                "by_size": fit["by_size"],
                                "search": {"sample_images": min(sample_images, gt.num_images),
                                           "anchor_sets_tried": suggestion.evaluations,
                                           "sample_coverage_current": suggestion.sample_current.coverage,
                                           "sample_coverage_suggested": suggestion.sample_suggested.coverage}}
        summary["alternatives"] = alternatives(dataset, model, keep_difficult)
    summary["warnings"] = warnings(summary)
    return AnchorReport(summary, gt, current, suggestion, geometry.strides)


def warnings(summary: dict[str, Any]) -> list[str]:
    """Plain sentences about tiny boxes and a coverage that anchors alone cannot raise."""
    found = []
    tiny = summary["tiny_boxes"]
    if tiny["gts"]:
        found.append(f"{tiny['gts']} gt boxes ({tiny['fraction']:.1%}) have a side below {TINY_SIDE:g} px after "
                     f"the resize; no anchor of these strides fits them well")
    bound, threshold = summary["coverage_bound"], summary["anchors"]["positive_overlap"]
    if bound is not None and bound < 0.5:
        line = (f"no choice of anchor shapes can cover more than {bound:.1%} of the gts: at strides "
                f"{summary['anchors']['strides']} most boxes sit too far from every anchor centre to reach "
                f"IoU {threshold:g}")
        better = [alt for alt in summary.get("alternatives", []) if (alt["coverage_bound"] or 0) > bound]
        if better:
            line += "; " + "; ".join(f"{alt['change']}: up to {alt['coverage_bound']:.1%}" for alt in better)
        found.append(line)
    return found


def anchors_yaml(anchors: AnchorConfig) -> str:
    """A configuration file that sets ``model.anchors`` and nothing else."""
    return yaml.safe_dump({"model": {"anchors": to_plain(anchors)}}, sort_keys=False)


def format_report(summary: dict[str, Any]) -> str:
    """The headline figures (current and, when there, suggested side by side), the size buckets,
    the levels, the bound and the warnings, as text."""
    suggested = summary.get("suggested")
    anchors = summary["anchors"]
    lines = [f"{summary['images']} images, {summary['gts']} gt boxes; strides {anchors['strides']}, "
             f"positive IoU >= {anchors['positive_overlap']:g}"]
    header = f"{'':<22} {'current':>12}" + (f" {'suggested':>12}" if suggested else "")
    lines += ["", header]

    def row(name: str, current: Any, proposed: Any = None, fmt: str = "{:>12.4f}") -> str:
        shown = [fmt.format(v) if isinstance(v, (int, float)) else f"{'-' if v is None else v:>12}"
                 for v in ([current, proposed] if suggested else [current])]
        return f"{name:<22} " + " ".join(shown)

    def scales(fields: dict[str, Any]) -> str:  # unused where per-level sizes are set
        return "-" if "sizes" in fields else _short(fields["scales"])

    lines.append(row("scales", scales(anchors), scales(suggested) if suggested else None))
    lines.append(row("ratios", _short(anchors["ratios"]), _short(suggested["ratios"]) if suggested else None))
    if "sizes" in anchors or (suggested and "sizes" in suggested):
        for level, stride in enumerate(anchors["strides"]):
            lines.append(row(f"sizes at stride {stride} (px)", _short(_level_sizes(anchors, level, stride)),
                             _short(_level_sizes(suggested, level, stride)) if suggested else None))
    for key in (*STATUS_NAMES, "positives_per_gt"):
        lines.append(row(key, summary[key], suggested[key] if suggested else None))
    lines.append(row("best_iou mean", summary["best_iou"]["mean"],
                     suggested["best_iou"]["mean"] if suggested else None))
    for name, figures in summary["by_size"].items():
        lines.append(row(f"coverage {name} ({figures['gts']})", figures["coverage"],
                         suggested["by_size"][name]["coverage"] if suggested else None))
    for name, figures in summary.get("by_level", {}).items():
        lines.append(row(f"gts best at {name}", figures["gts"], None, "{:>12d}"))
    if summary["coverage_bound"] is not None:
        lines += ["", f"coverage bound (best possible anchor shape per gt): {summary['coverage_bound']:.4f}"]
    for alternative in summary.get("alternatives", []):
        bound = alternative["coverage_bound"]
        lines.append(f"  with {alternative['change']}: {'-' if bound is None else f'{bound:.4f}'}")
    lines += [f"warning: {line}" for line in summary["warnings"]]
    return "\n".join(lines)


def _level_sizes(anchors: dict[str, Any], level: int, stride: int) -> list[float]:
    """The anchor sides in pixels of one level, from a report's ``scales`` and ``sizes`` fields."""
    if "sizes" not in anchors:
        return [scale * stride for scale in anchors["scales"]]
    sizes = anchors["sizes"]
    return sizes[level if len(sizes) > 1 else 0]


def _short(values: list[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def save_report(report: AnchorReport, model: ModelConfig, out: str | Path) -> list[Path]:
    """Write anchors_fit.json, anchors_fit.png and (with a suggestion) anchors.yaml into ``out``,
    each atomically; the paths written."""
    out = Path(out)
    written = [write_json_atomic(out / REPORT_NAME, report.summary),
               plot_anchor_fit(report.gt, report.current, report.suggestion, report.strides, model, out / PLOT_NAME)]
    if report.suggestion is not None:
        written.append(write_text_atomic(out / ANCHORS_NAME, anchors_yaml(report.suggestion.anchors)))
    return written
