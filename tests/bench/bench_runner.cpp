// Dynamic batching: 8 client threads send single Fashion-MNIST images to the
// example CNN through pare::Runner, without batching (each request its own
// forward pass on the caller's thread) and with batching (requests merged up
// to max_batch). Prints throughput and latency percentiles, with ratios.
//
//   bench_runner [--seconds 3] [--clients 8]

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <pare/runner.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

struct Measured {
  std::string name;
  pare::RunnerStats stats;
};

Measured drive(const std::string& name, const torch::jit::Module& model, pare::RunnerOptions options,
               const ex::Dataset& images, int clients, double seconds) {
  pare::Runner runner(model.clone(), options.warmup(5).example_inputs({images.images.slice(0, 0, 1)}));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int64_t i = c; !stop; i += clients) runner.run({images.images.slice(0, i % images.size(), i % images.size() + 1)});
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  return {name, runner.stats()};
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  int clients = 8;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) clients = std::atoi(argv[i + 1]);
  }
  const auto images = ex::load_fashion_mnist(false, 2000);
  auto model = ex::make_fashion_cnn();
  model.eval();
  model = torch::jit::freeze(model);
  std::printf("%d client threads, single 1x1x28x28 images, %.1f s per run, LibTorch threads %d\n", clients, seconds,
              torch::get_num_threads());

  std::vector<Measured> runs;
  runs.push_back(drive("no batching", model, pare::RunnerOptions().max_batch(1), images, clients, seconds));
  for (int64_t max_batch : {8, 32}) {
    runs.push_back(drive("batching max_batch=" + std::to_string(max_batch) + " delay=1ms", model,
                         pare::RunnerOptions().max_batch(max_batch).max_delay(std::chrono::milliseconds(1)).threads(1),
                         images, clients, seconds));
  }
  std::printf("\n%-32s %12s %10s %10s %10s %12s %10s\n", "mode", "requests/s", "p50 ms", "p95 ms", "p99 ms",
              "mean batch", "vs plain");
  const double base = runs.front().stats.throughput();
  for (const auto& r : runs) {
    const double mean_batch = r.stats.batches ? double(r.stats.requests) / double(r.stats.batches) : 0;
    std::printf("%-32s %12.0f %10.3f %10.3f %10.3f %12.2f %9.2fx\n", r.name.c_str(), r.stats.throughput(),
                r.stats.p50_ms, r.stats.p95_ms, r.stats.p99_ms, mean_batch, r.stats.throughput() / base);
  }
  return 0;
}
