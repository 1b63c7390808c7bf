// The Python bindings of frcnn's compiled CPU kernels (frcnn/native.py builds them). The only
// source that includes torch's Python headers, which take most of a build's time.
#include <torch/python.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("axis_overlaps", &axis_overlaps, "Row and column overlaps of a grid level with boxes (CPU)");
  m.def("last_dim_max", &last_dim_max, "amax over the last dimension (CPU)");
  m.def("rank_gts", &rank_gts, "Per-anchor best gt and its IoU over a grid level, into given views (CPU)");
  m.def("low_quality_gt", &low_quality_gt, "Per-anchor low-quality hits (and reassigned gt), into given views (CPU)");
  m.def("bin_anchors", &bin_anchors, "Anchors (N, 4) bucketed by size class, x1 and y1 (CPU)");
  m.def("rank_boxes", &rank_boxes, "Per-anchor best gt and its IoU for arbitrary anchors (CPU)");
  m.def("low_quality_boxes", &low_quality_boxes, "Per-anchor highest gt it is a best anchor of, or -1 (CPU)");
  m.def("level_shape", &level_shape, "(A, stride, H, W) of the grid a plain anchor tensor starts with (CPU)");
  m.def("same_areas", &same_areas, "Whether every anchor has its base shape's area (CPU)");
  m.def("random_keys", &random_keys, "Sampling keys from a splitmix64 stream (CPU)");
  m.def("sample_balanced", &sample_balanced, "Balanced sampling by the largest random keys (CPU)");
  m.def("finish_targets", &finish_targets, "Labels, sampling, weights and regression targets from the match (CPU)");
}
