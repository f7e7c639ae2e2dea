// pare::InferenceCache: hash throughput vs memcpy; hit latency for a
// 1x3x224x224 float input vs a naive MD5 + std::unordered_map cache (MD5 from
// nettle) and vs one forward pass of the example Fashion-MNIST CNN; throughput
// at 90% hits with 1-8 threads on Fashion-MNIST images; Redis-tier hit latency
// and requests/s against a redis-server started here on a free port.
//
//   bench_cache [--repeats 200] [--no-redis]
//
// LibTorch runs single-threaded so thread counts are the bench's own.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nettle/md5.h>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"
#include "pare/cache/cache.hpp"
#ifdef PARE_WITH_REDIS
#include "../support/redis_server.hpp"
#include "pare/cache/redis_tier.hpp"
#endif

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

template <class F>
double median_seconds(int repeats, F&& body) {
  return pare::examples::median_call_ms(repeats, std::forward<F>(body)) / 1e3;
}

void row(const char* what, const std::string& pare, const std::string& baseline, double ratio) {
  std::printf("| %-44s | %14s | %26s | %8.1fx |\n", what, pare.c_str(), baseline.c_str(), ratio);
}
std::string fmt(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

// The naive design: MD5 of the bytes as a hex key in an unordered_map, no
// shape/dtype in the key, no copy on return, no lock.
class NaiveCache {
 public:
  static std::string md5_hex(const at::Tensor& x) {
    md5_ctx ctx;
    md5_init(&ctx);
    md5_update(&ctx, x.numel() * x.element_size(), static_cast<const uint8_t*>(x.data_ptr()));
    uint8_t digest[MD5_DIGEST_SIZE];
    md5_digest(&ctx, MD5_DIGEST_SIZE, digest);
    char hex[2 * MD5_DIGEST_SIZE + 1];
    for (int i = 0; i < MD5_DIGEST_SIZE; ++i) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return hex;
  }
  at::Tensor get_or_compute(const at::Tensor& x, const std::function<at::Tensor()>& fn) {
    const auto key = md5_hex(x.contiguous());
    auto it = map_.find(key);
    if (it != map_.end()) return it->second;
    return map_[key] = fn();
  }

 private:
  std::unordered_map<std::string, at::Tensor> map_;
};

void bench_hash(int repeats) {
  for (size_t bytes : {size_t(3 * 224 * 224 * 4), size_t(64) << 20}) {
    std::vector<uint8_t> src(bytes, 1), dst(bytes);
    for (size_t i = 0; i < bytes; ++i) src[i] = uint8_t(i * 2654435761u >> 13);
    volatile uint64_t sink = 0;
    const int n = bytes > (1 << 20) ? std::max(5, repeats / 20) : repeats;
    const double hash = median_seconds(n, [&] { sink = sink + pare::content_hash(src.data(), bytes).low; });
    const double copy = median_seconds(n, [&] { std::memcpy(dst.data(), src.data(), bytes); sink = sink + dst[bytes / 2]; });
    const std::string label = "XXH3-128 GB/s vs memcpy, " + (bytes >> 20 ? std::to_string(bytes >> 20) + " MiB" : std::to_string(bytes >> 10) + " KiB");
    row(label.c_str(), fmt("%.1f GB/s", bytes / hash / 1e9), fmt("memcpy %.1f GB/s", bytes / copy / 1e9), copy / hash);
  }
}

void bench_hit_path(int repeats) {
  const auto x = at::randn({1, 3, 224, 224});
  const auto logits = at::randn({1, 1000});
  auto compute = [&] { return c10::IValue(logits); };
  pare::InferenceCache cache, unverified(pare::InferenceCacheOptions().verify(false));
  cache.get_or_compute({x}, compute);
  unverified.get_or_compute({x}, compute);
  NaiveCache naive;
  naive.get_or_compute(x, [&] { return logits; });
  const double pare_hit = median_seconds(repeats, [&] { cache.get_or_compute({x}, compute); });
  const double pare_unverified = median_seconds(repeats, [&] { unverified.get_or_compute({x}, compute); });
  const double naive_hit = median_seconds(repeats, [&] { naive.get_or_compute(x, [&] { return logits; }); });
  auto cnn = pare::examples::make_fashion_cnn();
  cnn.eval();
  const double forward = pare::examples::median_latency_ms(cnn, 1, repeats) / 1e3;
  row("hit 1x3x224x224 f32 (verify on) vs MD5+map", fmt("%.1f us", pare_hit * 1e6), fmt("naive %.1f us", naive_hit * 1e6), naive_hit / pare_hit);
  row("hit 1x3x224x224 f32 (verify off) vs MD5+map", fmt("%.1f us", pare_unverified * 1e6), fmt("naive %.1f us", naive_hit * 1e6), naive_hit / pare_unverified);
  row("hit 1x3x224x224 f32 vs CNN forward (batch 1)", fmt("%.1f us", pare_hit * 1e6), fmt("forward %.1f us", forward * 1e6), forward / pare_hit);
}

// 90% hits: 900 cached Fashion-MNIST images; every 10th request is a fresh image (a CNN forward).
void bench_threads(const pare::examples::Dataset& data) {
  auto cnn = pare::examples::make_fashion_cnn();
  cnn.eval();
  const int64_t hot = 900, requests = 6000;
  double base = 0;
  for (int threads : {1, 2, 4, 8}) {
    std::vector<double> rates;
    for (int run = 0; run < 3; ++run) {
      pare::InferenceCache cache(pare::InferenceCacheOptions().capacity_bytes(size_t(64) << 20).shards(16));
      auto forward = [&](const at::Tensor& image) {
        return [&cnn, image] {
          at::NoGradGuard no_grad;
          return cnn.forward({image.unsqueeze(0)});
        };
      };
      for (int64_t i = 0; i < hot; ++i) cache.get_or_compute({data.images[i]}, forward(data.images[i]));
      std::atomic<int64_t> next_cold{hot};
      std::vector<std::thread> pool;
      const auto start = Clock::now();
      for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
          for (int64_t r = t; r < requests; r += threads) {
            const auto image = r % 10 == 9 ? data.images[next_cold++ % data.size()] : data.images[(r * 7919) % hot];
            cache.get_or_compute({image}, forward(image));
          }
        });
      for (auto& th : pool) th.join();
      rates.push_back(requests / seconds_since(start));
    }
    std::sort(rates.begin(), rates.end());
    const double rate = rates[1];
    if (threads == 1) base = rate;
    const std::string label = "90% hits, 28x28 images, " + std::to_string(threads) + " thread(s)";
    row(label.c_str(), fmt("%.0f req/s", rate), fmt("1 thread %.0f req/s", base), rate / base);
  }
}

