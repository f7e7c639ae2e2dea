// Serving under load: pare::Runner against clients that call the model
// themselves, on the Fashion-MNIST CNN in static int8 and fp32 and on
// torchvision's resnet18 (random weights, 3x64x64, scripted by PARE_PYTHON):
//  1. closed loop: N client threads (1, 8, 32, 128 by default) each send one
//     image and wait for its answer. Three ways to serve them:
//       plain   every client calls module.forward on its own thread (one
//               LibTorch thread each): what a user gets without pare;
//       hint    Runner with RunnerOptions::hint(Throughput): tuned at
//               construction to the model and the host;
//       fixed   Runner as configured before the hint existed: one worker,
//               max_batch 32, the gap rule.
//     Each row prints requests/s, p99, the ratio to plain, the share of
//     forward passes run on callers' threads, the mean batch, a request's mean
//     wait for its batch, the share of merging and splitting in the passes, CPU
//     time per request, and the ceiling: every core running its best batch.
//  2. open loop: Poisson arrivals at 10% and at 2x the measured capacity, with
//     max_queue set: latency from the scheduled send time, rejections, RSS;
//  3. hot swap (first model only): clients while the model is swapped `--swaps` times.
//
//   bench_runner [--seconds 1] [--clients 1,8,32,128] [--models int8,fp32,resnet18] [--swaps 100] [--rounds 3] [--only
//   closed] [--concurrency N]
//
// --concurrency N: the hint runner gets concurrency(N) as an explicit setting,
// which the hint keeps (it still chooses max_batch and the rest): to compare
// its own choice of concurrent passes with another.

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <pare/core/metrics.hpp>
#include <pare/core/pipeline.hpp>
#include <pare/quantize/quantize.hpp>
#include <pare/serve/runner.hpp>
#include <pare/tools/bench.hpp>
#include <ATen/Parallel.h>
#include <torch/version.h>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;
using Clock = std::chrono::steady_clock;

namespace {

struct Config {
  double seconds = 1;
  std::vector<int> clients{1, 8, 32, 128};
  std::vector<std::string> models{"int8", "fp32", "resnet18"};
  int swaps = 100;
  int rounds = 3;    // each cell: plain, hint and fixed taken in turn this often; medians reported
  std::string only;  // "closed": the closed-loop tables alone
  int concurrency = 0;  // > 0: the hint runner gets concurrency(N) explicitly (the hint's other choices stay)
};

/// One model and the single-row requests it is served.
struct Served {
  std::string name;
  torch::jit::Module module;
  std::vector<std::vector<c10::IValue>> requests;
};

struct Loop {
  double throughput = 0, p50_ms = 0, p99_ms = 0;
  double cpu_us = 0;  // process CPU time (user + system) per request
};

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return double(t.tv_sec) + 1e-6 * double(t.tv_usec); };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// `clients` threads, each sending its next request as soon as the last answer
// came, for `seconds`; latencies measured by the clients themselves.
template <class Call>
Loop closed_loop(const Served& m, int clients, double seconds, Call&& call) {
  std::atomic<bool> stop{false}, go{false};
  std::atomic<int> ready{0};
  std::vector<std::vector<double>> latencies(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      // The clock starts once every client exists: creating 128 threads takes
      // long enough that early clients would otherwise run alone, uncounted in time.
      ++ready;
      while (!go) std::this_thread::yield();
      for (size_t i = size_t(c); !stop; i += size_t(clients)) {
        const auto start = Clock::now();
        if (call(m.requests[i % m.requests.size()]).toTensor().size(0) != 1) std::abort();
        latencies[size_t(c)].push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
      }
    });
  }
  while (ready < clients) std::this_thread::yield();
  const auto start = Clock::now();
  const double cpu_start = cpu_seconds();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double cpu = cpu_seconds() - cpu_start;
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  return {double(all.size()) / elapsed, pare::nearest_rank(all, 0.5), pare::nearest_rank(all, 0.99),
          all.empty() ? 0.0 : 1e6 * cpu / double(all.size())};
}

// Each field's median over rounds.
Loop median_loop(std::vector<Loop> loops) {
  auto median = [&](double Loop::*field) {
    std::vector<double> values;
    for (const auto& l : loops) values.push_back(l.*field);
    std::sort(values.begin(), values.end());
    return pare::nearest_rank(values, 0.5);
  };
  return {median(&Loop::throughput), median(&Loop::p50_ms), median(&Loop::p99_ms), median(&Loop::cpu_us)};
}

pare::RunnerOptions warmed(pare::RunnerOptions options, const Served& m) {
  return options.warmup(5).example_inputs(m.requests.front());
}

// The forward passes alone on one LibTorch thread: batch 1 and batch 8.
std::pair<double, double> forward_ms(const Served& m) {
  const auto shape = m.requests.front().front().toTensor().sizes().vec();
  const auto rows = pare::benchmark_models(
      {{"m", m.module}},
      pare::BenchOptions().inputs({shape}).batches({1, 8}).threads({1}).duration(std::chrono::milliseconds(400)));
  return {rows.at(0).p50_ms, rows.at(1).p50_ms};
}

