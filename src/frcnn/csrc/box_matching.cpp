// Matching arbitrary anchors (an (N, 4) tensor, no grid structure) with gt boxes, skipping the
// pairs that cannot meet. Twin: frcnn/anchor_targets/box_matching.py, which computes the same values
// bit for bit with dense PyTorch ops (same operations, same dtype, no fused multiply-adds).
//
// The anchors are bucketed once per call (``bin_anchors``): by size class (the binary exponent of
// the longer side), then by x1 and y1 into kBins x kBins cells, with a counting sort that also
// copies them, column by column, into contiguous arrays. An anchor of a class meets a gt only if its
// x1 lies within [gx1 - widest - offset, gx2 + offset] (and likewise y1), so each gt visits, per
// class and x column, one contiguous run of cells.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels.h"

namespace {

constexpr int64_t kClasses = 40;  // size classes: ilogb of the longer side, clamped to [-8, 31]
constexpr int64_t kBins = 32;     // cells per axis and class
constexpr int64_t kColumns = kClasses * kBins;
constexpr int64_t kCells = kColumns * kBins;
constexpr int64_t kGeometry = 6;  // per class: x0, dx, y0, dy, widest, tallest

int64_t size_class(double width, double height) {
  const double side = std::max(width, height);
  if (!(side > 0) || !std::isfinite(side)) {
    return 0;
  }
  uint64_t bits;
  std::memcpy(&bits, &side, sizeof bits);
  const int64_t exponent = static_cast<int64_t>((bits >> 52) & 0x7ff) - 1023;  // ilogb for normal numbers
  return std::clamp<int64_t>(exponent + 8, 0, kClasses - 1);
}

int64_t bin_of(double value, double origin, double step) {
  if (!std::isfinite(value)) {
    return value > 0 ? kBins - 1 : 0;
  }
  const double bin = std::floor((value - origin) / step);
  return bin < 0 ? 0 : bin >= kBins ? kBins - 1 : static_cast<int64_t>(bin);
}

// [first, last] bins of a class (origin, step, longest extent ``reach`` along the axis) whose
// anchors may meet the box extent [lo, hi]; first > last when none may.
std::pair<int64_t, int64_t> candidate_bins(double lo, double hi, double reach, double offset, double origin,
                                           double step) {
  // A generous margin: a superset of cells costs a little time, never a wrong value.
  const double margin = 1e-3 * (std::fabs(lo) + std::fabs(hi) + reach + 1.0);
  const double last_start = hi + offset + margin;
  if (last_start < origin) {
    return {1, 0};
  }
  return {bin_of(lo - reach - offset - margin, origin, step), bin_of(last_start, origin, step)};
}

// The bucketed anchors: binned (5, N) rows x1, y1, x2, y2, area by bucketed position, perm (N,)
// their original indices, cell_start (kCells + 1,), geometry (kClasses, kGeometry) double.
template <typename scalar_t>
struct Layout {
  const scalar_t* x1;
  const scalar_t* y1;
  const scalar_t* x2;
  const scalar_t* y2;
  const scalar_t* area;
  const int64_t* perm;
  const int64_t* cell_start;
  const double* geometry;
  int64_t size;

