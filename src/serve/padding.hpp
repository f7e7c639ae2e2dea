#pragma once
// Internal to pare: padding a request to its bucket and cutting its answer back
// (PaddingOptions, docs/serving.md "Requests of different lengths").

#include <vector>

#include <torch/script.h>

#include "pare/serve/padding.hpp"

namespace pare::detail {

/// A request padded to its bucket: the model's inputs and the request's own length.
struct PaddedRequest {
  std::vector<c10::IValue> inputs;
  int64_t length = 0;  // the request's length along PaddingOptions::dim
  int64_t bucket = 0;  // the length it was padded to
};

/// pare::Error (InvalidArgument) when the options can't describe a padding.
void validate(const PaddingOptions& options);
/// `inputs` padded along options.dim() to the smallest bucket that holds them,
/// with the mask inserted when options.mask_input() is set. pare::Error
/// (InvalidArgument) when the inputs disagree on their length, or it is longer
/// than every bucket.
PaddedRequest pad_request(const std::vector<c10::IValue>& inputs, const PaddingOptions& options);
/// `output` with every tensor whose size along options.output_dim() is the
/// bucket cut back to `length` rows there (inside tuples and lists too).
c10::IValue cut_to_length(const c10::IValue& output, const PaddedRequest& request, const PaddingOptions& options);

}  // namespace pare::detail
