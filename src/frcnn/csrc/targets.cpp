// The anchor target layer's last step in one pass per image: labels, balanced sampling, loss
// weights, matched gt and regression targets from the per-anchor match. The twin is the
// PyTorch-op path of frcnn.anchor_targets.targets.finish_targets, and the rules are those of
// docs/anchor_targets.md (Labels, Sampling, Targets and Weights).
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels.h"

namespace {

// Everything the per-anchor pass of one image reads, by pointer into (B, N) or (B, K, 4) inputs.
template <typename scalar_t>
struct Inputs {
  const scalar_t* max_iou;
  const int32_t* target_gt;
  const bool* low_quality;
  const bool* inside;
  const bool* has_gt;
  const bool* excluded;  // may be null
  const int32_t* keys;   // null: no subsampling
  const scalar_t* gt_codes;
  const scalar_t* anchor_codes;
  const scalar_t* anchor_scales;
  int64_t num_anchors, num_gt;
};

struct Rules {
  double negative_overlap, positive_overlap, positive_weight;
  bool clobber_positives;
  int64_t num_fg, batch_size;
  double bbox_weights[4];
  bool weighted;
};

struct Outputs {
  int64_t* labels;
  int64_t* matched_gt;
  void* targets;
  void* inside_weights;
  void* outside_weights;
};

// Positive and negative anchors of image b by frcnn.anchor_targets.targets.classify (in the
// match's dtype: an image without gt has infinite thresholds), less the excluded negatives.
template <typename scalar_t>
void classify_row(const Inputs<scalar_t>& in, const Rules& rules, int64_t b, bool* positive, bool* negative) {
  constexpr scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  const bool has_gt = in.has_gt[b];
  const scalar_t below_threshold = has_gt ? static_cast<scalar_t>(rules.negative_overlap) : inf;
  const scalar_t positive_threshold = has_gt ? static_cast<scalar_t>(rules.positive_overlap) : inf;
  const int64_t offset = b * in.num_anchors;
  const scalar_t* iou = in.max_iou + offset;
  const uint8_t* low_quality = reinterpret_cast<const uint8_t*>(in.low_quality + offset);
  const uint8_t* inside = reinterpret_cast<const uint8_t*>(in.inside + offset);
  uint8_t* __restrict is_positive = reinterpret_cast<uint8_t*>(positive);
  uint8_t* __restrict is_negative = reinterpret_cast<uint8_t*>(negative);
  // The count in a local: a uint8 store may alias any field of ``in``, which would keep the
  // compiler from counting the iterations (and vectorising).
  const int64_t size = in.num_anchors;
  // Branch-free over uint8 masks (0 or 1), one loop per rule, so that each vectorises.
  if (rules.clobber_positives) {
    for (int64_t n = 0; n < size; ++n) {
      const uint8_t below = iou[n] < below_threshold;
      const uint8_t above = (iou[n] >= positive_threshold) | low_quality[n];
      is_positive[n] = above & (below ^ 1) & inside[n];
      is_negative[n] = below & inside[n];
    }
  } else {
    for (int64_t n = 0; n < size; ++n) {
      const uint8_t below = iou[n] < below_threshold;
      const uint8_t above = (iou[n] >= positive_threshold) | low_quality[n];
      is_positive[n] = above & inside[n];
      is_negative[n] = below & (above ^ 1) & inside[n];
    }
  }
  if (in.excluded != nullptr) {
    const uint8_t* excluded = reinterpret_cast<const uint8_t*>(in.excluded + offset);
    for (int64_t n = 0; n < size; ++n) {
      is_negative[n] &= excluded[n] ^ 1;
    }
  }
}

// frcnn.anchor_targets.targets.outside_weights for one image with these counts: the weight of a
// positive and of a negative anchor. "weight / count" in the twin is reciprocal(count) * weight.
template <typename scalar_t>
void outside_values(int64_t positives, int64_t negatives, double positive_weight, scalar_t* of_positive,
                    scalar_t* of_negative) {
  auto per_image = [](int64_t count, double weight) {
    const scalar_t reciprocal = scalar_t(1) / static_cast<scalar_t>(count > 1 ? count : 1);
    return count > 0 ? reciprocal * static_cast<scalar_t>(weight) : scalar_t(0);
  };
  if (positive_weight < 0) {
    *of_positive = *of_negative = per_image(positives + negatives, 1.0);
  } else {
    *of_positive = per_image(positives, positive_weight);
    *of_negative = per_image(negatives, 1.0 - positive_weight);
  }
}

template <typename scalar_t>
void finish_row(const Inputs<scalar_t>& in, const Rules& rules, int64_t b, const Outputs& out,
                std::vector<uint8_t>& masks, frcnn::SampleBuffers& buffers) {
  const int64_t size = in.num_anchors, offset = b * size;
  bool* positive = reinterpret_cast<bool*>(masks.data());
  bool* negative = positive + size;
  classify_row(in, rules, b, positive, negative);
  int64_t positives = 0, negatives = 0;
  if (in.keys != nullptr) {
    bool* keep_positive = negative + size;
    bool* keep_negative = keep_positive + size;
    std::fill(keep_positive, keep_negative + size, false);
    std::tie(positives, negatives) = frcnn::sample_row(positive, negative, in.keys + offset, size, rules.num_fg,
                                                       rules.batch_size, keep_positive, keep_negative, buffers);
    positive = keep_positive;
    negative = keep_negative;
  }
  // Branch-free loops over uint8 masks, each of which vectorises.
  const uint8_t* is_positive = reinterpret_cast<const uint8_t*>(positive);
  const uint8_t* is_negative = reinterpret_cast<const uint8_t*>(negative);
  if (in.keys == nullptr) {
    for (int64_t n = 0; n < size; ++n) {
      positives += is_positive[n];
      negatives += is_negative[n];
    }
  }
  scalar_t of_positive, of_negative;
  outside_values<scalar_t>(positives, negatives, rules.positive_weight, &of_positive, &of_negative);

  const int32_t* target_gt = in.target_gt + offset;
  int64_t* __restrict labels = out.labels + offset;
  int64_t* __restrict matched_gt = out.matched_gt + offset;
  scalar_t* __restrict inside_weights = static_cast<scalar_t*>(out.inside_weights) + offset;
  scalar_t* __restrict outside_weights = static_cast<scalar_t*>(out.outside_weights) + offset;
  // Arithmetic on the 0/1 masks, not selects (exact: x * 1 + 0 * y is x for the finite,
  // non-negative weights), one output type per loop and through int32, so that each vectorises
  // with the baseline instruction set (which has no int64 multiply or int64-to-float conversion).
  for (int64_t n = 0; n < size; ++n) {
    labels[n] =
        static_cast<int64_t>(2 * static_cast<int32_t>(is_positive[n]) + static_cast<int32_t>(is_negative[n]) - 1);
  }
  for (int64_t n = 0; n < size; ++n) {
    matched_gt[n] = static_cast<int64_t>(((target_gt[n] + 1) & -static_cast<int32_t>(is_positive[n])) - 1);
  }
  for (int64_t n = 0; n < size; ++n) {
    const scalar_t p = static_cast<scalar_t>(static_cast<int32_t>(is_positive[n]));
    const scalar_t q = static_cast<scalar_t>(static_cast<int32_t>(is_negative[n]));
    inside_weights[n] = p;
    outside_weights[n] = p * of_positive + q * of_negative;
  }

  // Each anchor's target code (an anchor without a target takes its own: its deltas come out
  // exactly zero, as in the twin), then the deltas over all 4 N values at once, which vectorises.
  const bool has_gt = in.has_gt[b];
  const bool* inside = in.inside + offset;
  const scalar_t* gt_codes = in.gt_codes + b * in.num_gt * 4;
  scalar_t* __restrict targets = static_cast<scalar_t*>(out.targets) + offset * 4;
  for (int64_t n = 0; n < size; ++n) {
    const scalar_t* source = (inside[n] && has_gt) ? gt_codes + target_gt[n] * 4 : in.anchor_codes + n * 4;
    std::memcpy(targets + n * 4, source, 4 * sizeof(scalar_t));
  }
  const scalar_t* __restrict codes = in.anchor_codes;
  const scalar_t* __restrict scales = in.anchor_scales;
  for (int64_t i = 0; i < 4 * size; ++i) {
    targets[i] = (targets[i] - codes[i]) / scales[i];
  }
  if (rules.weighted) {
    const scalar_t weights[4] = {
        static_cast<scalar_t>(rules.bbox_weights[0]), static_cast<scalar_t>(rules.bbox_weights[1]),
        static_cast<scalar_t>(rules.bbox_weights[2]), static_cast<scalar_t>(rules.bbox_weights[3])};
    for (int64_t n = 0; n < size; ++n) {
      for (int64_t c = 0; c < 4; ++c) {
        targets[n * 4 + c] = targets[n * 4 + c] * weights[c];
      }
    }
  }
}

}  // namespace

