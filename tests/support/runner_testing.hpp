#pragma once
// Models for the Runner's tests: one that holds a request at a gate the test
// opens, one that maps rows to rows. Tests decide outcomes with the gate (and
// with queue sizes and deadlines), never with sleeps.

#include "support/testing.hpp"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace pare::testing {

constexpr auto kForever = std::chrono::hours(1);

// The op pare_test::gate counts the rows it sees and blocks while the gate is closed.
struct Gate {
  std::mutex mutex;
  std::condition_variable changed;
  bool open = true;
  int entered = 0;
  std::vector<float> seen;  // first element of every row that reached the model

  void close();
  void release();
  void wait_entered(int count);
  bool saw(float value);
  void reset();
};
extern Gate g_gate;

/// Rows pass the gate, then become x * scale + shift.
torch::jit::Module gated_model(float scale = 2, float shift = 1);
/// Each output row is its input row doubled plus one; a negative input fails the whole forward pass.
torch::jit::Module row_model();

}  // namespace pare::testing