  // The bucketed positions [begin, end) of column ``column`` whose anchors may meet box g.
  std::pair<int64_t, int64_t> candidates(int64_t column, const scalar_t* g, double offset) const {
    const double* geo = geometry + (column / kBins) * kGeometry;
    const auto columns = candidate_bins(g[0], g[2], geo[4], offset, geo[0], geo[1]);
    const int64_t x_bin = column % kBins;
    const auto rows = candidate_bins(g[1], g[3], geo[5], offset, geo[2], geo[3]);
    if (x_bin < columns.first || x_bin > columns.second || rows.first > rows.second) {
      return {0, 0};
    }
    return {cell_start[column * kBins + rows.first], cell_start[column * kBins + rows.second + 1]};
  }
};

template <typename scalar_t>
Layout<scalar_t> layout_of(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                           const at::Tensor& geometry) {
  TORCH_CHECK(binned.dim() == 2 && binned.size(0) == 5 && binned.is_contiguous() && perm.scalar_type() == at::kLong &&
                  perm.numel() == binned.size(1) && cell_start.scalar_type() == at::kLong &&
                  cell_start.numel() == kCells + 1 && geometry.scalar_type() == at::kDouble &&
                  geometry.numel() == kClasses * kGeometry && perm.is_contiguous() && cell_start.is_contiguous() &&
                  geometry.is_contiguous(),
              "expected the layout of bin_anchors");
  const scalar_t* rows = binned.data_ptr<scalar_t>();
  const int64_t n = binned.size(1);
  return {rows,
          rows + n,
          rows + 2 * n,
          rows + 3 * n,
          rows + 4 * n,
          perm.data_ptr<int64_t>(),
          cell_start.data_ptr<int64_t>(),
          geometry.data_ptr<double>(),
          n};
}

void check_gts(const at::Tensor& binned, const at::Tensor& gt, const at::Tensor& gt_area, const at::Tensor& valid,
               const at::Tensor& part) {
  for (const auto* t : {&binned, &gt, &gt_area, &valid, &part}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(), "contiguous CPU tensors only");
  }
  const int64_t batch = gt.size(0), k = gt.size(1);
  TORCH_CHECK(gt.dim() == 3 && gt.size(2) == 4 && gt_area.sizes() == at::IntArrayRef({batch, k}) &&
                  valid.sizes() == gt_area.sizes() && part.sizes() == at::IntArrayRef({batch, binned.size(1)}),
              "expected gt (B, K, 4), gt_area and valid (B, K), part (B, N)");
  TORCH_CHECK(gt.scalar_type() == binned.scalar_type() && gt_area.scalar_type() == binned.scalar_type() &&
                  valid.scalar_type() == at::kBool && part.scalar_type() == at::kBool,
              "binned anchors, gt and gt_area share a floating dtype; valid and part are bool");
}

// The intersection of the anchor at bucketed position p with box g, times part (0 or 1):
// (row overlap * column overlap) * part, each overlap clamped at 0.
template <typename scalar_t>
inline scalar_t intersection(const Layout<scalar_t>& a, int64_t p, const scalar_t* g, scalar_t offset, scalar_t part) {
  scalar_t h = std::min(a.y2[p], g[3]) - std::max(a.y1[p], g[1]) + offset;
  scalar_t w = std::min(a.x2[p], g[2]) - std::max(a.x1[p], g[0]) + offset;
  h = h > 0 ? h : scalar_t(0);
  w = w > 0 ? w : scalar_t(0);
  return (h * w) * part;
}

// part[b, perm[p]] as 0 / 1 for the positions [begin, end) of one image.
template <typename scalar_t>
void gather_part(const bool* part, const int64_t* perm, int64_t begin, int64_t end, std::vector<scalar_t>& out) {
  out.resize(end - begin);
  for (int64_t p = begin; p < end; ++p) {
    out[p - begin] = static_cast<scalar_t>(part[perm[p]]);
  }
}

// The largest of values[0, count), 0 if none is positive; NaN never passes the >. Eight running
// maxima, so that the loop vectorises (a max is exact in any order).
template <typename scalar_t>
scalar_t largest(const scalar_t* __restrict values, int64_t count) {
  constexpr int64_t kLanes = 8;
  scalar_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      lanes[j] = values[i + j] > lanes[j] ? values[i + j] : lanes[j];
    }
  }
  scalar_t top = 0;
  for (; i < count; ++i) {
    top = values[i] > top ? values[i] : top;
  }
  for (int64_t j = 0; j < kLanes; ++j) {
    top = lanes[j] > top ? lanes[j] : top;
  }
  return top;
}

