// Balanced sampling by random keys: the keys themselves (a splitmix64 stream) and the selection
// of the positives and negatives with the largest keys. Twins: frcnn/sampling.py.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace frcnn {

namespace {

// Stronger means kept first: the larger key, then the lower index.
inline bool stronger(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// Marks the count strongest of candidates (all if there are fewer) in keep; returns how many.
int64_t keep_strongest(std::vector<Candidate>& candidates, int64_t count, bool* keep) {
  if (static_cast<int64_t>(candidates.size()) > count) {
    std::nth_element(candidates.begin(), candidates.begin() + count, candidates.end(), stronger);
    candidates.resize(count);
  }
  for (const Candidate& c : candidates) {
    keep[c.index] = true;
  }
  return static_cast<int64_t>(candidates.size());
}

// The number of set entries of a (size,) mask.
int64_t count_set(const bool* mask, int64_t size) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(mask);
  int64_t count = 0;
  for (int64_t n = 0; n < size; ++n) {
    count += bytes[n];
  }
  return count;
}

}  // namespace

std::pair<int64_t, int64_t> sample_row(const bool* positive, const bool* negative, const int32_t* keys, int64_t size,
                                       int64_t num_fg, int64_t batch_size, bool* keep_positive, bool* keep_negative,
                                       SampleBuffers& buffers) {
  const int64_t num_pos = count_set(positive, size), num_neg = count_set(negative, size);
  const int64_t kept_pos = std::min(num_pos, num_fg);
  const int64_t num_bg = std::max<int64_t>(batch_size - kept_pos, 0);
  // A class with no more members than places keeps them all, without collecting them.
  const bool all_pos = num_pos <= num_fg, all_neg = num_neg <= num_bg;
  if (all_pos) {
    std::memcpy(keep_positive, positive, size);
  }
  if (all_neg) {
    std::memcpy(keep_negative, negative, size);
  }
  // Keys are uniform, so about 4 num_bg negatives clear this threshold; the exact top num_bg
  // are among them whenever at least num_bg do (else all negatives are collected).
  const double share = num_neg > 0 ? 4.0 * static_cast<double>(num_bg) / static_cast<double>(num_neg) : 1.0;
  const int64_t threshold = share >= 1.0 ? 0 : static_cast<int64_t>((1.0 - share) * 2147483648.0);
  auto& positives = buffers.positives;
  auto& negatives = buffers.negatives;
  positives.clear();
  negatives.clear();
  if (!(all_pos && all_neg)) {
    // One pass collects both classes; candidates are few, so the branch is mostly predicted.
    const uint8_t* is_positive = reinterpret_cast<const uint8_t*>(positive);
    const uint8_t* is_negative = reinterpret_cast<const uint8_t*>(negative);
    const uint8_t take_pos = all_pos ? 0 : 1, take_neg = all_neg ? 0 : 1;
    for (int64_t n = 0; n < size; ++n) {
      const uint8_t pos = is_positive[n] & take_pos;
      const uint8_t neg = is_negative[n] & take_neg & static_cast<uint8_t>(keys[n] >= threshold);
      if (pos | neg) {
        (pos ? positives : negatives).push_back({keys[n], n});
      }
    }
  }
  if (!all_neg && static_cast<int64_t>(negatives.size()) < num_bg && threshold > 0) {
    negatives.clear();
    for (int64_t n = 0; n < size; ++n) {
      if (negative[n]) {
        negatives.push_back({keys[n], n});
      }
    }
  }
  const int64_t kept_positives = all_pos ? num_pos : keep_strongest(positives, num_fg, keep_positive);
  const int64_t kept_negatives = all_neg ? num_neg : keep_strongest(negatives, num_bg, keep_negative);
  return {kept_positives, kept_negatives};
}

}  // namespace frcnn

// frcnn.sampling.splitmix_keys: key n of a (count,) int32 tensor is the top 31 bits of the n-th
// splitmix64 output from the state seed (state seed + (n + 1) gamma, then the mixing steps), with
// the lowest bit set. Unsigned arithmetic, whose wrap-around the twin's eager int64 tensor ops share.
at::Tensor random_keys(const at::Tensor& seed, int64_t count) {
  TORCH_CHECK(seed.device().is_cpu() && seed.numel() == 1 && seed.scalar_type() == at::kLong,
              "seed must be one int64 value on the CPU");
  TORCH_CHECK(count >= 0, "count must be >= 0");
  const uint64_t start = static_cast<uint64_t>(seed.item<int64_t>());
  auto keys = at::empty({count}, seed.options().dtype(at::kInt));
  int32_t* out = keys.data_ptr<int32_t>();
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      uint64_t z = start + static_cast<uint64_t>(n + 1) * 0x9E3779B97F4A7C15ULL;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      z ^= z >> 31;
      out[n] = static_cast<int32_t>(z >> 33) | 1;
    }
  });
  return keys;
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
    frcnn::SampleBuffers buffers;
    for (int64_t b = begin; b < end; ++b) {
      frcnn::sample_row(pos.data_ptr<bool>() + b * size, neg.data_ptr<bool>() + b * size,
                        key.data_ptr<int32_t>() + b * size, size, num_fg, batch_size,
                        keep_pos.data_ptr<bool>() + b * size, keep_neg.data_ptr<bool>() + b * size, buffers);
    }
  });
  return {keep_pos, keep_neg};
}
