// The grid matching kernels of frcnn/anchor_targets/grid_matching.py and geometry.py. Each is the
// twin of a PyTorch-op path (named below) and computes the same values bit for bit: the same
// operations in the same dtype, built without fused multiply-adds (see frcnn/native.py).
//
// The dense steps of the anchor target layer are fused into sweeps that skip zero overlaps.
// heights (R, K, H) and widths (R, K, W) are the row and column overlaps of the anchors of R
// (image, anchor shape) pairs with K gts: anchor (r, y, x) meets gt k in
// heights[r, k, y] * widths[r, k, x].
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
      : data(view.data_ptr<value_t>()),
        shapes(view.size(1)),
        image_stride(view.stride(0)),
        shape_stride(view.stride(1)),
        row_stride(view.stride(2)),
        column_stride(view.stride(3)) {}

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
  using mask_t = typename frcnn::SameSizeInt<scalar_t>::type;
  std::vector<scalar_t> ratio_buffer(width);
  std::vector<int32_t> gt_buffer(width);
  scalar_t* __restrict ratios = ratio_buffer.data();
  int32_t* __restrict gts = gt_buffer.data();
  for (int64_t row = begin; row < end; ++row) {
    const int64_t pair = row / height;
    const int64_t y = row % height;
    // Every ratio is >= 0, so an anchor that meets no gt ends at (ratio 0, gt 0), where a
    // first-index argmax over all-zero ratios ends; a strict > keeps the lowest tied index.
    std::fill(ratios, ratios + width, scalar_t(0));
    std::fill(gts, gts + width, 0);
    for (int64_t k = 0; k < num_gt; ++k) {
      const int64_t index = pair * num_gt + k;
      const scalar_t h = heights[index * height + y];
      if (!(h > 0)) {
        continue;  // ratio 0 on the whole row: never above the running best
      }
      const scalar_t s = area_sum[index];
      const scalar_t* __restrict w = widths + index * width;
      const int32_t code = static_cast<int32_t>(k);
      // Outside [start, stop) the column overlap and the ratio are 0. Only the ratio and the gt
      // are carried: the winner's intersection is recomputed below, to the same bits.
      for (int64_t x = start[index]; x < stop[index]; ++x) {
        const scalar_t ratio = (h * w[x]) / s;
        const mask_t mask = -static_cast<mask_t>(ratio > ratios[x]);
        ratios[x] = frcnn::pick(mask, ratio, ratios[x]);
        const int32_t gt_mask = static_cast<int32_t>(mask);
        gts[x] = (code & gt_mask) | (gts[x] & ~gt_mask);
      }
    }
    int32_t* best_row = best.row(pair, y);
    scalar_t* iou_row = max_iou.row(pair, y);
    for (int64_t x = 0; x < width; ++x) {
      const int64_t index = pair * num_gt + gts[x];
      const scalar_t inter = heights[index * height + y] * widths[index * width + x];
      const scalar_t sum = area_sum[index];
      best_row[x * best.column_stride] = gts[x];
      iou_row[x * max_iou.column_stride] = inter / (sum - inter);
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

}  // namespace

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

namespace {

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

}  // namespace

// Per anchor, whether it is one of some eligible gt k's best anchors (its row overlap equals
// max_height[k] and its column overlap max_width[k]), written into hits (B, a, H, W) bool; with
// target (B, a, H, W) int32, the highest such gt replaces the anchor's target there.
void low_quality_gt(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& max_height,
                    const at::Tensor& max_width, const at::Tensor& eligible, at::Tensor hits,
                    const c10::optional<at::Tensor>& target) {
  check_overlaps(heights, widths, max_height);
  TORCH_CHECK(max_width.sizes() == max_height.sizes() && eligible.sizes() == max_height.sizes() &&
                  max_height.scalar_type() == heights.scalar_type() &&
                  max_width.scalar_type() == heights.scalar_type() && eligible.scalar_type() == at::kBool,
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

namespace {

// The overlap lengths of anchor extents [starts, ends] (A, L) with the [lo, hi] extents of boxes
// (B, K, 4), times a mask: out (B, A, K, L). axis_overlap then axis_overlaps's masking in
// frcnn.anchor_targets.geometry, for finite inputs: min(end, hi) - max(start, lo), plus offset,
// clamped at 0, and zero where the anchor's extent is outside the border (inside (B, A, L)) or
// for an invalid box (when mask_valid). One short loop per step, each of which vectorises.
template <typename scalar_t>
void axis_overlap(const scalar_t* starts, const scalar_t* ends, const scalar_t* boxes, int64_t lo_column,
                  const bool* valid, bool mask_valid, const bool* inside, int64_t pairs, int64_t num_base,
                  int64_t num_boxes, int64_t length, scalar_t offset, scalar_t* out) {
  using mask_t = typename frcnn::SameSizeInt<scalar_t>::type;
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t b = pair / num_base, a = pair % num_base;
      const scalar_t* __restrict first = starts + a * length;
      const scalar_t* __restrict last = ends + a * length;
      const uint8_t* in_border = inside == nullptr ? nullptr : reinterpret_cast<const uint8_t*>(inside + pair * length);
      for (int64_t k = 0; k < num_boxes; ++k) {
        const scalar_t* box = boxes + (b * num_boxes + k) * 4;
        const scalar_t lo = box[lo_column], hi = box[lo_column + 2];
        scalar_t* __restrict row = out + (pair * num_boxes + k) * length;
        if (mask_valid && !valid[b * num_boxes + k]) {
          std::fill(row, row + length, scalar_t(0));
          continue;
        }
        for (int64_t i = 0; i < length; ++i) {
          const scalar_t top = last[i] < hi ? last[i] : hi;
          const scalar_t bottom = first[i] > lo ? first[i] : lo;
          row[i] = top - bottom;
        }
        if (offset != 0) {
          for (int64_t i = 0; i < length; ++i) {
            row[i] += offset;
          }
        }
        for (int64_t i = 0; i < length; ++i) {
          row[i] = row[i] < 0 ? scalar_t(0) : row[i];
        }
        if (in_border != nullptr) {
          for (int64_t i = 0; i < length; ++i) {
            row[i] = frcnn::pick(-static_cast<mask_t>(in_border[i]), row[i], scalar_t(0));
          }
        }
      }
    }
  });
}

// Whether anchor extents [starts, ends] (A, L) lie in [-border, limit + border) of each image:
// (B, A, L), limit the im_info column (height or width); the comparisons in scalar_t, as the twin's.
template <typename scalar_t>
at::Tensor axis_inside(const at::Tensor& starts, const at::Tensor& ends, const at::Tensor& im_info, int64_t column,
                       double border) {
  const int64_t batch = im_info.size(0), count = starts.numel();
  auto inside = at::empty({batch, starts.size(0), starts.size(1)}, starts.options().dtype(at::kBool));
  const scalar_t* first = starts.data_ptr<scalar_t>();
  const scalar_t* last = ends.data_ptr<scalar_t>();
  const scalar_t* info = im_info.data_ptr<scalar_t>();
  const scalar_t low = -static_cast<scalar_t>(border);
  bool* out = inside.data_ptr<bool>();
  for (int64_t b = 0; b < batch; ++b) {
    const scalar_t high = info[b * 3 + column] + static_cast<scalar_t>(border);
    for (int64_t i = 0; i < count; ++i) {
      out[b * count + i] = first[i] >= low && last[i] < high;
    }
  }
  return inside;
}

}  // namespace

