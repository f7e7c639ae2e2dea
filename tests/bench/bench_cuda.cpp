// GPU serving, mixed precision and distillation, each against what a user
// would otherwise run, in one process on one card:
//   1. the Fashion-MNIST CNN served to 1/8/64 concurrent clients sending single
//      images: plain LibTorch on the GPU (module.forward per request, no pare),
//      pare::Runner on the GPU (dynamic batching, pinned staging, a stream per
//      worker) and pare::Runner on the CPU with the int8 model;
//   2. ConvertPrecision bf16 vs fp32 forward at batch 256 (the CNN, and any
//      scripted models given with --model, e.g. torchvision's resnet18);
//   3. one Distill epoch over the 60k training images on the GPU vs the CPU;
//   4. the cache key of a GPU input (device fingerprint) vs copying it out and hashing.
// Prints medians and ratios. Skips (exit 0) without a CUDA device.
//
//   bench_cuda [--seconds 2] [--cpu-distill-images 12800] [--model name=path.pt:3x224x224 ...] [--only serving]

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <pare/cache/cache.hpp>
#include <pare/distill/distill.hpp>
#include <pare/convert/precision.hpp>
#include <pare/quantize/quantize.hpp>
#include <pare/serve/runner.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;
using Clock = std::chrono::steady_clock;

namespace {

struct Served {
  double throughput = 0, p50_ms = 0, p99_ms = 0;
};

double percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[std::min(values.size() - 1, size_t(q * double(values.size())))];
}

// `clients` threads each send single images through `serve` in a closed loop for `seconds`.
Served drive(const std::function<torch::Tensor(const torch::Tensor&)>& serve, const torch::Tensor& images, int clients,
             double seconds) {
  for (int i = 0; i < 20; ++i) serve(images.slice(0, i, i + 1));  // warm-up
  std::atomic<bool> stop{false}, go{false};
  std::atomic<int> ready{0};
  std::mutex mutex;
  std::vector<double> latencies;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::vector<double> mine;
      ++ready;  // the clock starts once every client exists
      while (!go) std::this_thread::yield();
      for (int64_t i = c; !stop; i += clients) {
        const auto t0 = Clock::now();
        const auto row = i % images.size(0);
        serve(images.slice(0, row, row + 1));
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      std::lock_guard<std::mutex> lock(mutex);
      latencies.insert(latencies.end(), mine.begin(), mine.end());
    });
  }
  while (ready < clients) std::this_thread::yield();
  const auto start = Clock::now();
  go = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  return {double(latencies.size()) / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99)};
}

double median_forward_ms(torch::jit::Module& module, const torch::Tensor& input, int repeats = 30);

