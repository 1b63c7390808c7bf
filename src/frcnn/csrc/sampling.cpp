// Balanced sampling by random keys: the keys themselves (a splitmix64 stream) and the selection
// of the positives and negatives with the largest keys. Twins: frcnn/sampling.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels.h"

namespace frcnn {

namespace {

// Stronger means kept first: the larger key, then the lower index.
inline bool stronger(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// Moves the count strongest of candidates[0, found) to the front; returns how many there are.
int64_t keep_strongest(std::vector<Candidate>& candidates, int64_t found, int64_t count) {
  if (found > count) {
    std::nth_element(candidates.begin(), candidates.begin() + count, candidates.begin() + found, stronger);
    return count;
  }
  return found;
}

// Writes the candidates of mask whose key is at least threshold to the front of out (grown to
// size entries) and returns their number. Branch-free: every anchor is written and the count
// advances only for a candidate, as a branch on random keys would mispredict often.
int64_t collect(const bool* mask, const int32_t* keys, int64_t size, int64_t threshold, std::vector<Candidate>& out) {
  if (static_cast<int64_t>(out.size()) < size) {
    out.resize(size);
  }
  Candidate* slots = out.data();
  const uint8_t* is_candidate = reinterpret_cast<const uint8_t*>(mask);
  int64_t found = 0;
  for (int64_t n = 0; n < size; ++n) {
    slots[found] = {keys[n], n};
    found += is_candidate[n] & static_cast<uint8_t>(keys[n] >= threshold);
  }
  return found;
}

}  // namespace

void sample_row(const bool* positive, const bool* negative, const int32_t* keys, int64_t size, int64_t num_fg,
                int64_t batch_size, bool* keep_positive, bool* keep_negative, std::vector<Candidate>& chosen) {
  const int64_t kept = keep_strongest(chosen, collect(positive, keys, size, 0, chosen), num_fg);
  for (int64_t i = 0; i < kept; ++i) {
    keep_positive[chosen[i].index] = true;
  }
  const int64_t num_bg = batch_size - kept;
  const int64_t num_neg = std::count(negative, negative + size, true);
  // Keys are uniform, so about 4 num_bg negatives clear this threshold; the exact top num_bg
  // are among them whenever at least num_bg do (else all negatives are collected).
  const double share = num_neg > 0 ? 4.0 * static_cast<double>(num_bg) / static_cast<double>(num_neg) : 1.0;
  const int64_t threshold = share >= 1.0 ? 0 : static_cast<int64_t>((1.0 - share) * 2147483648.0);
  int64_t found = collect(negative, keys, size, threshold, chosen);
  if (found < num_bg && threshold > 0) {
    found = collect(negative, keys, size, 0, chosen);
  }
  const int64_t kept_negatives = keep_strongest(chosen, found, std::max<int64_t>(num_bg, 0));
  for (int64_t i = 0; i < kept_negatives; ++i) {
    keep_negative[chosen[i].index] = true;
  }
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
    std::vector<frcnn::Candidate> chosen;
    for (int64_t b = begin; b < end; ++b) {
      frcnn::sample_row(pos.data_ptr<bool>() + b * size, neg.data_ptr<bool>() + b * size,
                        key.data_ptr<int32_t>() + b * size, size, num_fg, batch_size,
                        keep_pos.data_ptr<bool>() + b * size, keep_neg.data_ptr<bool>() + b * size, chosen);
    }
  });
  return {keep_pos, keep_neg};
}
