#pragma once
// CUDA tests run where a GPU is found and skip loudly elsewhere (CI has none):
// the skip and its reason show in the test output.

#include <torch/cuda.h>

#include "testing.hpp"

#define PARE_REQUIRE_CUDA()                                                                       \
  do {                                                                                            \
    if (!torch::cuda::is_available()) {                                                           \
      WARN("SKIPPED (no CUDA device: this LibTorch has no CUDA or no GPU is visible): " +         \
           Catch::getResultCapture().getCurrentTestName());                                       \
      return;                                                                                     \
    }                                                                                             \
  } while (false)
