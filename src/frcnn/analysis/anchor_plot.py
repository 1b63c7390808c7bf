"""``anchors_fit.png``: each gt's best anchor IoU by size bucket (current and suggested anchors),
and the boxes' width-height scatter with the anchor shapes drawn over it."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import save_figure_atomic
from ..config import ModelConfig
from .anchor_fit import COVERED, LOW_QUALITY_ONLY, SIZE_LIMITS, UNMATCHED, GtFit
from .anchor_search import Suggestion
from .geometry import base_anchors
from .ground_truth import GroundTruth

SCATTER_POINTS = 4000


def plot_anchor_fit(gt: GroundTruth, current: GtFit, suggested: Suggestion | None, strides: Sequence[int],
                    model: ModelConfig, path: str | Path) -> Path:
    """Draw the fit of ``model``'s anchors (the current ones, ``current`` on ``gt``) and of the
    ``suggested`` ones, on feature maps of ``strides``, into the PNG ``path``, atomically."""
    figure = Figure(figsize=(13, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, len(SIZE_LIMITS), height_ratios=(1, 1.3))
    threshold = model.rpn.targets.positive_overlap
    size_rank = torch.bucketize(gt.areas, torch.tensor([limit for _, limit in SIZE_LIMITS[:-1]],
                                                       dtype=torch.float64), right=True)
    for rank, (name, _) in enumerate(SIZE_LIMITS):
        axes = figure.add_subplot(grid[0, rank])
        mask = size_rank == rank
        axes.set_title(f"{name} gts ({int(mask.sum())}): best anchor IoU")
        if not mask.any():
            axes.text(0.5, 0.5, "no gt boxes of this size", ha="center", va="center", transform=axes.transAxes)
            axes.set_axis_off()
            continue
        series = [("current", current, "tab:red")]
        if suggested is not None and suggested.anchors != model.anchors:
            series.append(("suggested", suggested.fit, "tab:blue"))
        for label, fit, colour in series:
            values = fit.best_iou[mask].numpy()
            covered = float((fit.status[mask] == COVERED).double().mean())
            axes.hist(values, bins=40, range=(0, 1), histtype="step", linewidth=1.8, color=colour,
                      label=f"{label}: coverage {covered:.3f}")
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1)
        axes.text(threshold, 0.98, f" {threshold:g}", transform=axes.get_xaxis_transform(), va="top", fontsize=9)
        axes.set_xlabel("best IoU over the anchors that take part")
        axes.set_ylabel("gt boxes")
        axes.legend(loc="upper left", fontsize=9)

    axes = figure.add_subplot(grid[1, :])
    widths, heights = (gt.boxes[:, 2] - gt.boxes[:, 0]), (gt.boxes[:, 3] - gt.boxes[:, 1])
    shown = torch.randperm(len(gt), generator=torch.Generator().manual_seed(0))[:SCATTER_POINTS]
    status = current.status[shown]
    # Covered last, on top: they are the few.
    for code, label, colour in (
        (UNMATCHED, "unmatched", "tab:gray"),
        (LOW_QUALITY_ONLY, "low-quality only", "tab:orange"),
        (COVERED, "covered", "tab:green"),
    ):
        pick = shown[status == code]
        axes.scatter(widths[pick].clamp(min=0.5).numpy(), heights[pick].clamp(min=0.5).numpy(), s=4, alpha=0.35,
                     color=colour, label=f"gt, {label} by the current anchors", linewidths=0)
    anchor_sets = [("current anchors", model.anchors, "tab:red", "x")]
    if suggested is not None and suggested.anchors != model.anchors:
        anchor_sets.append(("suggested anchors", suggested.anchors, "tab:blue", "+"))
    for label, anchors, colour, marker in anchor_sets:
        shapes = torch.cat(base_anchors(anchors, tuple(strides)))
        axes.scatter((shapes[:, 2] - shapes[:, 0]).numpy(), (shapes[:, 3] - shapes[:, 1]).numpy(), s=90,
                     marker=marker, color=colour, linewidths=2.2, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("width after the resize (px)")
    axes.set_ylabel("height after the resize (px)")
    axes.set_title(f"gt shapes ({min(len(gt), SCATTER_POINTS)} shown) and anchor shapes "
                   f"(strides {', '.join(map(str, strides))})")
    legend = axes.legend(loc="upper left", fontsize=9)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    for handle in legend.legend_handles[:3]:  # the gt points, drawn tiny
        handle.set_sizes([30])
    axes.grid(True, which="both", alpha=0.25)
    return save_figure_atomic(figure, path)
