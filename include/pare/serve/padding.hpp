#pragma once
// Requests of different lengths in one batch: each request's inputs are padded
// along a length dimension to the smallest of a few bucket lengths, so that
// requests of nearby lengths share a batch, and each answer is cut back to its
// request's own length.
//
//   pare::Runner runner(torch::jit::load("encoder.pt"),   // forward(ids, mask)
//                       pare::RunnerOptions().max_batch(16).threads(2)
//                           .padding(pare::PaddingOptions({32, 64, 96, 128})));
//   auto out = runner.run({ids, mask});  // ids, mask: (1, 41); answers (1, 41, hidden)
//
// Inputs are padded with their pad value (0 by default: a padded attention
// mask then hides the padding from the model), or a mask input is built by
// the runner itself (mask_input). The cache keys on the unpadded request.

#include <optional>
#include <vector>

#include <c10/core/ScalarType.h>

#include "pare/core/arg.hpp"

namespace pare {

class PaddingOptions {
 public:
  /// `buckets`: the lengths requests are padded to, ascending; a request longer
  /// than the last fails with pare::Error (InvalidArgument).
  explicit PaddingOptions(std::vector<int64_t> buckets) : buckets_(std::move(buckets)) {}
  /// The lengths requests are padded to, ascending, each >= 1.
  PARE_ARG(std::vector<int64_t>, buckets);
  /// The length dimension of every tensor input that has one (1: (batch, length, ...)).
  /// Inputs with fewer dimensions are left as they are.
  PARE_ARG(int64_t, dim) = 1;
  /// The value each input is padded with, by input position (the request's
  /// inputs, before mask_input is inserted); inputs beyond the list get 0.
  PARE_ARG(std::vector<double>, pad_values);
  /// When set, the runner builds the attention mask itself and inserts it as
  /// the model's input at this position: (batch, bucket) of mask_dtype, 1 over
  /// the request's length and 0 over the padding. Requests then omit it.
  PARE_ARG(std::optional<int64_t>, mask_input);
  /// The dtype of a built mask.
  PARE_ARG(c10::ScalarType, mask_dtype) = c10::ScalarType::Long;
  /// The length dimension of the outputs: every tensor output with a size
  /// equal to the bucket there is cut back to the request's length; others
  /// (a pooled vector, logits) are returned whole.
  PARE_ARG(int64_t, output_dim) = 1;
};

}  // namespace pare