// Prints the table; returns the best throughput the hint runner reached (the open loop's capacity).
double closed_loop_table(const Served& m, const Config& config) {
  const auto [one, eight] = forward_ms(m);
  const double cores = std::thread::hardware_concurrency();
  const double ceiling = cores * std::max(1 / one, 8 / eight) * 1e3;
  std::printf(
      "\n## %s\n\nforward alone, 1 thread: batch 1 %.3f ms, batch 8 %.3f ms (%.0f%% less per image); "
      "ceiling %.0f images/s (%.0f cores, each running its best batch)\n\n",
      m.name.c_str(), one, eight, 100 * (1 - eight / (8 * one)), ceiling, cores);
  std::printf(
      "| clients | plain req/s | plain p99 ms | hint req/s | hint p99 ms | hint / plain | fixed req/s | fixed / plain "
      "| passes on callers | mean batch | queue ms/req | assemble %% | CPU us/req plain / hint | hint / ceiling | hint "
      "choice |\n"
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  double capacity = 0;
  for (int clients : config.clients) {
    auto hinted = pare::RunnerOptions().hint(pare::RunnerHint::Throughput);
    if (config.concurrency > 0) hinted.concurrency(config.concurrency);
    pare::Runner hint(m.module, warmed(hinted, m));
    pare::Runner fixed(m.module, warmed(pare::RunnerOptions().max_batch(32), m));
    // A shared host drifts by tens of percent within seconds: the three are
    // taken in turn, `rounds` times, and each column is the median of its rounds.
    std::vector<Loop> plains, tuneds, befores;
    for (int round = 0; round < config.rounds; ++round) {
      plains.push_back(closed_loop(m, clients, config.seconds, [&](const std::vector<c10::IValue>& in) {
        torch::NoGradGuard no_grad;
        return m.module.get_method("forward")(in);
      }));
      tuneds.push_back(closed_loop(m, clients, config.seconds, [&](auto in) { return hint.run(std::move(in)); }));
      befores.push_back(closed_loop(m, clients, config.seconds, [&](auto in) { return fixed.run(std::move(in)); }));
    }
    const auto plain = median_loop(plains), tuned = median_loop(tuneds), before = median_loop(befores);
    const auto s = hint.stats();
    const double queued = double(s.requests);
    const double busy = s.forward_seconds + s.assemble_seconds;
    std::printf(
        "| %d | %.0f | %.3f | %.0f | %.3f | **%.2fx** | %.0f | %.2fx | %.0f%% | %.2f | %.3f | %.1f%% | %.0f / %.0f | "
        "%.2f | "
        "max_batch %lld, %d workers, %d passes, saving %.2f |\n",
        clients, plain.throughput, plain.p99_ms, tuned.throughput, tuned.p99_ms, tuned.throughput / plain.throughput,
        before.throughput, before.throughput / plain.throughput,
        s.batches ? 100.0 * double(s.caller_batches) / double(s.batches) : 0.0,
        s.batches ? double(s.requests) / double(s.batches) : 0.0, queued > 0 ? 1e3 * s.queue_seconds / queued : 0.0,
        busy > 0 ? 100 * s.assemble_seconds / busy : 0.0, plain.cpu_us, tuned.cpu_us, tuned.throughput / ceiling,
        (long long)s.max_batch, int(s.threads), int(s.concurrency), s.batch_saving);
    std::fflush(stdout);
    capacity = std::max(capacity, tuned.throughput);
  }
  return capacity;
}

double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0, resident = 0;
  statm >> pages >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / (1 << 20);
}

void open_loop(const Served& m, double capacity, const Config& config) {
  const size_t max_queue = 16;
  pare::Runner runner(m.module,
                      warmed(pare::RunnerOptions().hint(pare::RunnerHint::Throughput).max_queue(max_queue), m));
  auto load = [&](double rate, uint64_t seed) {
    return pare::run_open_loop(runner, pare::OpenLoopOptions(rate)
                                           .duration(std::chrono::milliseconds(std::llround(config.seconds * 1000)))
                                           .seed(seed)
                                           .inputs(m.requests));
  };
  const auto unloaded = load(0.1 * capacity, 1);
  load(2 * capacity, 2);  // a first overload run grows the allocator's arenas to their working size
  const double rss_before = rss_mib();
  const auto overloaded = load(2 * capacity, 3);
  const double rss_after = rss_mib();
  std::printf("\nopen loop, hint throughput, max_queue %zu, capacity %.0f requests/s (closed loop):\n\n%s", max_queue,
              capacity, pare::open_loop_table({{"10% of capacity", unloaded}, {"2x capacity", overloaded}}).c_str());
  const int64_t ended = overloaded.succeeded + overloaded.rejected + overloaded.timeouts + overloaded.failed;
  std::printf(
      "\n2x capacity: accepted p99 %.2fx the unloaded p99 (goal <= 5x); %.1f%% rejected; %llu sent, %llu "
      "answered or refused (nothing lost: %s); RSS %.1f MiB before, %.1f MiB after (%+.1f MiB)\n",
      overloaded.p99_ms / unloaded.p99_ms, 100.0 * double(overloaded.rejected) / double(overloaded.sent),
      (unsigned long long)overloaded.sent, (unsigned long long)ended, ended == overloaded.sent ? "yes" : "NO",
      rss_before, rss_after, rss_after - rss_before);
}