std::vector<at::Tensor> finish_targets(const at::Tensor& max_iou, const at::Tensor& target_gt,
                                       const at::Tensor& low_quality, const at::Tensor& inside,
                                       const at::Tensor& has_gt, const c10::optional<at::Tensor>& excluded,
                                       const c10::optional<at::Tensor>& keys, const at::Tensor& gt_codes,
                                       const at::Tensor& anchor_codes, const at::Tensor& anchor_scales,
                                       double negative_overlap, double positive_overlap, bool clobber_positives,
                                       int64_t num_fg, int64_t batch_size, double positive_weight,
                                       std::vector<double> bbox_weights) {
  const int64_t batch = max_iou.size(0), size = max_iou.size(1);
  auto is_mask = [&](const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kBool && t.sizes() == max_iou.sizes();
  };
  TORCH_CHECK(max_iou.device().is_cpu() && max_iou.dim() == 2 && target_gt.scalar_type() == at::kInt &&
                  target_gt.sizes() == max_iou.sizes() && is_mask(low_quality) && is_mask(inside) &&
                  has_gt.scalar_type() == at::kBool && has_gt.dim() == 1 && has_gt.size(0) == batch,
              "expected the match (B, N) and has_gt (B,) on the CPU");
  TORCH_CHECK(!excluded.has_value() || is_mask(*excluded), "excluded must be a (B, N) bool mask");
  TORCH_CHECK(!keys.has_value() || (keys->scalar_type() == at::kInt && keys->sizes() == max_iou.sizes()),
              "keys must be (B, N) int32");
  TORCH_CHECK(gt_codes.dim() == 3 && gt_codes.size(0) == batch && gt_codes.size(2) == 4 &&
                  anchor_codes.sizes() == at::IntArrayRef({size, 4}) && anchor_scales.sizes() == anchor_codes.sizes() &&
                  gt_codes.scalar_type() == max_iou.scalar_type() &&
                  anchor_codes.scalar_type() == max_iou.scalar_type() &&
                  anchor_scales.scalar_type() == max_iou.scalar_type(),
              "expected gt codes (B, K, 4) and anchor codes and scales (N, 4) in the match's dtype");
  TORCH_CHECK(bbox_weights.size() == 4, "expected four bbox weights");
  TORCH_CHECK(!keys.has_value() || (0 <= num_fg && num_fg <= batch_size), "expected 0 <= num_fg <= batch_size");
  const auto iou = max_iou.contiguous();
  const auto gt_index = target_gt.contiguous();
  const auto low = low_quality.contiguous();
  const auto in_image = inside.contiguous();
  const auto with_gt = has_gt.contiguous();
  const auto excluded_mask = excluded.has_value() ? excluded->contiguous() : at::Tensor();
  const auto sample_keys = keys.has_value() ? keys->contiguous() : at::Tensor();
  const auto gt_code = gt_codes.contiguous();
  const auto codes = anchor_codes.contiguous();
  const auto scales = anchor_scales.contiguous();

  auto labels = at::empty({batch, size}, iou.options().dtype(at::kLong));
  auto matched_gt = at::empty({batch, size}, iou.options().dtype(at::kLong));
  auto targets = at::empty({batch, size, 4}, iou.options());
  auto inside_weights = at::empty({batch, size}, iou.options());
  auto outside_weights = at::empty({batch, size}, iou.options());
  Rules rules{negative_overlap,
              positive_overlap,
              positive_weight,
              clobber_positives,
              num_fg,
              batch_size,
              {bbox_weights[0], bbox_weights[1], bbox_weights[2], bbox_weights[3]},
              false};
  rules.weighted = !(bbox_weights[0] == 1 && bbox_weights[1] == 1 && bbox_weights[2] == 1 && bbox_weights[3] == 1);
  Outputs out{labels.data_ptr<int64_t>(), matched_gt.data_ptr<int64_t>(), targets.data_ptr(), inside_weights.data_ptr(),
              outside_weights.data_ptr()};
  AT_DISPATCH_FLOATING_TYPES(iou.scalar_type(), "finish_targets", [&] {
    Inputs<scalar_t> in{iou.data_ptr<scalar_t>(),
                        gt_index.data_ptr<int32_t>(),
                        low.data_ptr<bool>(),
                        in_image.data_ptr<bool>(),
                        with_gt.data_ptr<bool>(),
                        excluded_mask.defined() ? excluded_mask.data_ptr<bool>() : nullptr,
                        sample_keys.defined() ? sample_keys.data_ptr<int32_t>() : nullptr,
                        gt_code.data_ptr<scalar_t>(),
                        codes.data_ptr<scalar_t>(),
                        scales.data_ptr<scalar_t>(),
                        size,
                        gt_code.size(1)};
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> masks(4 * size);
      frcnn::SampleBuffers buffers;
      for (int64_t b = begin; b < end; ++b) {
        finish_row(in, rules, b, out, masks, buffers);
      }
    });
  });
  return {labels, targets, inside_weights, outside_weights, matched_gt};
}