void serving(const torch::jit::Module& cnn, const torch::Tensor& images, const torch::Tensor& calibration,
             double seconds) {
  auto plain = cnn.clone();
  plain.to(torch::kCUDA);
  auto plain_serve = [&](const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    return plain.forward({x.to(torch::kCUDA)}).toTensor().to(torch::kCPU);
  };
  std::vector<std::vector<c10::IValue>> calib;
  for (int64_t b = 0; b < calibration.size(0); b += 64) calib.push_back({calibration.slice(0, b, b + 64)});
  auto int8 = pare::Pipeline().add(pare::QuantizeInt8(pare::QuantizeInt8Options(calib))).run(cnn).module;

  // The most the card can do with this model: batches of 64 already on the device, back to back.
  const auto offline_ms = median_forward_ms(plain, images.slice(0, 0, 64).to(torch::kCUDA));
  const double offline = 64 / offline_ms * 1e3;
  std::printf(
      "\n1. serving the Fashion-MNIST CNN, single-image requests, %.1f s per cell; offline batch 64 on the "
      "GPU: %.0f images/s\n",
      seconds, offline);
  std::printf("%-8s %-34s %12s %9s %9s %12s %12s %12s\n", "clients", "server", "requests/s", "p50 ms", "p99 ms",
              "vs plain GPU", "p99 vs plain", "vs offline");
  for (int clients : {1, 8, 64}) {
    const auto base = drive(plain_serve, images, clients, seconds);
    auto row = [&](const char* name, const Served& s) {
      std::printf("%-8d %-34s %12.0f %9.3f %9.3f %11.2fx %11.2fx %11.2f\n", clients, name, s.throughput, s.p50_ms,
                  s.p99_ms, s.throughput / base.throughput, s.p99_ms / base.p99_ms, s.throughput / offline);
    };
    row("plain LibTorch GPU (no batching)", base);
    // The GPU Runner at a few worker counts; batch_gap 0 sends a batch as soon as a worker is free.
    struct GpuConfig {
      const char* name;
      int workers;
      std::optional<std::chrono::microseconds> gap;
    };
    for (const GpuConfig& c : {GpuConfig{"pare Runner GPU (batching)", 2, std::nullopt},
                               GpuConfig{"pare Runner GPU, 4 workers", 4, std::nullopt},
                               GpuConfig{"pare Runner GPU, 8 workers, gap 0", 8, std::chrono::microseconds(0)}}) {
      auto pinned = std::make_shared<pare::TensorPool>(pare::TensorPoolOptions().memory(pare::PoolMemory::Pinned));
      auto options = pare::RunnerOptions()
                         .device(torch::kCUDA)
                         .pool(pinned)
                         .max_batch(64)
                         .threads(c.workers)
                         .max_delay(std::chrono::microseconds(200));
      if (c.gap) options.batch_gap(*c.gap);
      pare::Runner gpu(cnn, options);
      row(c.name, drive([&](const torch::Tensor& x) { return gpu.run({x}).toTensor(); }, images, clients, seconds));
    }
    {
      pare::Runner cpu(int8, pare::RunnerOptions().max_batch(64).threads(2).max_delay(std::chrono::microseconds(500)));
      row("pare Runner CPU int8 (batching)",
          drive([&](const torch::Tensor& x) { return cpu.run({x}).toTensor(); }, images, clients, seconds));
    }
  }
}

double median_forward_ms(torch::jit::Module& module, const torch::Tensor& input, int repeats) {
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 5; ++i) module.forward({input});
  torch::cuda::synchronize();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = Clock::now();
    module.forward({input});
    torch::cuda::synchronize();
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return percentile(times, 0.5);
}

void precision(const std::vector<std::tuple<std::string, torch::jit::Module, std::vector<int64_t>>>& models) {
  std::printf("\n2. forward at batch 256 on the GPU, fp32 vs ConvertPrecision (last layer kept fp32), median of 30\n");
  std::printf("%-14s %9s %9s %9s %9s %9s %9s %9s\n", "model", "fp32 ms", "bf16 ms", "fp16 ms", "bf16 NHWC", "fp16 NHWC",
              "bf16 gain", "best gain");
  for (const auto& [name, module, shape] : models) {
    auto sizes = shape;
    sizes.insert(sizes.begin(), 256);
    const auto input = torch::randn(sizes).to(torch::kCUDA);
    auto fp32 = module.clone();
    fp32.to(torch::kCUDA);
    std::string last;
    for (const auto& m : fp32.named_modules())
      if (!m.name.empty() && m.value.named_parameters(false).size() > 0) last = m.name;
    const double base = median_forward_ms(fp32, input);
    std::vector<double> ms;
    for (bool nhwc : {false, true}) {
      for (auto dtype : {torch::kBFloat16, torch::kHalf}) {
        const auto options = pare::ConvertPrecisionOptions(dtype).keep_fp32({last}).channels_last(nhwc);
        auto low = pare::Pipeline().add(pare::ConvertPrecision(options)).run(fp32).module;
        ms.push_back(median_forward_ms(low, input));
      }
    }
    const double best_bf16 = std::min(ms[0], ms[2]);
    std::printf("%-14s %9.3f %9.3f %9.3f %9.3f %9.3f %8.2fx %8.2fx\n", name.c_str(), base, ms[0], ms[1], ms[2], ms[3],
                base / best_bf16, base / *std::min_element(ms.begin(), ms.end()));
  }
}