void hot_swap(const Served& m, const Config& config) {
  pare::Runner runner(m.module, warmed(pare::RunnerOptions().hint(pare::RunnerHint::Throughput), m));
  std::atomic<int> failures{0};
  std::thread swapper([&] {
    const auto spacing = std::chrono::duration<double>(config.seconds / config.swaps);
    for (int s = 0; s < config.swaps; ++s) {
      runner.swap(m.module.clone());
      std::this_thread::sleep_for(spacing);
    }
  });
  const auto loop = closed_loop(m, 8, config.seconds, [&](auto in) {
    try {
      return runner.run(std::move(in));
    } catch (const std::exception&) {
      ++failures;
      return c10::IValue(torch::zeros({1}));
    }
  });
  swapper.join();
  std::printf("\nhot swap: %llu swaps under 8 clients, %.0f requests/s, %d failed (goal 0)\n",
              (unsigned long long)runner.stats().swaps, loop.throughput, failures.load());
}

torch::jit::Module int8_cnn(const torch::jit::Module& fp32, const ex::Dataset& calibration_images) {
  pare::InputBatches calibration;
  for (int64_t b = 0; b < 4; ++b) calibration.push_back({calibration_images.images.slice(0, b * 64, (b + 1) * 64)});
  pare::Pipeline pipeline;
  pipeline.add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration)));
  return pipeline.run(fp32).module;
}

// torchvision's resnet18, random weights, scripted and frozen by stock PyTorch.
torch::jit::Module resnet18() {
  const auto path =
      std::filesystem::temp_directory_path() / ("bench_runner_resnet18_" + std::to_string(getpid()) + ".pt");
  const std::string command = std::string(PARE_PYTHON) +
                              " -c \"import torch, torchvision; m = torchvision.models.resnet18().eval(); "
                              "torch.jit.save(torch.jit.freeze(torch.jit.script(m)), '" +
                              path.string() + "')\"";
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  auto module = torch::jit::load(path.string());
  std::filesystem::remove(path);
  return module;
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> items;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) items.push_back(item);
  return items;
}

std::vector<Served> models(const Config& config) {
  const auto images = ex::load_fashion_mnist(false, 2000);
  std::vector<std::vector<c10::IValue>> digits, pictures;
  for (int64_t i = 0; i < 512; ++i) digits.push_back({images.images.slice(0, i, i + 1)});
  for (int64_t i = 0; i < 64; ++i) pictures.push_back({torch::randn({1, 3, 64, 64})});
  auto fp32 = ex::make_fashion_cnn();
  fp32.eval();
  std::vector<Served> served;
  for (const auto& name : config.models) {
    if (name == "int8") served.push_back({"int8 CNN", int8_cnn(fp32, ex::load_fashion_mnist(true, 256)), digits});
    else if (name == "fp32") served.push_back({"fp32 CNN", torch::jit::freeze(fp32), digits});
    else if (name == "resnet18") served.push_back({"resnet18 3x64x64", resnet18(), pictures});
    else throw std::runtime_error("unknown model " + name + "; expected int8, fp32 or resnet18");
  }
  return served;
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) config.seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) {
      config.clients.clear();
      for (const auto& c : split(argv[i + 1])) config.clients.push_back(std::max(1, std::atoi(c.c_str())));
    }
    if (!std::strcmp(argv[i], "--models")) config.models = split(argv[i + 1]);
    if (!std::strcmp(argv[i], "--rounds")) config.rounds = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--swaps")) config.swaps = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--only")) config.only = argv[i + 1];
    if (!std::strcmp(argv[i], "--concurrency")) config.concurrency = std::max(0, std::atoi(argv[i + 1]));
  }
  torch::set_num_threads(1);  // one LibTorch thread per pass, for every way of serving
  std::printf("# bench_runner: single-row requests, %.1f s per run, %u hardware threads, LibTorch %s\n", config.seconds,
              std::thread::hardware_concurrency(), TORCH_VERSION);
  const auto served = models(config);
  for (const auto& m : served) {
    const double capacity = closed_loop_table(m, config);
    if (config.only == "closed") continue;
    open_loop(m, capacity, config);
    if (&m == &served.front()) hot_swap(m, config);  // swaps re-warm every batch size: the smallest model
  }
  return 0;
}