// One gt against the anchors at positions [begin, end) of one column, arrays indexed from the
// column's first position: keeps each anchor's best (ratio, intersection, area sum, gt) under a
// strict > (the lowest gt among ties), and writes every pair's IoU to ious. Without an
// intersection the ratio and the IoU are 0 (or NaN where both areas are 0), so no branch is
// needed; the bitwise selects vectorise.
template <typename scalar_t>
void sweep_gt(const Layout<scalar_t>& a, int64_t first, int64_t begin, int64_t end, const scalar_t* g, scalar_t offset,
              scalar_t g_area, int32_t code, const scalar_t* __restrict parts, scalar_t* __restrict ratios,
              scalar_t* __restrict inters, scalar_t* __restrict sums, int32_t* __restrict gts,
              scalar_t* __restrict ious) {
  const scalar_t* __restrict x1 = a.x1 + first;
  const scalar_t* __restrict y1 = a.y1 + first;
  const scalar_t* __restrict x2 = a.x2 + first;
  const scalar_t* __restrict y2 = a.y2 + first;
  const scalar_t* __restrict area = a.area + first;
  const scalar_t gx1 = g[0], gy1 = g[1], gx2 = g[2], gy2 = g[3];
  for (int64_t slot = begin - first; slot < end - first; ++slot) {
    scalar_t h = std::min(y2[slot], gy2) - std::max(y1[slot], gy1) + offset;
    scalar_t w = std::min(x2[slot], gx2) - std::max(x1[slot], gx1) + offset;
    h = h > 0 ? h : scalar_t(0);
    w = w > 0 ? w : scalar_t(0);
    const scalar_t inter = (h * w) * parts[slot];
    const scalar_t s = area[slot] + g_area;
    const scalar_t ratio = inter / s;
    frcnn::keep_better(ratio, inter, s, code, ratios[slot], inters[slot], sums[slot], gts[slot]);
    ious[slot] = inter / (s - inter);
  }
}

}  // namespace

std::vector<at::Tensor> bin_anchors(const at::Tensor& anchors, const at::Tensor& area) {
  TORCH_CHECK(anchors.device().is_cpu() && anchors.dim() == 2 && anchors.size(1) == 4 && area.dim() == 1 &&
                  area.size(0) == anchors.size(0) && area.scalar_type() == anchors.scalar_type(),
              "expected CPU anchors (N, 4) and their areas (N,)");
  const auto boxes = anchors.to(at::kDouble).contiguous();
  const double* a = boxes.data_ptr<double>();
  const int64_t n = boxes.size(0);
  constexpr double inf = std::numeric_limits<double>::infinity();
  auto geometry = at::empty({kClasses, kGeometry}, boxes.options());
  double* geo = geometry.data_ptr<double>();
  std::vector<double> lo_x(kClasses, inf), hi_x(kClasses, -inf), lo_y(kClasses, inf), hi_y(kClasses, -inf);
  std::vector<double> widest(kClasses, 0), tallest(kClasses, 0);
  std::vector<int64_t> cells(n);
  for (int64_t i = 0; i < n; ++i) {
    const double* box = a + i * 4;
    const int64_t c = cells[i] = size_class(box[2] - box[0], box[3] - box[1]);
    lo_x[c] = std::min(lo_x[c], box[0]);
    hi_x[c] = std::max(hi_x[c], box[0]);
    lo_y[c] = std::min(lo_y[c], box[1]);
    hi_y[c] = std::max(hi_y[c], box[1]);
    widest[c] = std::max(widest[c], box[2] - box[0]);
    tallest[c] = std::max(tallest[c], box[3] - box[1]);
  }
  for (int64_t c = 0; c < kClasses; ++c) {
    const bool used = lo_x[c] <= hi_x[c] && std::isfinite(lo_x[c] + hi_x[c] + lo_y[c] + hi_y[c]);
    double* g = geo + c * kGeometry;
    g[0] = used ? lo_x[c] : 0.0;
    g[1] = used && hi_x[c] > lo_x[c] ? (hi_x[c] - lo_x[c]) / kBins * (1 + 1e-9) : 1.0;
    g[2] = used ? lo_y[c] : 0.0;
    g[3] = used && hi_y[c] > lo_y[c] ? (hi_y[c] - lo_y[c]) / kBins * (1 + 1e-9) : 1.0;
    g[4] = widest[c];
    g[5] = tallest[c];
  }
  auto cell_start = at::zeros({kCells + 1}, boxes.options().dtype(at::kLong));
  auto perm = at::empty({n}, cell_start.options());
  int64_t* start = cell_start.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const double* box = a + i * 4;
    const double* g = geo + cells[i] * kGeometry;
    cells[i] = (cells[i] * kBins + bin_of(box[0], g[0], g[1])) * kBins + bin_of(box[1], g[2], g[3]);
    ++start[cells[i] + 1];
  }
  for (int64_t cell = 0; cell < kCells; ++cell) {
    start[cell + 1] += start[cell];
  }
  std::vector<int64_t> fill(start, start + kCells);
  int64_t* order = perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    order[fill[cells[i]]++] = i;  // ascending original index within a cell
  }
  auto binned = at::empty({5, n}, anchors.options());
  AT_DISPATCH_FLOATING_TYPES(anchors.scalar_type(), "bin_anchors", [&] {
    const auto source = anchors.contiguous();
    const auto areas = area.contiguous();
    const scalar_t* from = source.data_ptr<scalar_t>();
    const scalar_t* from_area = areas.data_ptr<scalar_t>();
    scalar_t* to = binned.data_ptr<scalar_t>();
    for (int64_t p = 0; p < n; ++p) {
      const int64_t i = order[p];
      for (int64_t j = 0; j < 4; ++j) {
        to[j * n + p] = from[i * 4 + j];
      }
      to[4 * n + p] = from_area[i];
    }
  });
  return {binned, perm, cell_start, geometry};
}

