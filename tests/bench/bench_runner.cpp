// Serving under load, on the Fashion-MNIST CNN in fp32 and in static int8:
//  1. closed loop: N client threads send single images through pare::Runner,
//     unbatched, batched with the fixed-delay rule (a batch waits out max_delay
//     unless full) and with the gap rule (it also goes when no request arrived
//     for batch_gap), for max_batch 8..64;
//  2. open loop: Poisson arrivals at 10% and at 2x the measured capacity, with
//     max_queue set: latency from the scheduled send time, rejections, RSS;
//  3. hot swap: N clients while the model is swapped `--swaps` times.
// Prints tables and ratios measured in this run.
//
//   bench_runner [--seconds 2] [--clients 8] [--workers W] [--batch-threads T] [--model-copies C] [--swaps 100]
//                [--gap-us 100] [--only closed]
//
// Unbatched, every client runs the model on its own thread with one LibTorch
// thread; batched runners have W workers (default 1: on two cores, two workers
// beside eight clients ran fewer batches per second than one), each running a
// batch on T LibTorch threads (default 1). Before the closed loop, the forward
// passes alone give the most batching can win on this machine.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include <pare/bench.hpp>
#include <pare/pipeline.hpp>
#include <pare/quantize.hpp>
#include <pare/runner.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

struct Config {
  double seconds = 2;
  int clients = 8;
  int swaps = 100;
  int workers = 1;
  int batch_threads = 1;
  size_t model_copies = pare::RunnerOptions().model_copies();
  std::chrono::microseconds gap = pare::RunnerOptions().batch_gap();
  std::string only;  // "closed": the closed-loop tables alone
};

struct Measured {
  std::string name;
  int64_t max_batch = 1;
  bool gap_rule = false;
  pare::RunnerStats stats;
};

pare::RunnerOptions warmed(pare::RunnerOptions options, const ex::Dataset& images) {
  return options.warmup(5).example_inputs({images.images.slice(0, 0, 1)});
}

std::vector<c10::IValue> image(const ex::Dataset& images, int64_t i) {
  i %= images.size();
  return {images.images.slice(0, i, i + 1)};
}

