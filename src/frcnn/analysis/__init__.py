"""Dataset analyses built on the model's own layers: how well the anchors fit (docs/anchors.md)."""
from .anchor_fit import GtFit, anchor_fit, fit_ground_truth, summarize
from .anchor_plot import plot_anchor_fit
from .anchor_search import Suggestion, suggest_anchors
from .ground_truth import GroundTruth, resized_ground_truth
from .report import AnchorReport, anchor_report, anchors_yaml, format_report, save_report

__all__ = [
    "AnchorReport",
    "GroundTruth",
    "GtFit",
    "Suggestion",
    "anchor_fit",
    "anchor_report",
    "anchors_yaml",
    "fit_ground_truth",
    "format_report",
    "plot_anchor_fit",
    "resized_ground_truth",
    "save_report",
    "suggest_anchors",
    "summarize",
]