// Per anchor, the lowest gt reaching the largest I / (area_a + area_g) and that gt's IoU (0 where
// none meets it): best (B, N) int32, max_iou (B, N); and per (image, class column, gt) the largest
// IoU of a taking-part anchor: column_best (B, kColumns, K).
std::vector<at::Tensor> rank_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                                   const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                                   const at::Tensor& valid, const at::Tensor& part, double offset) {
  check_gts(binned, gt, gt_area, valid, part);
  const int64_t batch = gt.size(0), num_gt = gt.size(1), n = binned.size(1);
  auto best = at::zeros({batch, n}, gt.options().dtype(at::kInt));
  auto max_iou = at::zeros({batch, n}, gt.options());
  auto column_best = at::zeros({batch, kColumns, num_gt}, gt.options());
  AT_DISPATCH_FLOATING_TYPES(gt.scalar_type(), "rank_boxes", [&] {
    const Layout<scalar_t> layout = layout_of<scalar_t>(binned, perm, cell_start, geometry);
    const scalar_t off = static_cast<scalar_t>(offset);
    const scalar_t* gts_at = gt.data_ptr<scalar_t>();
    const scalar_t* gt_areas = gt_area.data_ptr<scalar_t>();
    const bool* is_valid = valid.data_ptr<bool>();
    const bool* parts_at = part.data_ptr<bool>();
    scalar_t* column_maxima = column_best.data_ptr<scalar_t>();
    int32_t* best_at = best.data_ptr<int32_t>();
    scalar_t* max_iou_at = max_iou.data_ptr<scalar_t>();
    at::parallel_for(0, batch * kColumns, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> ratios, inters, sums, parts, ious;
      std::vector<int32_t> gts;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / kColumns, column = task % kColumns;
        const int64_t first = layout.cell_start[column * kBins], last = layout.cell_start[(column + 1) * kBins];
        if (first == last) {
          continue;
        }
        ratios.assign(last - first, 0);
        inters.assign(last - first, 0);
        sums.assign(last - first, 1);
        gts.assign(last - first, 0);
        ious.resize(last - first);
        gather_part(parts_at + b * n, layout.perm, first, last, parts);
        scalar_t* column_max = column_maxima + task * num_gt;
        for (int64_t k = 0; k < num_gt; ++k) {
          if (!is_valid[b * num_gt + k]) {
            continue;
          }
          const scalar_t* g = gts_at + (b * num_gt + k) * 4;
          const auto range = layout.candidates(column, g, offset);
          sweep_gt(layout, first, range.first, range.second, g, off, gt_areas[b * num_gt + k], static_cast<int32_t>(k),
                   parts.data(), ratios.data(), inters.data(), sums.data(), gts.data(), ious.data());
          column_max[k] = largest(ious.data() + (range.first - first), range.second - range.first);
        }
        int32_t* best_out = best_at + b * n;
        scalar_t* iou_out = max_iou_at + b * n;
        for (int64_t p = first; p < last; ++p) {
          const int64_t slot = p - first, i = layout.perm[p];
          best_out[i] = gts[slot];
          iou_out[i] = inters[slot] / (sums[slot] - inters[slot]);
        }
      }
    });
  });
  return {best, max_iou, column_best};
}

