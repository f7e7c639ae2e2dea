#pragma once
// Shared set-up of the InferenceCache tests (test_cache, test_cache_concurrency).

#include <ATen/Parallel.h>

#include "testing.hpp"  // LibTorch, then Catch (its CHECK, not glog's)

#include <cstdint>
#include <vector>

namespace cache_testing {

struct SingleThreadedTorch {  // OpenMP inside LibTorch confuses ThreadSanitizer
  SingleThreadedTorch() { at::set_num_threads(1); }
};
inline SingleThreadedTorch single_threaded_torch;

/// A reproducible input: the same seed gives the same tensor.
inline at::Tensor input(int64_t seed, std::vector<int64_t> shape = {1, 3, 8, 8}) {
  at::manual_seed(static_cast<uint64_t>(seed));
  return at::randn(shape);
}

}  // namespace cache_testing
