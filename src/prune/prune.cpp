#include "pare/prune/prune.hpp"
#include "pare/prune/prune_channels.hpp"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <mutex>

#include "core/enum_names.hpp"

namespace pare {
namespace {

// Magnitude ranking by radix select: for non-negative IEEE floats the bit
// pattern orders like the value, so |w| becomes an unsigned key (sign bit
// cleared) and the k-th smallest key is found 16 bits at a time with one
// histogram pass each. That reads the weights a few times instead of sorting
// them, which is what makes global pruning of tens of millions of weights cheap.
template <class Float> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; };
template <> struct KeyOf<double> { using type = uint64_t; };

template <class Float>
inline typename KeyOf<Float>::type magnitude_key(Float value) {
  typename KeyOf<Float>::type bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits & (~typename KeyOf<Float>::type(0) >> 1);
}

constexpr int kDigitBits = 16;
constexpr size_t kBins = size_t(1) << kDigitBits;
constexpr int64_t kGrain = 1 << 18;

template <class Float>
class RadixSelect {
 public:
  using Key = typename KeyOf<Float>::type;
  static constexpr int kKeyBits = int(sizeof(Key) * 8);

  RadixSelect(const std::vector<torch::Tensor>& tensors) : tensors_(tensors) {}

  // The key of the `rank`-th smallest magnitude (0-based) and how many keys are below it.
  std::pair<Key, int64_t> select(int64_t rank) const {
    Key prefix = 0, prefix_mask = 0;
    int64_t below = 0;
    for (int shift = kKeyBits - kDigitBits; shift >= 0; shift -= kDigitBits) {
      const auto counts = histogram(prefix, prefix_mask, shift);
      size_t digit = 0;
      while (below + counts[digit] <= rank) below += counts[digit++];
      prefix |= Key(digit) << shift;
      prefix_mask |= Key(kBins - 1) << shift;
    }
    return {prefix, below};
  }

 private:
  std::vector<int64_t> histogram(Key prefix, Key prefix_mask, int shift) const {
    std::vector<int64_t> total(kBins, 0);
    std::mutex merge;
    for (const auto& tensor : tensors_) {
      const Float* data = tensor.data_ptr<Float>();
      at::parallel_for(0, tensor.numel(), kGrain, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> local(kBins, 0);
        for (int64_t i = begin; i < end; ++i) {
          const Key key = magnitude_key(data[i]);
          if ((key & prefix_mask) == prefix) ++local[(key >> shift) & (kBins - 1)];
        }
        std::lock_guard<std::mutex> lock(merge);
        for (size_t b = 0; b < kBins; ++b) total[b] += local[b];
      });
    }
    return total;
  }

  const std::vector<torch::Tensor>& tensors_;
};

template <class Float>
std::vector<torch::Tensor> prune_smallest_typed(const std::vector<torch::Tensor>& tensors,
                                                int64_t count) {
  std::vector<torch::Tensor> masks;
  for (const auto& t : tensors) masks.push_back(torch::ones(t.sizes(), torch::kBool));
  if (count == 0) return masks;
  // Not a structured binding: lambdas may capture those only from C++20 on (Clang refuses).
  const auto selected = RadixSelect<Float>(tensors).select(count - 1);
  const auto threshold = selected.first;
  const auto below = selected.second;
  // Everything strictly below the threshold goes; ties at the threshold go in
  // tensor order until `count` is reached, so exactly `count` weights are zeroed.
  int64_t ties_to_prune = count - below;
  for (size_t t = 0; t < tensors.size(); ++t) {
    Float* data = tensors[t].data_ptr<Float>();
    bool* keep = masks[t].data_ptr<bool>();
    at::parallel_for(0, tensors[t].numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        if (magnitude_key(data[i]) < threshold) { data[i] = Float(0); keep[i] = false; }
      }
    });
  }
  for (size_t t = 0; t < tensors.size() && ties_to_prune > 0; ++t) {
    Float* data = tensors[t].data_ptr<Float>();
    bool* keep = masks[t].data_ptr<bool>();
    const int64_t n = tensors[t].numel();
    for (int64_t i = 0; i < n && ties_to_prune > 0; ++i) {
      if (magnitude_key(data[i]) == threshold && keep[i]) {
        data[i] = Float(0); keep[i] = false; --ties_to_prune;
      }
    }
  }
  return masks;
}

void check_weights(const std::vector<torch::Tensor>& tensors) {
  require(!tensors.empty(), "prune_smallest: no tensors given; expected at least one weight tensor");
  const auto dtype = tensors.front().scalar_type();
  for (const auto& t : tensors) {
    require(t.defined() && t.device().is_cpu(), "prune_smallest: expected defined CPU tensors");
    require(t.scalar_type() == dtype,
            "prune_smallest: all tensors must share one dtype; got " +
                std::string(c10::toString(dtype)) + " and " + c10::toString(t.scalar_type()));
    require(t.is_contiguous(), "prune_smallest: expected contiguous tensors");
    require(!t.isnan().any().item<bool>(), "prune_smallest: weights contain NaN; NaN has no magnitude to rank");
  }
}

// Channel scores for structured pruning: L1 norm of each slice along `dim`,
// divided by the slice size when ranking across layers (`mean`).
torch::Tensor channel_scores(const torch::Tensor& weight, int64_t dim, bool mean) {
  std::vector<int64_t> reduce;
  for (int64_t d = 0; d < weight.dim(); ++d)
    if (d != dim) reduce.push_back(d);
  auto scores = reduce.empty() ? weight.abs() : weight.abs().sum(reduce);
  if (mean) scores = scores / double(weight.numel() / weight.size(dim));
  return scores.contiguous();
}