// Per anchor, the highest gt k with gt_best[b, k] (NaN where k is not eligible) equal to the
// anchor's IoU with k, or -1: (B, N) int32. column_best from rank_boxes skips the columns that hold
// none of k's best anchors.
at::Tensor low_quality_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                             const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                             const at::Tensor& valid, const at::Tensor& part, double offset,
                             const at::Tensor& column_best, const at::Tensor& gt_best) {
  check_gts(binned, gt, gt_area, valid, part);
  const int64_t batch = gt.size(0), num_gt = gt.size(1), n = binned.size(1);
  TORCH_CHECK(column_best.is_contiguous() && gt_best.is_contiguous() &&
                  column_best.sizes() == at::IntArrayRef({batch, kColumns, num_gt}) &&
                  gt_best.sizes() == at::IntArrayRef({batch, num_gt}) &&
                  column_best.scalar_type() == gt.scalar_type() && gt_best.scalar_type() == gt.scalar_type(),
              "expected column_best from rank_boxes and gt_best (B, K)");
  auto hit_gt = at::full({batch, n}, -1, gt.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(gt.scalar_type(), "low_quality_boxes", [&] {
    const Layout<scalar_t> layout = layout_of<scalar_t>(binned, perm, cell_start, geometry);
    const scalar_t off = static_cast<scalar_t>(offset);
    const scalar_t* gts_at = gt.data_ptr<scalar_t>();
    const scalar_t* gt_areas = gt_area.data_ptr<scalar_t>();
    const scalar_t* targets = gt_best.data_ptr<scalar_t>();
    const scalar_t* column_maxima = column_best.data_ptr<scalar_t>();
    const bool* parts_at = part.data_ptr<bool>();
    int32_t* hits_at = hit_gt.data_ptr<int32_t>();
    at::parallel_for(0, batch * kColumns, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / kColumns, column = task % kColumns;
        const scalar_t* column_max = column_maxima + task * num_gt;
        const bool* image_part = parts_at + b * n;
        int32_t* out = hits_at + b * n;
        for (int64_t k = 0; k < num_gt; ++k) {  // ascending k: the highest hitting gt is the last written
          const scalar_t target = targets[b * num_gt + k];
          if (!(column_max[k] == target)) {
            continue;
          }
          const scalar_t* g = gts_at + (b * num_gt + k) * 4;
          const scalar_t g_area = gt_areas[b * num_gt + k];
          const auto range = layout.candidates(column, g, offset);
          for (int64_t p = range.first; p < range.second; ++p) {
            const int64_t i = layout.perm[p];
            const scalar_t inter = intersection(layout, p, g, off, static_cast<scalar_t>(image_part[i]));
            const scalar_t s = layout.area[p] + g_area;
            if (inter / (s - inter) == target) {
              out[i] = static_cast<int32_t>(k);
            }
          }
        }
      }
    });
  });
  return hit_gt;
}
