// frcnn's compiled CPU kernels. Each is the twin of a PyTorch-op path (named below) and computes
// the same values bit for bit: the same operations in the same dtype, built without fused
// multiply-adds (see frcnn/native.py).
//
// The dense steps of the anchor target layer (frcnn/anchor_targets/) are fused into sweeps that
// skip zero overlaps. heights (R, K, H) and widths (R, K, W) are the row and column overlaps of the anchors of R
// (image, anchor shape) pairs with K gts: anchor (r, y, x) meets gt k in
// heights[r, k, y] * widths[r, k, x].
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "kernels.h"

namespace {

// [start, stop) of the columns where a (pair, gt) overlap is non-zero; start = stop if none.
template <typename scalar_t>
void column_ranges(const scalar_t* widths, int64_t count, int64_t width, int64_t* start, int64_t* stop) {
  at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* w = widths + i * width;
      int64_t first = 0;
      while (first < width && !(w[first] > 0)) {
        ++first;
      }
      int64_t last = width;
      while (last > first && !(w[last - 1] > 0)) {
        --last;
      }
      start[i] = first;
      stop[i] = last;
    }
  });
}

// A (B, a, H, W) output of any strides (a view into the layer's (B, H, W, A) buffers), written
// row by row: (pair = b * a + shape, y) -> the first element of that row, columns stride() apart.
template <typename value_t>
struct StridedRows {
  value_t* data;
  int64_t shapes, image_stride, shape_stride, row_stride, column_stride;

  explicit StridedRows(const at::Tensor& view)
      : data(view.data_ptr<value_t>()), shapes(view.size(1)), image_stride(view.stride(0)),
        shape_stride(view.stride(1)), row_stride(view.stride(2)), column_stride(view.stride(3)) {}

  value_t* row(int64_t pair, int64_t y) const {
    return data + (pair / shapes) * image_stride + (pair % shapes) * shape_stride + y * row_stride;
  }
};

void check_output(const at::Tensor& view, const at::Tensor& heights, int64_t width, at::ScalarType dtype,
                  const char* name) {
  TORCH_CHECK(view.device().is_cpu() && view.dim() == 4 && view.scalar_type() == dtype &&
                  view.size(0) * view.size(1) == heights.size(0) && view.size(2) == heights.size(2) &&
                  view.size(3) == width,
              name, ": expected a (B, a, H, W) CPU view with B a = the pairs of the overlaps");
}

template <typename scalar_t>
void rank_rows(const scalar_t* heights, const scalar_t* widths, const scalar_t* area_sum, const int64_t* start,
               const int64_t* stop, int64_t num_gt, int64_t height, int64_t width, int64_t begin, int64_t end,
               const StridedRows<int32_t>& best, const StridedRows<scalar_t>& max_iou) {
  std::vector<scalar_t> ratio_buffer(width), inter_buffer(width), sum_buffer(width);
  std::vector<int32_t> gt_buffer(width);
  scalar_t* __restrict ratios = ratio_buffer.data();
  scalar_t* __restrict inters = inter_buffer.data();
  scalar_t* __restrict sums = sum_buffer.data();
  int32_t* __restrict gts = gt_buffer.data();
  for (int64_t row = begin; row < end; ++row) {
    const int64_t pair = row / height;
    const int64_t y = row % height;
    // Every ratio is >= 0, so an anchor that meets no gt ends at (ratio 0, gt 0), where a
    // first-index argmax over all-zero ratios ends; a strict > keeps the lowest tied index.
    for (int64_t x = 0; x < width; ++x) {
      ratios[x] = 0;
      inters[x] = 0;
      sums[x] = area_sum[pair * num_gt];
      gts[x] = 0;
    }
    for (int64_t k = 0; k < num_gt; ++k) {
      const int64_t index = pair * num_gt + k;
      const scalar_t h = heights[index * height + y];
      if (!(h > 0)) {
        continue;  // ratio 0 on the whole row: never above the running best
      }
      const scalar_t s = area_sum[index];
      const scalar_t* __restrict w = widths + index * width;
      const int32_t code = static_cast<int32_t>(k);
      // Outside [start, stop) the column overlap and the ratio are 0.
      for (int64_t x = start[index]; x < stop[index]; ++x) {
        const scalar_t inter = h * w[x];
        const scalar_t ratio = inter / s;
        frcnn::keep_better(ratio, inter, s, code, ratios[x], inters[x], sums[x], gts[x]);
      }
    }
    int32_t* best_row = best.row(pair, y);
    scalar_t* iou_row = max_iou.row(pair, y);
    for (int64_t x = 0; x < width; ++x) {
      best_row[x * best.column_stride] = gts[x];
      iou_row[x * max_iou.column_stride] = inters[x] / (sums[x] - inters[x]);
    }
  }
}

