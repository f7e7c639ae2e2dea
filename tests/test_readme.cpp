// The README's C++ example compiles and runs as written. CMake copies its
// ```cpp block, less the #include line, into readme_example.inc (regenerated
// whenever README.md changes), and it runs here in a directory holding a
// trained Fashion-MNIST CNN as model.pt: a README that drifts from the API
// breaks the build of the tests.

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "support/testing.hpp"

#include "support/fashion_testing.hpp"
#include "pare/pare.hpp"

namespace {

// The README's block in a scope of its own: the names it uses and does not
// define are the parameters; it ends with `logits`, which is returned.
torch::Tensor readme_example(const pare::TrainingData& train_batches, const pare::CalibrationData& calibration_batches,
                             const torch::Tensor& images) {
#include "readme_example.inc"
  return logits;
}

// Runs in a scratch directory, as a user would in theirs, and leaves the old one current again.
struct ScratchDirectory {
  std::string path, previous;
  ScratchDirectory() {
    char templ[] = "/tmp/pare_readme_XXXXXX";
    path = mkdtemp(templ);
    previous = std::filesystem::current_path().string();
    std::filesystem::current_path(path);
  }
  ~ScratchDirectory() {
    std::filesystem::current_path(previous);
    remove_tree(path);
  }
};

}  // namespace

TEST_CASE("README: the C++ example runs as written", "[readme]") {
  ScratchDirectory scratch;
  auto model = ex::make_fashion_cnn({8, 16, 32}, 1);
  ex::train(model, train_subset(), 1);
  model.save("model.pt");

  std::vector<std::vector<torch::jit::IValue>> calibration_list;
  for (const auto& [x, y] : train_subset().slice(0, 512).batches(64)) calibration_list.push_back({x});
  const auto images = test_subset().images.slice(0, 0, 8);

  const auto logits = readme_example(train_subset().batches(64), calibration_list, images);
  REQUIRE(logits.sizes() == torch::IntArrayRef{8, 10});
  // The exported file holds the module the Runner served: the same answers, read back by stock LibTorch.
  auto exported = torch::jit::load("model_small.pt");
  CHECK(torch::allclose(exported.forward({images}).toTensor(), logits, 1e-4, 1e-4));
}
