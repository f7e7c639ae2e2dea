// Global L1 pruning of 50M weights in 10 tensors: pare vs torch.nn.utils.prune
// (stock PyTorch, run through /usr/bin/python3) vs one torch::kthvalue over the
// same magnitudes. Prints medians and ratios.
//
//   bench_prune [--repeats 3] [--threads N] [--python /usr/bin/python3]
//
// Both sides run with the same LibTorch thread count.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "pare/prune/prune.hpp"

namespace {

constexpr int64_t kTensors = 10, kPerTensor = 5'000'000;

std::vector<torch::Tensor> make_weights() {
  torch::manual_seed(0);
  std::vector<torch::Tensor> weights;
  for (int64_t i = 0; i < kTensors; ++i) weights.push_back(torch::randn({kPerTensor / 1000, 1000}));
  return weights;
}

template <class F>
double median_seconds(int repeats, F&& body) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    auto weights = make_weights();
    const auto start = std::chrono::steady_clock::now();
    body(weights);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// torch.nn.utils.prune.global_unstructured on the same shapes, timed inside Python.
double torch_prune_seconds(const std::string& python, int repeats) {
  const std::string script =
      "import time, torch, statistics\n"
      "import torch.nn.utils.prune as prune\n"
      "torch.set_num_threads(" + std::to_string(torch::get_num_threads()) + ")\n"
      "times = []\n"
      "for _ in range(" + std::to_string(repeats) + "):\n"
      "    mods = [torch.nn.Linear(1000, " + std::to_string(kPerTensor / 1000) + ", bias=False) for _ in range(" + std::to_string(kTensors) + ")]\n"
      "    t = time.perf_counter()\n"
      "    prune.global_unstructured([(m, 'weight') for m in mods], pruning_method=prune.L1Unstructured, amount=0.5)\n"
      "    times.append(time.perf_counter() - t)\n"
      "print(statistics.median(times))\n";
  const std::string command = python + " -c \"" + script + "\"";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return -1;
  double seconds = -1;
  if (std::fscanf(pipe, "%lf", &seconds) != 1) seconds = -1;
  pclose(pipe);
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 3;
  std::string python = PARE_PYTHON;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--python")) python = argv[i + 1];
    if (!std::strcmp(argv[i], "--threads")) torch::set_num_threads(std::atoi(argv[i + 1]));
  }
  std::printf("global L1 pruning, 50%% of %lld weights in %lld tensors, %d threads, median of %d\n",
              (long long)(kTensors * kPerTensor), (long long)kTensors, torch::get_num_threads(), repeats);

  const double pare_s = median_seconds(repeats, [](std::vector<torch::Tensor>& w) {
    pare::prune_smallest(w, pare::prune_count(0.5, kTensors * kPerTensor));
  });
  const double kth_s = median_seconds(repeats, [](std::vector<torch::Tensor>& w) {
    std::vector<torch::Tensor> flat;
    for (auto& t : w) flat.push_back(t.flatten());
    auto all = torch::cat(flat).abs_();
    const auto threshold = std::get<0>(all.kthvalue(pare::prune_count(0.5, all.numel())));
    for (auto& t : w) t.masked_fill_(t.abs() <= threshold, 0.0f);
  });
  const double torch_s = torch_prune_seconds(python, repeats);

  std::printf("\n%-44s %12s %14s\n", "method", "median s", "vs pare");
  std::printf("%-44s %12.3f %13.1fx\n", "pare::prune_smallest (radix select)", pare_s, 1.0);
  std::printf("%-44s %12.3f %13.1fx\n", "torch::kthvalue + masked_fill (LibTorch)", kth_s, kth_s / pare_s);
  if (torch_s > 0)
    std::printf("%-44s %12.3f %13.1fx\n", "torch.nn.utils.prune.global_unstructured", torch_s, torch_s / pare_s);
  else
    std::printf("%-44s %12s\n", "torch.nn.utils.prune.global_unstructured", "(python unavailable)");
  return 0;
}