void check_overlaps(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& per_gt) {
  TORCH_CHECK(heights.device().is_cpu() && widths.device().is_cpu() && per_gt.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(heights.dim() == 3 && widths.dim() == 3 && per_gt.dim() == 2 && widths.size(0) == heights.size(0) &&
                  widths.size(1) == heights.size(1) && per_gt.size(0) == heights.size(0) &&
                  per_gt.size(1) == heights.size(1),
              "expected heights (R, K, H), widths (R, K, W) and (R, K) per-gt values");
  TORCH_CHECK(widths.scalar_type() == heights.scalar_type(), "heights and widths must share a floating dtype");
}

// Per anchor, the gt with the largest I / (area_a + area_g) (the lowest index among exact ties)
// and that gt's IoU, written into best_gt (B, a, H, W) int32 and max_iou (B, a, H, W) (views of
// any strides); area_sum (R, K) with R = B a.
void rank_gts(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& area_sum, at::Tensor best_gt,
              at::Tensor max_iou) {
  check_overlaps(heights, widths, area_sum);
  TORCH_CHECK(area_sum.scalar_type() == heights.scalar_type(), "area_sum must share the overlaps' dtype");
  const auto h = heights.contiguous();
  const auto w = widths.contiguous();
  const auto s = area_sum.contiguous();
  const int64_t pairs = h.size(0), num_gt = h.size(1), height = h.size(2), width = w.size(2);
  check_output(best_gt, h, width, at::kInt, "best_gt");
  check_output(max_iou, h, width, h.scalar_type(), "max_iou");
  std::vector<int64_t> start(pairs * num_gt), stop(pairs * num_gt);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "rank_gts", [&] {
    const StridedRows<int32_t> best_rows(best_gt);
    const StridedRows<scalar_t> iou_rows(max_iou);
    column_ranges<scalar_t>(w.data_ptr<scalar_t>(), pairs * num_gt, width, start.data(), stop.data());
    at::parallel_for(0, pairs * height, 8, [&](int64_t begin, int64_t end) {
      rank_rows<scalar_t>(h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), start.data(),
                          stop.data(), num_gt, height, width, begin, end, best_rows, iou_rows);
    });
  });
}

template <typename scalar_t>
void low_quality_rows(const scalar_t* heights, const scalar_t* widths, const scalar_t* max_height,
                      const scalar_t* max_width, const bool* eligible, int64_t num_gt, int64_t height, int64_t width,
                      int64_t begin, int64_t end, const StridedRows<bool>& hits, const StridedRows<int32_t>* target) {
  std::vector<int32_t> gt_buffer(width);
  int32_t* __restrict gts = gt_buffer.data();
  for (int64_t row = begin; row < end; ++row) {
    const int64_t pair = row / height;
    const int64_t y = row % height;
    std::fill(gt_buffer.begin(), gt_buffer.end(), -1);
    for (int64_t k = 0; k < num_gt; ++k) {
      const int64_t index = pair * num_gt + k;
      if (!eligible[index] || !(heights[index * height + y] == max_height[index])) {
        continue;
      }
      const scalar_t* __restrict w = widths + index * width;
      const scalar_t target = max_width[index];
      const int32_t code = static_cast<int32_t>(k);
      // Ascending k: the highest hitting gt is the last written.
      for (int64_t x = 0; x < width; ++x) {
        const int32_t mask = -static_cast<int32_t>(w[x] == target);
        gts[x] = (code & mask) | (gts[x] & ~mask);
      }
    }
    bool* hit_row = hits.row(pair, y);
    for (int64_t x = 0; x < width; ++x) {
      hit_row[x * hits.column_stride] = gts[x] >= 0;
    }
    if (target != nullptr) {
      int32_t* target_row = target->row(pair, y);
      for (int64_t x = 0; x < width; ++x) {
        if (gts[x] >= 0) {
          target_row[x * target->column_stride] = gts[x];
        }
      }
    }
  }
}

