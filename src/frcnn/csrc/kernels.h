// Declarations shared by the sources of frcnn's compiled CPU kernels (bound in bindings.cpp).
// Only the ATen headers they use: torch/extension.h would take most of the build's time.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace frcnn {

template <typename scalar_t>
struct SameSizeInt;
template <>
struct SameSizeInt<float> {
  using type = int32_t;
};
template <>
struct SameSizeInt<double> {
  using type = int64_t;
};

// a where mask is all ones, b where it is zero: a bitwise select, which vectorises on plain SSE2
// where a conditional does not.
template <typename scalar_t, typename mask_t>
inline scalar_t pick(mask_t mask, scalar_t a, scalar_t b) {
  mask_t bits_a, bits_b;
  std::memcpy(&bits_a, &a, sizeof a);
  std::memcpy(&bits_b, &b, sizeof b);
  const mask_t bits = (bits_a & mask) | (bits_b & ~mask);
  scalar_t out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// A candidate for sampling: its key and its index.
struct Candidate {
  int32_t key;
  int64_t index;
};

// Scratch for sample_row, reused across the rows a thread samples.
struct SampleBuffers {
  std::vector<Candidate> positives, negatives;
};

// frcnn.sampling.sample_balanced for one row: marks in keep_positive (zeroed, size entries) the
// num_fg positives with the largest keys and in keep_negative (zeroed) the batch_size - kept
// negatives with the largest keys; equal keys at the cut go to the lower index. Linear time.
// Returns the numbers of kept positives and kept negatives.
std::pair<int64_t, int64_t> sample_row(const bool* positive, const bool* negative, const int32_t* keys, int64_t size,
                                       int64_t num_fg, int64_t batch_size, bool* keep_positive, bool* keep_negative,
                                       SampleBuffers& buffers);

// The running best of one anchor over gts in ascending order: (ratio, inter, sum, gt) replace the
// held ones when ratio is strictly larger, so that the lowest gt index keeps a tie. Bitwise
// selects, which vectorise.
template <typename scalar_t>
inline void keep_better(scalar_t ratio, scalar_t inter, scalar_t sum, int32_t gt, scalar_t& best_ratio,
                        scalar_t& best_inter, scalar_t& best_sum, int32_t& best_gt) {
  using mask_t = typename SameSizeInt<scalar_t>::type;
  const mask_t mask = -static_cast<mask_t>(ratio > best_ratio);
  best_ratio = pick(mask, ratio, best_ratio);
  best_inter = pick(mask, inter, best_inter);
  best_sum = pick(mask, sum, best_sum);
  const int32_t gt_mask = static_cast<int32_t>(mask);
  best_gt = (gt & gt_mask) | (best_gt & ~gt_mask);
}

}  // namespace frcnn

// grid_matching.cpp: overlaps, ranking and low-quality matches over grid levels.
std::vector<at::Tensor> axis_overlaps(const at::Tensor& y, const at::Tensor& x, const at::Tensor& boxes,
                                      const at::Tensor& valid, const at::Tensor& im_info, c10::optional<double> border,
                                      double offset);
at::Tensor last_dim_max(const at::Tensor& values);
void rank_gts(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& area_sum, at::Tensor best_gt,
              at::Tensor max_iou);
void low_quality_gt(const at::Tensor& heights, const at::Tensor& widths, const at::Tensor& max_height,
                    const at::Tensor& max_width, const at::Tensor& eligible, at::Tensor hits,
                    const c10::optional<at::Tensor>& target);

// box_matching.cpp: matching arbitrary (N, 4) anchors with gt boxes.
std::vector<at::Tensor> bin_anchors(const at::Tensor& anchors, const at::Tensor& area);
std::vector<at::Tensor> rank_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                                   const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                                   const at::Tensor& valid, const at::Tensor& part, double offset);
at::Tensor low_quality_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                             const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                             const at::Tensor& valid, const at::Tensor& part, double offset,
                             const at::Tensor& column_best, const at::Tensor& gt_best);

// recognition.cpp: the cell structure of a plain anchor tensor and its areas.
std::vector<int64_t> level_shape(const at::Tensor& boxes);
bool same_areas(const at::Tensor& anchors, const at::Tensor& base, double offset);

// sampling.cpp: sampling keys and the balanced selection by them.
at::Tensor random_keys(const at::Tensor& seed, int64_t count);
std::vector<at::Tensor> sample_balanced(const at::Tensor& positive, const at::Tensor& negative, const at::Tensor& keys,
                                        int64_t num_fg, int64_t batch_size);

// targets.cpp: labels, sampling, weights and regression targets from the match.
std::vector<at::Tensor> finish_targets(const at::Tensor& max_iou, const at::Tensor& target_gt,
                                       const at::Tensor& low_quality, const at::Tensor& inside,
                                       const at::Tensor& has_gt, const c10::optional<at::Tensor>& excluded,
                                       const c10::optional<at::Tensor>& keys, const at::Tensor& gt_codes,
                                       const at::Tensor& anchor_codes, const at::Tensor& anchor_scales,
                                       double negative_overlap, double positive_overlap, bool clobber_positives,
                                       int64_t num_fg, int64_t batch_size, double positive_weight,
                                       std::vector<double> bbox_weights);