torch::Tensor expand_channel_mask(const torch::Tensor& channel_mask, const torch::Tensor& weight,
                                  int64_t dim) {
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[dim] = weight.size(dim);
  return channel_mask.view(shape).expand(weight.sizes()).contiguous();
}

std::string dtype_name(const torch::Tensor& t) { return c10::toString(t.scalar_type()); }

}  // namespace

namespace {
constexpr std::pair<Scope, const char*> kScopeNames[] = {{Scope::Local, "local"}, {Scope::Global, "global"}};
}  // namespace

std::string to_string(Scope scope) { return detail::name_of(kScopeNames, scope); }

Scope parse_scope(const std::string& name) { return detail::parse_name(kScopeNames, name, "scope"); }

std::vector<std::string> scope_names() { return detail::names_of(kScopeNames); }

namespace {
constexpr std::pair<Norm, const char*> kNormNames[] = {{Norm::L1, "l1"}, {Norm::L2, "l2"}};
}  // namespace

std::string to_string(Norm norm) { return detail::name_of(kNormNames, norm); }

Norm parse_norm(const std::string& name) { return detail::parse_name(kNormNames, name, "norm"); }

std::vector<std::string> norm_names() { return detail::names_of(kNormNames); }

int64_t prune_count(double amount, int64_t n) {
  return static_cast<int64_t>(std::nearbyint(amount * double(n)));  // FE_TONEAREST: half to even, as Python's round()
}

std::vector<torch::Tensor> prune_smallest(const std::vector<torch::Tensor>& tensors, int64_t count) {
  check_weights(tensors);
  int64_t total = 0;
  for (const auto& t : tensors) total += t.numel();
  require(count >= 0 && count <= total, "prune_smallest: count " + std::to_string(count) +
                                            " is outside [0, " + std::to_string(total) + "]");
  torch::NoGradGuard no_grad;
  switch (tensors.front().scalar_type()) {
    case torch::kFloat: return prune_smallest_typed<float>(tensors, count);
    case torch::kDouble: return prune_smallest_typed<double>(tensors, count);
    default:
      throw Error("prune_smallest: weights of dtype " + dtype_name(tensors.front()) +
                  " are not supported; expected float32 or float64");
  }
}

L1Prune::L1Prune(L1PruneOptions options) : options_(std::move(options)) {
  const double amount = options_.amount();
  require(std::isfinite(amount) && amount >= 0.0 && amount <= 1.0,
          "L1Prune: amount " + std::to_string(amount) + " is outside [0, 1]; expected a fraction such as 0.5");
}

void L1Prune::run(Result& state, PassReport& entry) const {
  auto weights = select_weights(state.module, LayerSelection{options_.include(), options_.exclude()});
  for (const auto& w : weights)
    require(w.tensor.scalar_type() == torch::kFloat || w.tensor.scalar_type() == torch::kDouble,
            "L1Prune: weight '" + w.name + "' has dtype " + dtype_name(w.tensor) +
                "; expected float32 or float64 (prune before quantizing)");
  torch::NoGradGuard no_grad;
  const bool global = options_.scope() == Scope::Global;
  std::vector<torch::Tensor> masks(weights.size());

  if (const auto dim = options_.structured()) {
    std::vector<torch::Tensor> scores;
    int64_t channels = 0;
    for (const auto& w : weights) {
      require(*dim >= 0 && *dim < w.tensor.dim(),
              "L1Prune: structured dim " + std::to_string(*dim) + " is out of range for '" + w.name +
                  "' with " + std::to_string(w.tensor.dim()) + " dims");
      scores.push_back(channel_scores(w.tensor, *dim, global));
      channels += scores.back().numel();
    }
    std::vector<torch::Tensor> channel_masks;
    if (global) {
      channel_masks = prune_smallest(scores, prune_count(options_.amount(), channels));
    } else {
      for (auto& s : scores) channel_masks.push_back(prune_smallest({s}, prune_count(options_.amount(), s.numel()))[0]);
    }
    for (size_t i = 0; i < weights.size(); ++i) {
      masks[i] = expand_channel_mask(channel_masks[i], weights[i].tensor, *dim);
      weights[i].tensor.masked_fill_(masks[i].logical_not(), 0.0);
    }
  } else {
    std::vector<torch::Tensor> tensors;
    int64_t total = 0;
    for (const auto& w : weights) { tensors.push_back(w.tensor); total += w.tensor.numel(); }
    if (global) {
      masks = prune_smallest(tensors, prune_count(options_.amount(), total));
    } else {
      for (size_t i = 0; i < tensors.size(); ++i)
        masks[i] = prune_smallest({tensors[i]}, prune_count(options_.amount(), tensors[i].numel()))[0];
    }
  }

  for (size_t i = 0; i < weights.size(); ++i) {
    auto& mask = state.masks[weights[i].name];
    mask = mask.defined() ? mask.logical_and(masks[i]) : masks[i];
  }
  entry.labels["scope"] = to_string(options_.scope());
  entry.labels["mode"] =
      options_.structured() ? "structured(dim=" + std::to_string(*options_.structured()) + ")" : "unstructured";
  entry.metrics["amount"] = options_.amount();
}

}  // namespace pare