// Per anchor, whether it is one of some eligible gt k's best anchors (its row overlap equals
// max_height[k] and its column overlap max_width[k]), written into hits (B, a, H, W) bool; with
// target (B, a, H, W) int32, the highest such gt replaces the anchor's target there.
void low_quality_gt(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& max_height,
                    const at::Tensor& max_width, const at::Tensor& eligible, at::Tensor hits,
                    const c10::optional<at::Tensor>& target) {
  check_overlaps(heights, widths, max_height);
  TORCH_CHECK(max_width.sizes() == max_height.sizes() && eligible.sizes() == max_height.sizes() &&
                  max_height.scalar_type() == heights.scalar_type() && max_width.scalar_type() == heights.scalar_type() &&
                  eligible.scalar_type() == at::kBool,
              "max_height, max_width (R, K) in the overlaps' dtype and eligible (R, K) bool");
  const auto h = heights.contiguous();
  const auto w = widths.contiguous();
  const auto mh = max_height.contiguous();
  const auto mw = max_width.contiguous();
  const auto ok = eligible.contiguous();
  const int64_t pairs = h.size(0), num_gt = h.size(1), height = h.size(2), width = w.size(2);
  check_output(hits, h, width, at::kBool, "hits");
  if (target.has_value()) {
    check_output(*target, h, width, at::kInt, "target");
  }
  const StridedRows<bool> hit_rows(hits);
  const std::optional<StridedRows<int32_t>> target_rows =
      target.has_value() ? std::optional<StridedRows<int32_t>>(StridedRows<int32_t>(*target)) : std::nullopt;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "low_quality_gt", [&] {
    at::parallel_for(0, pairs * height, 8, [&](int64_t begin, int64_t end) {
      low_quality_rows<scalar_t>(h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), mh.data_ptr<scalar_t>(),
                                 mw.data_ptr<scalar_t>(), ok.data_ptr<bool>(), num_gt, height, width, begin, end,
                                 hit_rows, target_rows ? &*target_rows : nullptr);
    });
  });
}

// frcnn.sampling.sample_balanced: per row, the num_fg positives with the largest keys, then the
// batch_size - kept negatives with the largest keys. positive, negative (B, N) bool, keys (B, N)
// int32 in [1, 2^31) -> kept positives and kept negatives (B, N) bool. Linear time; top-k keeps
// the same sets except, possibly, between two equal keys at the cut.
std::vector<at::Tensor> sample_balanced(const at::Tensor& positive, const at::Tensor& negative, const at::Tensor& keys,
                                        int64_t num_fg, int64_t batch_size) {
  TORCH_CHECK(positive.device().is_cpu() && negative.device().is_cpu() && keys.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(positive.dim() == 2 && positive.sizes() == negative.sizes() && positive.sizes() == keys.sizes() &&
                  positive.scalar_type() == at::kBool && negative.scalar_type() == at::kBool &&
                  keys.scalar_type() == at::kInt,
              "expected positive, negative (B, N) bool and keys (B, N) int32");
  TORCH_CHECK(0 <= num_fg && num_fg <= batch_size, "expected 0 <= num_fg <= batch_size");
  const auto pos = positive.contiguous();
  const auto neg = negative.contiguous();
  const auto key = keys.contiguous();
  const int64_t rows = pos.size(0), size = pos.size(1);
  auto keep_pos = at::zeros_like(pos);
  auto keep_neg = at::zeros_like(neg);
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<frcnn::Candidate> chosen;
    for (int64_t b = begin; b < end; ++b) {
      frcnn::sample_row(pos.data_ptr<bool>() + b * size, neg.data_ptr<bool>() + b * size,
                        key.data_ptr<int32_t>() + b * size, size, num_fg, batch_size,
                        keep_pos.data_ptr<bool>() + b * size, keep_neg.data_ptr<bool>() + b * size, chosen);
    }
  });
  return {keep_pos, keep_neg};
}

}  // namespace

