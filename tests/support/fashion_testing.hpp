#pragma once
// The Fashion-MNIST subsets the tests train and evaluate on, each loaded once per process.

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

/// The first 2048 training images.
inline const ex::Dataset& train_subset() {
  static const auto data = ex::load_fashion_mnist(true, 2048);
  return data;
}

/// The first 1000 test images.
inline const ex::Dataset& test_subset() {
  static const auto data = ex::load_fashion_mnist(false, 1000);
  return data;
}
