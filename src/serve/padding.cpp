#include "serve/padding.hpp"

#include <algorithm>
#include <string>

#include "core/ivalue_walk.hpp"
#include "core/text.hpp"
#include "pare/core/error.hpp"

namespace pare::detail {

namespace {

bool has_length(const c10::IValue& input, int64_t dim) { return input.isTensor() && input.toTensor().dim() > dim; }

// The one length every input with a length dimension shares.
int64_t request_length(const std::vector<c10::IValue>& inputs, int64_t dim) {
  int64_t length = -1;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!has_length(inputs[i], dim)) continue;
    const int64_t own = inputs[i].toTensor().size(dim);
    require(length < 0 || own == length, "Runner padding: input " + std::to_string(i) + " has length " +
                                             std::to_string(own) + " along dim " + std::to_string(dim) +
                                             " where an earlier input has " + std::to_string(length) +
                                             "; every input with a length dimension must share one length");
    length = own;
  }
  require(length >= 0, "Runner padding: no input has a length dimension (dim " + std::to_string(dim) +
                           "); expected tensors of at least " + std::to_string(dim + 1) + " dimensions");
  return length;
}

at::Tensor pad_to(const at::Tensor& t, int64_t dim, int64_t bucket, double value) {
  const int64_t missing = bucket - t.size(dim);
  if (missing == 0) return t;
  auto shape = t.sizes().vec();
  shape[size_t(dim)] = missing;
  return at::cat({t, at::full(shape, value, t.options())}, dim);
}

}  // namespace

void validate(const PaddingOptions& options) {
  const auto& b = options.buckets();
  require(!b.empty(), "PaddingOptions: buckets must name at least one length");
  for (size_t i = 0; i < b.size(); ++i)
    require(b[i] >= 1 && (i == 0 || b[i] > b[i - 1]), "PaddingOptions: buckets must be ascending lengths >= 1, got " +
                                                          std::to_string(b[i]) + " at position " + std::to_string(i));
  require(options.dim() >= 1,
          "PaddingOptions: dim must be >= 1 (dim 0 holds the batch), got " + std::to_string(options.dim()));
  require(options.output_dim() >= 1, "PaddingOptions: output_dim must be >= 1 (dim 0 holds the batch), got " +
                                         std::to_string(options.output_dim()));
  require(!options.mask_input() || *options.mask_input() >= 0,
          "PaddingOptions: mask_input must be an input position >= 0");
}

PaddedRequest pad_request(const std::vector<c10::IValue>& inputs, const PaddingOptions& options) {
  PaddedRequest padded;
  padded.length = request_length(inputs, options.dim());
  const auto& buckets = options.buckets();
  const auto bucket = std::lower_bound(buckets.begin(), buckets.end(), padded.length);
  require(bucket != buckets.end(), "Runner padding: a request of length " + std::to_string(padded.length) +
                                       " is longer than the largest bucket (" + std::to_string(buckets.back()) +
                                       "); add a bucket of at least that length to PaddingOptions");
  padded.bucket = *bucket;
  const auto& values = options.pad_values();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!has_length(inputs[i], options.dim())) {
      padded.inputs.push_back(inputs[i]);
      continue;
    }
    const double value = i < values.size() ? values[i] : 0.0;
    padded.inputs.emplace_back(pad_to(inputs[i].toTensor(), options.dim(), padded.bucket, value));
  }
  if (const auto& at_position = options.mask_input()) {
    require(*at_position <= int64_t(inputs.size()), "Runner padding: mask_input " + std::to_string(*at_position) +
                                                        " is past the request's " + std::to_string(inputs.size()) +
                                                        " inputs");
    const auto& first = padded.inputs.at(0);
    const int64_t rows = first.isTensor() && first.toTensor().dim() > 0 ? first.toTensor().size(0) : 1;
    auto mask = at::zeros({rows, padded.bucket}, at::TensorOptions().dtype(options.mask_dtype()));
    mask.narrow(1, 0, padded.length).fill_(1);
    padded.inputs.insert(padded.inputs.begin() + *at_position, c10::IValue(mask));
  }
  return padded;
}

c10::IValue cut_to_length(const c10::IValue& output, const PaddedRequest& request, const PaddingOptions& options) {
  if (request.length == request.bucket) return output;
  const int64_t dim = options.output_dim();
  return map_tensors(output, [&](const at::Tensor& t) {
    return t.dim() > dim && t.size(dim) == request.bucket ? t.narrow(dim, 0, request.length) : t;
  });
}

}  // namespace pare::detail
