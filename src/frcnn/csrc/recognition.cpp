// Recognising a grid level in a plain (M, 4) anchor tensor: its cell structure, and whether every
// anchor's own area is its base shape's. Twins: the PyTorch-op paths of
// frcnn/anchor_targets/recognition.py, which compute the same answers with the same float
// operations; the caller still checks the rebuilt grid against the anchors with torch.equal.
#include <cmath>
#include <vector>

#include "kernels.h"

namespace {

constexpr int64_t kMaxBaseShapes = 1024;  // recognition._MAX_BASE_SHAPES

// How many leading cells, every step-th row of boxes from row 0, are boxes[0] shifted by
// 0, 1, ... strides along axis (0: x, 1: y), the shift computed as AnchorGrid computes it:
// float(k) * stride, added to the two coordinates of the axis.
template <typename scalar_t>
int64_t leading_run(const scalar_t* boxes, int64_t rows, int64_t step, scalar_t stride, int64_t axis) {
  const scalar_t* origin = boxes;
  int64_t run = 0;
  for (int64_t k = 0; k * step < rows; ++k, ++run) {
    const scalar_t* box = boxes + k * step * 4;
    const scalar_t shift = static_cast<scalar_t>(k) * stride;
    for (int64_t c = 0; c < 4; ++c) {
      const scalar_t expected = (c % 2 == axis) ? origin[c] + shift : origin[c];
      if (!(box[c] == expected)) {
        return run;
      }
    }
  }
  return run;
}

template <typename scalar_t>
std::vector<int64_t> shape_of(const scalar_t* boxes, int64_t rows) {
  const int64_t last = std::min<int64_t>(rows - 1, kMaxBaseShapes + 1);
  for (int64_t i = 1; i <= last; ++i) {
    scalar_t delta[4];
    for (int64_t c = 0; c < 4; ++c) {
      delta[c] = boxes[i * 4 + c] - boxes[c];
    }
    const bool along_x = delta[0] == delta[2] && delta[1] == 0 && delta[3] == 0 && delta[0] > 0;
    const bool along_y = delta[1] == delta[3] && delta[0] == 0 && delta[2] == 0 && delta[1] > 0;
    if (!(along_x || along_y)) {
      continue;
    }
    const double stride = static_cast<double>(delta[along_x ? 0 : 1]);
    if (stride != std::nearbyint(stride)) {
      return {0, 0, 0, 0};
    }
    const scalar_t step = static_cast<scalar_t>(stride);
    const int64_t width = along_x ? leading_run<scalar_t>(boxes, rows, i, step, 0) : 1;
    const int64_t height = leading_run<scalar_t>(boxes, rows, i * width, step, 1);
    return {i, static_cast<int64_t>(stride), height, width};
  }
  return {0, 0, 0, 0};
}

}  // namespace

// recognition._level_shape: (A, stride, H, W) of the grid that the leading anchors of boxes
// (M, 4) suggest (A base shapes up to the first copy of boxes[0] shifted along one axis), or
// zeros when there is no such copy or its shift is not a whole number.
std::vector<int64_t> level_shape(const at::Tensor& boxes) {
  TORCH_CHECK(boxes.device().is_cpu() && boxes.dim() == 2 && boxes.size(1) == 4 && boxes.size(0) > 0,
              "expected non-empty (M, 4) CPU boxes");
  const auto b = boxes.contiguous();
  std::vector<int64_t> shape;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "level_shape",
                             [&] { shape = shape_of<scalar_t>(b.data_ptr<scalar_t>(), b.size(0)); });
  return shape;
}

// recognition._same_areas: whether anchor n of anchors (M, 4) has the area of base shape n mod A
// of base (A, 4), both by (x2 - x1 + offset) * (y2 - y1 + offset) in their dtype.
bool same_areas(const at::Tensor& anchors, const at::Tensor& base, double offset) {
  TORCH_CHECK(anchors.device().is_cpu() && base.device().is_cpu() && anchors.dim() == 2 && anchors.size(1) == 4 &&
                  base.dim() == 2 && base.size(1) == 4 && base.size(0) > 0 && anchors.size(0) % base.size(0) == 0 &&
                  anchors.scalar_type() == base.scalar_type(),
              "expected anchors (M, 4) and base shapes (A, 4) of one dtype, A dividing M");
  const auto a = anchors.contiguous();
  const auto s = base.contiguous();
  bool same = true;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "same_areas", [&] {
    const scalar_t plus = static_cast<scalar_t>(offset);
    auto area = [plus](const scalar_t* box) { return (box[2] - box[0] + plus) * (box[3] - box[1] + plus); };
    const scalar_t* boxes = a.data_ptr<scalar_t>();
    const scalar_t* shapes = s.data_ptr<scalar_t>();
    const int64_t num_base = s.size(0), rows = a.size(0);
    std::vector<scalar_t> base_area(num_base);
    for (int64_t i = 0; i < num_base; ++i) {
      base_area[i] = area(shapes + i * 4);
    }
    for (int64_t n = 0; n < rows && same; ++n) {
      same = area(boxes + n * 4) == base_area[n % num_base];
    }
  });
  return same;
}