// frcnn.anchor_targets.geometry.axis_overlaps for a level's extents y (A, H, 2) and x (A, W, 2):
// heights (B, A, K, H), widths (B, A, K, W) and, with a border, inside_y (B, A, H) and
// inside_x (B, A, W) (undefined without one).
std::vector<at::Tensor> axis_overlaps(const at::Tensor& y, const at::Tensor& x, const at::Tensor& boxes,
                                      const at::Tensor& valid, const at::Tensor& im_info, c10::optional<double> border,
                                      double offset) {
  TORCH_CHECK(y.device().is_cpu() && x.device().is_cpu() && boxes.device().is_cpu() && valid.device().is_cpu() &&
                  im_info.device().is_cpu(),
              "CPU tensors only");
  TORCH_CHECK(y.dim() == 3 && y.size(2) == 2 && x.dim() == 3 && x.size(2) == 2 && x.size(0) == y.size(0) &&
                  boxes.dim() == 3 && boxes.size(2) == 4 && valid.dim() == 2 && valid.size(0) == boxes.size(0) &&
                  valid.size(1) == boxes.size(1) && valid.scalar_type() == at::kBool && im_info.dim() == 2 &&
                  im_info.size(0) == boxes.size(0) && im_info.size(1) == 3,
              "expected extents (A, H, 2) and (A, W, 2), boxes (B, K, 4), valid (B, K) bool and im_info (B, 3)");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && boxes.scalar_type() == y.scalar_type() &&
                  im_info.scalar_type() == y.scalar_type(),
              "extents, boxes and im_info must share a floating dtype");
  const auto box = boxes.contiguous(), ok = valid.contiguous(), info = im_info.contiguous();
  const auto y_starts = y.select(2, 0).contiguous(), y_ends = y.select(2, 1).contiguous();
  const auto x_starts = x.select(2, 0).contiguous(), x_ends = x.select(2, 1).contiguous();
  const int64_t batch = box.size(0), num_boxes = box.size(1), num_base = y.size(0);
  const int64_t height = y.size(1), width = x.size(1);
  auto heights = at::empty({batch, num_base, num_boxes, height}, y.options());
  auto widths = at::empty({batch, num_base, num_boxes, width}, y.options());
  at::Tensor inside_y, inside_x;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "axis_overlaps", [&] {
    if (border.has_value()) {
      inside_y = axis_inside<scalar_t>(y_starts, y_ends, info, 0, *border);
      inside_x = axis_inside<scalar_t>(x_starts, x_ends, info, 1, *border);
    }
    const scalar_t step = static_cast<scalar_t>(offset);
    const scalar_t* box_data = box.data_ptr<scalar_t>();
    axis_overlap<scalar_t>(y_starts.data_ptr<scalar_t>(), y_ends.data_ptr<scalar_t>(), box_data, 1, ok.data_ptr<bool>(),
                           false, border.has_value() ? inside_y.data_ptr<bool>() : nullptr, batch * num_base, num_base,
                           num_boxes, height, step, heights.data_ptr<scalar_t>());
    axis_overlap<scalar_t>(x_starts.data_ptr<scalar_t>(), x_ends.data_ptr<scalar_t>(), box_data, 0, ok.data_ptr<bool>(),
                           true, border.has_value() ? inside_x.data_ptr<bool>() : nullptr, batch * num_base, num_base,
                           num_boxes, width, step, widths.data_ptr<scalar_t>());
  });
  return {heights, widths, inside_y, inside_x};
}

