// Declarations shared by the sources of frcnn's compiled CPU kernels (see kernels.cpp).
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <cstring>
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

}  // namespace frcnn

// box_matching.cpp: matching arbitrary (N, 4) anchors with gt boxes.
std::vector<at::Tensor> bin_anchors(const at::Tensor& anchors, const at::Tensor& area);
std::vector<at::Tensor> rank_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                                   const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                                   const at::Tensor& valid, const at::Tensor& part, double offset);
at::Tensor low_quality_boxes(const at::Tensor& binned, const at::Tensor& perm, const at::Tensor& cell_start,
                             const at::Tensor& geometry, const at::Tensor& gt, const at::Tensor& gt_area,
                             const at::Tensor& valid, const at::Tensor& part, double offset,
                             const at::Tensor& column_best, const at::Tensor& gt_best);
