#include "support/runner_testing.hpp"

#include <algorithm>

#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/library.h>

namespace pare::testing {

Gate g_gate;

void Gate::close() {
  std::lock_guard<std::mutex> lock(mutex);
  open = false;
}

void Gate::release() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    open = true;
  }
  changed.notify_all();
}

void Gate::wait_entered(int count) {
  std::unique_lock<std::mutex> lock(mutex);
  changed.wait(lock, [&] { return entered >= count; });
}

bool Gate::saw(float value) {
  std::lock_guard<std::mutex> lock(mutex);
  return std::find(seen.begin(), seen.end(), value) != seen.end();
}

void Gate::reset() {
  std::lock_guard<std::mutex> lock(mutex);
  open = true, entered = 0, seen.clear();
}

namespace {

at::Tensor gate_op(at::Tensor x) {
  std::unique_lock<std::mutex> lock(g_gate.mutex);
  ++g_gate.entered;
  for (int64_t r = 0; r < x.size(0); ++r) g_gate.seen.push_back(x[r][0].item<float>());
  g_gate.changed.notify_all();
  g_gate.changed.wait(lock, [] { return g_gate.open; });
  return x;
}

TORCH_LIBRARY(pare_test, m) { m.def("gate(Tensor x) -> Tensor", gate_op); }

// Lets TorchScript source call the test's ops as pare_test.name(...).
struct TestOpsResolver : torch::jit::NativeResolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name, torch::jit::GraphFunction& m,
                                                         const torch::jit::SourceRange& loc) override {
    if (name == "pare_test") return std::make_shared<torch::jit::BuiltinModule>("pare_test");
    return NativeResolver::resolveValue(name, m, loc);
  }
};

}  // namespace

torch::jit::Module gated_model(float scale, float shift) {
  torch::jit::Module m("__torch__.GatedModel");
  m.define("def forward(self, x):\n  return pare_test.gate(x) * " + std::to_string(scale) + " + " +
               std::to_string(shift) + "\n",
           std::make_shared<TestOpsResolver>());
  return m;
}

torch::jit::Module row_model() {
  torch::jit::Module m("__torch__.RowModel");
  m.define(R"(
def forward(self, x):
  assert bool((x >= 0).all()), "negative input"
  return x * 2 + 1
)");
  return m;
}

}  // namespace pare::testing