// values.amax(dim=-1) for a floating tensor (..., L) with L > 0 (NaN propagates, as in amax).
// Eight running maxima side by side hide the compare-select latency that makes torch's reduction
// over a short contiguous last dimension slow; the maximum of a set does not depend on the order.
at::Tensor last_dim_max(const at::Tensor& values) {
  TORCH_CHECK(values.device().is_cpu() && values.dim() >= 1 && values.size(-1) > 0,
              "expected a CPU tensor (..., L) with L > 0");
  const auto v = values.contiguous();
  const int64_t length = v.size(-1), rows = v.numel() / length;
  auto maxima = at::empty(v.sizes().slice(0, v.dim() - 1), v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "last_dim_max", [&] {
    constexpr int64_t kLanes = 8;
    auto larger = [](scalar_t value, scalar_t best) { return (value > best || value != value) ? value : best; };
    const scalar_t* data = v.data_ptr<scalar_t>();
    scalar_t* out = maxima.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = data + r * length;
        scalar_t lanes[kLanes];
        std::fill(lanes, lanes + kLanes, row[0]);
        int64_t i = 0;
        for (; i + kLanes <= length; i += kLanes) {
          for (int64_t j = 0; j < kLanes; ++j) {
            lanes[j] = larger(row[i + j], lanes[j]);
          }
        }
        scalar_t best = row[0];
        for (; i < length; ++i) {
          best = larger(row[i], best);
        }
        for (int64_t j = 0; j < kLanes; ++j) {
          best = larger(lanes[j], best);
        }
        out[r] = best;
      }
    });
  });
  return maxima;
}