#ifdef PARE_WITH_REDIS
void bench_redis(int repeats, const pare::examples::Dataset& data) {
  if (!pare::testing::RedisServer::available()) {
    std::printf("| %-44s | %14s | %26s | %9s |\n", "Redis tier", "skipped", "no redis-server on PATH", "");
    return;
  }
  pare::testing::RedisServer server;
  auto tier = std::make_shared<pare::RedisTier>(pare::RedisTierOptions().port(server.port()).key_prefix("bench:"));
  auto cnn = pare::examples::make_fashion_cnn();
  cnn.eval();
  const double forward = pare::examples::median_latency_ms(cnn, 1, repeats) / 1e3;
  for (bool big : {false, true}) {
    const auto x = big ? at::randn({1, 3, 224, 224}) : data.images[0].unsqueeze(0);
    const auto y = at::randn({1, big ? 1000 : 10});
    pare::InferenceCache writer(pare::InferenceCacheOptions().remote(tier));
    writer.put({x}, y, std::chrono::milliseconds(1));
    pare::InferenceCache reader(pare::InferenceCacheOptions().remote(tier));
    const double hit = median_seconds(repeats, [&] {
      reader.clear();  // memory empty: the hit comes from Redis
      reader.get({x});
    });
    const double memory_hit = median_seconds(repeats, [&] { writer.get({x}); });
    const std::string label = std::string("Redis hit ") + (big ? "1x3x224x224" : "1x1x28x28") + " vs memory hit";
    row(label.c_str(), fmt("%.1f us", hit * 1e6), fmt("memory %.1f us", memory_hit * 1e6), memory_hit / hit);
    if (!big) row("Redis hit 1x1x28x28 vs CNN forward", fmt("%.1f us", hit * 1e6), fmt("forward %.1f us", forward * 1e6), forward / hit);
  }
  // Requests/s: every thread with its own memory tier (cleared), all on one server.
  const auto x = data.images[1].unsqueeze(0);
  pare::InferenceCache(pare::InferenceCacheOptions().remote(tier))
      .put({x}, at::randn({1, 10}), std::chrono::milliseconds(1));
  double base = 0;
  for (int threads : {1, 4}) {
    std::atomic<int64_t> done{0};
    std::vector<std::thread> pool;
    const auto start = Clock::now();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&] {
        pare::InferenceCache cache(pare::InferenceCacheOptions().remote(tier));
        for (int i = 0; i < 2000 / threads; ++i, ++done) {
          cache.clear();
          cache.get({x});
        }
      });
    for (auto& th : pool) th.join();
    const double rate = done / seconds_since(start);
    if (threads == 1) base = rate;
    const std::string label = "Redis hits/s, 28x28, " + std::to_string(threads) + " thread(s)";
    row(label.c_str(), fmt("%.0f req/s", rate), fmt("1 thread %.0f req/s", base), rate / base);
  }
  if (tier->stats().errors) std::printf("warning: %llu Redis errors\n", (unsigned long long)tier->stats().errors);
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int repeats = 200;
  bool redis = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::max(5, std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--no-redis")) redis = false;
    else { std::fprintf(stderr, "usage: bench_cache [--repeats N] [--no-redis]\n"); return 2; }
  }
  at::set_num_threads(1);
  const auto data = pare::examples::load_fashion_mnist(false, 2000);
  std::printf("| %-44s | %14s | %26s | %9s |\n", "measure (medians)", "pare", "baseline", "ratio");
  std::printf("|%s|%s|%s|%s|\n", std::string(46, '-').c_str(), std::string(16, '-').c_str(),
              std::string(28, '-').c_str(), std::string(11, '-').c_str());
  bench_hash(repeats);
  bench_hit_path(repeats);
  bench_threads(data);
#ifdef PARE_WITH_REDIS
  if (redis) bench_redis(repeats, data);
#endif
  (void)redis;
  std::printf("ratio: baseline time / pare time (throughput rows: pare rate / baseline rate); > 1 means the pare column is faster\n");
  return 0;
}
