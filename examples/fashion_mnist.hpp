#pragma once
// Example support (not pare's API): Fashion-MNIST from Debian's
// dataset-fashion-mnist package, a small CNN built as a TorchScript module,
// and the training, evaluation and timing loops the examples share.

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>
#include <torch/torch.h>

namespace pare::examples {

struct Dataset {
  torch::Tensor images;  ///< N x 1 x 28 x 28 float32, normalized
  torch::Tensor labels;  ///< N int64 in [0, 10)
  int64_t size() const { return images.size(0); }
  Dataset slice(int64_t begin, int64_t end) const;
  /// (images, labels) batches of `batch_size` in order (the last may be smaller): pare::Batch pairs.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> batches(int64_t batch_size) const;
};

/// The directory holding the *-ubyte.gz files: $PARE_FASHION_MNIST_DIR, or the Debian package's.
std::string fashion_mnist_dir();

/// Reads the training (60k) or test (10k) split; `limit` > 0 keeps the first `limit` images.
Dataset load_fashion_mnist(bool train, int64_t limit = -1, const std::string& dir = fashion_mnist_dir());

/// conv(1->c1)-relu-pool, conv(c1->c2)-relu-pool, Linear(c2*7*7->hidden)-relu, Linear(hidden->10),
/// as a scripted module whose layers have torch.nn's type names.
struct CnnShape {
  int64_t channels1 = 32, channels2 = 64, hidden = 128;
};
torch::jit::Module make_fashion_cnn(CnnShape shape = {}, uint64_t seed = 0);

/// Called with (step, steps, running loss).
using Progress = std::function<void(int64_t, int64_t, double)>;

/// Adam with cross-entropy on `data`, in batches of 64, shuffled with `seed`.
void train(torch::jit::Module& module, const Dataset& data, int epochs, double lr = 1e-3,
           uint64_t seed = 0, const Progress& progress = {});

/// The same loop for a torch::nn model, whose `forward` maps images to logits.
void train(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& forward,
           const Dataset& data, int epochs, double lr = 1e-3, uint64_t seed = 0, const Progress& progress = {});

/// Top-1 accuracy in percent.
double accuracy(torch::jit::Module& module, const Dataset& data);

/// Median wall time of `body()` over `repeats` calls after one warm-up call, in
/// milliseconds (a template: no indirect call around bodies of a few ns).
template <class F>
double median_call_ms(int repeats, F&& body) {
  body();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    body();
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

/// Median wall time of one forward pass at `batch`, in milliseconds. Give it a
/// module that has run no other input shape: TorchScript and onednn's int8
/// kernels keep the plan of the first shape a module runs.
double median_latency_ms(torch::jit::Module& module, int64_t batch, int repeats = 50);
/// The same for the TorchScript file at `path`, loaded afresh for this batch size.
double file_latency_ms(const std::string& path, int64_t batch, int repeats = 50);

/// A one-line text progress bar on stderr; the loss is shown unless it is NaN.
Progress progress_bar(const std::string& label);

}  // namespace pare::examples