void distillation(const ex::Dataset& train, int64_t cpu_images) {
  auto teacher = ex::make_fashion_cnn({32, 64, 128}, 1);
  const std::vector<pare::Batch> batches = train.batches(256);
  std::vector<pare::Batch> cpu_batches(batches.begin(),
                                       batches.begin() + std::min<int64_t>(batches.size(), cpu_images / 256));
  auto run = [&](c10::Device device, const std::vector<pare::Batch>& data) {
    auto student = ex::make_fashion_cnn({16, 32, 64}, 2);
    return pare::distill(student, pare::DistillOptions(teacher, data).epochs(1).device(device));
  };
  run(torch::kCUDA, {batches.begin(), batches.begin() + 5});  // warm-up: cuDNN autotuning, allocator
  const auto gpu = run(torch::kCUDA, batches);
  const auto cpu = run(torch::kCPU, cpu_batches);
  std::printf("\n3. Distill, one epoch of Fashion-MNIST (teacher 32/64/128, student 16/32/64, batches of 256)\n");
  std::printf("%-6s %10s %14s %16s %10s\n", "device", "images", "samples/s", "epoch (60k) s", "speed-up");
  std::printf("%-6s %10lld %14.0f %16.2f %9.2fx\n", "cpu", (long long)(cpu_batches.size() * 256),
              cpu.samples_per_second, 60000 / cpu.samples_per_second, 1.0);
  std::printf("%-6s %10lld %14.0f %16.2f %9.2fx\n", "cuda", (long long)train.size(), gpu.samples_per_second,
              60000 / gpu.samples_per_second, gpu.samples_per_second / cpu.samples_per_second);
}

void cache_keys() {
  std::printf("\n4. cache key of one GPU input: pare's key_of vs copy to the host + XXH3-128, median of 30\n");
  std::printf("%-12s %14s %14s %10s\n", "input", "key_of ms", "copy+hash ms", "speed-up");
  pare::InferenceCache cache;
  for (const int64_t mib : {1, 16, 256}) {
    const auto x = torch::randn({mib << 18}).to(torch::kCUDA);  // mib MiB of float32
    auto time = [&](const std::function<void()>& body) {
      std::vector<double> times;
      for (int i = 0; i < 33; ++i) {
        torch::cuda::synchronize();
        const auto t0 = Clock::now();
        body();
        times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      }
      return percentile({times.begin() + 3, times.end()}, 0.5);
    };
    const double key = time([&] { cache.key_of({x}); });
    const double copy = time([&] {
      const auto host = x.cpu();
      pare::content_hash(host.data_ptr(), host.numel() * host.element_size());
    });
    std::printf("%9lld MiB %14.3f %14.3f %9.2fx\n", (long long)mib, key, copy, copy / key);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!torch::cuda::is_available()) {
    std::printf("bench_cuda: SKIPPED, no CUDA device (this LibTorch has no CUDA or no GPU is visible)\n");
    return 0;
  }
  double seconds = 2;
  int64_t cpu_distill_images = 12800;
  std::string only;
  std::vector<std::tuple<std::string, torch::jit::Module, std::vector<int64_t>>> models;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--cpu-distill-images")) cpu_distill_images = std::atoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    if (!std::strcmp(argv[i], "--model")) {  // name=path:CxHxW
      const std::string spec = argv[i + 1];
      const auto eq = spec.find('='), colon = spec.rfind(':');
      std::vector<int64_t> shape;
      for (size_t p = colon + 1; p < spec.size();) {
        const auto x = spec.find('x', p);
        shape.push_back(std::stoll(spec.substr(p, x - p)));
        p = x == std::string::npos ? spec.size() : x + 1;
      }
      models.emplace_back(spec.substr(0, eq), torch::jit::load(spec.substr(eq + 1, colon - eq - 1)), shape);
    }
  }
  const auto train = ex::load_fashion_mnist(true);
  const auto test = ex::load_fashion_mnist(false, 4096);
  auto cnn = ex::make_fashion_cnn();
  ex::train(cnn, train.slice(0, 10000), 1);
  cnn.eval();
  std::printf("bench_cuda on %s, LibTorch threads %d\n", torch::cuda::is_available() ? "CUDA" : "cpu",
              torch::get_num_threads());
  models.insert(models.begin(), std::make_tuple(std::string("fashion_cnn"), cnn, std::vector<int64_t>{1, 28, 28}));
  if (only != "serving") {
    precision(models);
    distillation(train, cpu_distill_images);
    cache_keys();
  }
  serving(cnn, test.images, train.images.slice(0, 0, 640), seconds);
  return 0;
}