// `clients` threads, each sending its next image as soon as the last answer came.
pare::RunnerStats closed_loop(pare::Runner& runner, const ex::Dataset& images, int clients, double seconds,
                              std::atomic<int>* failures = nullptr) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (int64_t i = c; !stop; i += clients) {
        try {
          if (runner.run(image(images, i)).toTensor().size(0) != 1 && failures) ++*failures;
        } catch (const std::exception&) {
          if (!failures) throw;
          ++*failures;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  return runner.stats();
}

// What batching can win at most on this machine: a batch of 8 against one
// image per core, the forward passes alone (fresh module per size, medians).
void batching_ceiling(const torch::jit::Module& model, int batch_threads) {
  auto median_ms = [&](int64_t batch, int threads) {
    at::set_num_threads(threads);
    const auto rows = pare::benchmark_models({{"m", model}}, pare::BenchOptions().inputs({{1, 1, 28, 28}}).batches({batch}).threads({1}).duration(std::chrono::milliseconds(500)));
    return rows.front().p50_ms;
  };
  const double one = median_ms(1, 1), eight = median_ms(8, batch_threads);
  const double cores = std::thread::hardware_concurrency();
  std::printf("forward alone: batch 1 %.3f ms (1 thread), batch 8 %.3f ms (%d threads): at most %.2fx the "
              "unbatched throughput of %.0f cores\n", one, eight, batch_threads, (8 / eight) / (cores / one), cores);
}

std::vector<Measured> closed_loop_table(const torch::jit::Module& model, const ex::Dataset& images, const Config& config) {
  std::vector<Measured> runs;
  auto drive = [&](std::string name, int64_t max_batch, bool gap_rule, pare::RunnerOptions options) {
    // Each mode's best use of the cores: unbatched clients compute one image
    // each on their own thread; a batch worker may spread a batch over several.
    // Worker threads take the setting when they first run an operator.
    at::set_num_threads(max_batch == 1 ? 1 : config.batch_threads);
    pare::Runner runner(model.clone(), warmed(options, images));
    runs.push_back({std::move(name), max_batch, gap_rule, closed_loop(runner, images, config.clients, config.seconds)});
  };
  const auto delay = std::chrono::milliseconds(1);
  drive("no batching", 1, false, pare::RunnerOptions().max_batch(1));
  const auto batched = pare::RunnerOptions().threads(config.workers).max_delay(delay).model_copies(config.model_copies);
  for (int64_t b : {8, 16, 32, 64})  // a gap as long as the delay: the fixed-delay rule
    drive("fixed delay 1ms, max_batch=" + std::to_string(b), b, false,
          pare::RunnerOptions(batched).max_batch(b).batch_gap(delay));
  for (int64_t b : {8, 16, 32, 64})
    drive("gap rule, max_batch=" + std::to_string(b), b, true,
          pare::RunnerOptions(batched).max_batch(b).batch_gap(config.gap));

  double best = 0, worst = 1e30, base = runs.front().stats.throughput();
  for (const auto& r : runs)
    if (r.gap_rule) best = std::max(best, r.stats.throughput()), worst = std::min(worst, r.stats.throughput());
  std::printf("\n| mode | requests/s | p50 ms | p99 ms | mean batch | vs unbatched | vs best gap rule |\n"
              "| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& r : runs) {
    const double mean_batch = r.stats.batches ? double(r.stats.requests) / double(r.stats.batches) : 0;
    std::printf("| %s | %.0f | %.3f | %.3f | %.2f | %.2fx | %.2fx |\n", r.name.c_str(), r.stats.throughput(),
                r.stats.p50_ms, r.stats.p99_ms, mean_batch, r.stats.throughput() / base, r.stats.throughput() / best);
  }
  double worst_p99 = 0;
  for (const auto& r : runs)
    if (r.gap_rule) worst_p99 = std::max(worst_p99, r.stats.p99_ms);
  std::printf("\ngap rule: best %.2fx unbatched throughput (goal >= 2x on int8); worst max_batch %.2f of the best "
              "(goal >= 0.90); worst p99 %.3f ms vs unbatched %.3f ms (goal: no worse)\n",
              best / base, worst / best, worst_p99, runs.front().stats.p99_ms);
  return runs;
}

double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

void open_loop(const torch::jit::Module& model, const ex::Dataset& images, double capacity, const Config& config) {
  const int64_t max_batch = 8;
  const size_t max_queue = 16;
  std::vector<std::vector<c10::IValue>> inputs;
  for (int64_t i = 0; i < 256; ++i) inputs.push_back(image(images, i));
  pare::Runner runner(model.clone(), warmed(pare::RunnerOptions().max_batch(max_batch).max_queue(max_queue)
                                                .batch_gap(config.gap), images));
  auto load = [&](double rate, uint64_t seed) {
    return pare::run_open_loop(runner, pare::OpenLoopOptions(rate).duration(std::chrono::milliseconds(std::llround(config.seconds * 1000))).seed(seed).inputs(inputs));
  };
  const auto unloaded = load(0.1 * capacity, 1);
  load(2 * capacity, 2);  // a first overload run grows the allocator's arenas to their working size
  const double rss_before = rss_mib();
  const auto overloaded = load(2 * capacity, 3);
  const double rss_after = rss_mib();
  std::printf("\nopen loop, max_batch %lld, max_queue %zu, capacity %.0f requests/s (best closed loop):\n\n%s",
              (long long)max_batch, max_queue, capacity,
              pare::open_loop_table({{"10% of capacity", unloaded}, {"2x capacity", overloaded}}).c_str());
  const uint64_t ended = overloaded.succeeded + overloaded.rejected + overloaded.timeouts + overloaded.failed;
  std::printf("\n2x capacity: accepted p99 %.2fx the unloaded p99 (goal <= 5x); %.1f%% rejected; %llu sent, %llu "
              "answered or refused (nothing lost: %s); RSS %.1f MiB before, %.1f MiB after (%+.1f MiB)\n",
              overloaded.p99_ms / unloaded.p99_ms, 100.0 * double(overloaded.rejected) / double(overloaded.sent),
              (unsigned long long)overloaded.sent, (unsigned long long)ended, ended == overloaded.sent ? "yes" : "NO",
              rss_before, rss_after, rss_after - rss_before);
}

void hot_swap(const torch::jit::Module& model, const ex::Dataset& images, const Config& config) {
  pare::Runner runner(model.clone(), warmed(pare::RunnerOptions().max_batch(32).batch_gap(config.gap), images));
  std::atomic<int> failures{0};
  std::thread swapper([&] {
    const auto spacing = std::chrono::duration<double>(config.seconds / config.swaps);
    for (int s = 0; s < config.swaps; ++s) {
      runner.swap(model.clone());
      std::this_thread::sleep_for(spacing);
    }
  });
  const auto stats = closed_loop(runner, images, config.clients, config.seconds, &failures);
  swapper.join();
  std::printf("\nhot swap: %llu swaps under %d clients, %llu requests, %d failed (goal 0)\n",
              (unsigned long long)runner.stats().swaps, config.clients, (unsigned long long)stats.requests,
              failures.load());
}

torch::jit::Module int8_cnn(const torch::jit::Module& fp32, const ex::Dataset& calibration_images) {
  pare::InputBatches calibration;
  for (int64_t b = 0; b < 4; ++b) calibration.push_back({calibration_images.images.slice(0, b * 64, (b + 1) * 64)});
  pare::Pipeline pipeline;
  pipeline.add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration)));
  return pipeline.run(fp32).module;
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) config.seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) config.clients = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--workers")) config.workers = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--model-copies")) config.model_copies = size_t(std::max(0, std::atoi(argv[i + 1])));
    if (!std::strcmp(argv[i], "--swaps")) config.swaps = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--batch-threads")) config.batch_threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--only")) config.only = argv[i + 1];
    if (!std::strcmp(argv[i], "--gap-us")) config.gap = std::chrono::microseconds(std::atoi(argv[i + 1]));
  }
  const auto images = ex::load_fashion_mnist(false, 2000);
  auto fp32 = ex::make_fashion_cnn();
  fp32.eval();
  const auto int8 = int8_cnn(fp32, ex::load_fashion_mnist(true, 256));
  const std::vector<std::pair<std::string, torch::jit::Module>> models{{"int8 CNN", int8},
                                                                      {"fp32 CNN", torch::jit::freeze(fp32)}};
  std::printf("# bench_runner: %d client threads, single 1x1x28x28 Fashion-MNIST images, %.1f s per run, "
              "%d batch workers, model_copies %zu, LibTorch threads %d, %u hardware threads\n",
              config.clients, config.seconds, config.workers, config.model_copies, torch::get_num_threads(),
              std::thread::hardware_concurrency());
  for (const auto& [name, model] : models) {
    std::printf("\n## %s\n\nclosed loop, %d clients, max_delay 1 ms, batch_gap %lld us:\n", name.c_str(),
                config.clients, (long long)config.gap.count());
    batching_ceiling(model, config.batch_threads);
    const auto runs = closed_loop_table(model, images, config);
    double capacity = 0;
    for (const auto& r : runs) capacity = std::max(capacity, r.stats.throughput());
    if (config.only == "closed") continue;
    open_loop(model, images, capacity, config);
    hot_swap(model, images, config);
  }
  return 0;
}