namespace frcnn {

namespace {

// Stronger means kept first: the larger key, then the lower index.
inline bool stronger(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// Keeps the count strongest of the candidates (all if there are fewer).
void keep_strongest(std::vector<Candidate>& candidates, size_t count) {
  if (candidates.size() > count) {
    std::nth_element(candidates.begin(), candidates.begin() + count, candidates.end(), stronger);
    candidates.resize(count);
  }
}

// The candidates of mask whose key is at least threshold.
void collect(const bool* mask, const int32_t* keys, int64_t size, int64_t threshold, std::vector<Candidate>& out) {
  out.clear();
  for (int64_t n = 0; n < size; ++n) {
    if (mask[n] && keys[n] >= threshold) {
      out.push_back({keys[n], n});
    }
  }
}

}  // namespace

void sample_row(const bool* positive, const bool* negative, const int32_t* keys, int64_t size, int64_t num_fg,
                int64_t batch_size, bool* keep_positive, bool* keep_negative, std::vector<Candidate>& chosen) {
  collect(positive, keys, size, 0, chosen);
  keep_strongest(chosen, static_cast<size_t>(num_fg));
  for (const Candidate& c : chosen) {
    keep_positive[c.index] = true;
  }
  const int64_t num_bg = batch_size - static_cast<int64_t>(chosen.size());
  const int64_t num_neg = std::count(negative, negative + size, true);
  // Keys are uniform, so about 4 num_bg negatives clear this threshold; the exact top num_bg
  // are among them whenever at least num_bg do (else all negatives are collected).
  const double share = num_neg > 0 ? 4.0 * static_cast<double>(num_bg) / static_cast<double>(num_neg) : 1.0;
  const int64_t threshold = share >= 1.0 ? 0 : static_cast<int64_t>((1.0 - share) * 2147483648.0);
  collect(negative, keys, size, threshold, chosen);
  if (static_cast<int64_t>(chosen.size()) < num_bg && threshold > 0) {
    collect(negative, keys, size, 0, chosen);
  }
  keep_strongest(chosen, static_cast<size_t>(std::max<int64_t>(num_bg, 0)));
  for (const Candidate& c : chosen) {
    keep_negative[c.index] = true;
  }
}

}  // namespace frcnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rank_gts", &rank_gts, "Per-anchor best gt and its IoU over a grid level, into given views (CPU)");
  m.def("low_quality_gt", &low_quality_gt, "Per-anchor low-quality hits (and reassigned gt), into given views (CPU)");
  m.def("bin_anchors", &bin_anchors, "Anchors (N, 4) bucketed by size class, x1 and y1 (CPU)");
  m.def("rank_boxes", &rank_boxes, "Per-anchor best gt and its IoU for arbitrary anchors (CPU)");
  m.def("low_quality_boxes", &low_quality_boxes, "Per-anchor highest gt it is a best anchor of, or -1 (CPU)");
  m.def("sample_balanced", &sample_balanced, "Balanced sampling by the largest random keys (CPU)");
  m.def("finish_targets", &finish_targets, "Labels, sampling, weights and regression targets from the match (CPU)");
}
