// TensorPool benchmark. Prints medians and ratios measured in one run:
//  1. acquire + fill + release of 64 KiB, 4 MiB and 64 MiB float tensors:
//     pool vs torch::empty + fill_, with minor page faults (getrusage) per op;
//  2. a serving loop: the Fashion-MNIST CNN's forward at batch 64, plain vs
//     under a PoolAllocatorGuard per call: time, allocations and page faults per call.
//
//   bench_pool [--calls 1000] [--threads N]

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"
#include "pare/pool/pool.hpp"

namespace {

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

double now_us() {
  using namespace std::chrono;
  return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

double mean(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return values.empty() ? 0 : sum / values.size();
}

/// Per-op samples of wall time (us), minor faults and a counter's increase.
struct Samples {
  std::vector<double> us, faults, allocations;
};

Samples measure(int repeats, const std::function<void()>& op,
                const std::function<uint64_t()>& allocation_counter = [] { return uint64_t{0}; }) {
  Samples s;
  for (int i = 0; i < repeats; ++i) {
    const long faults = minor_faults();
    const uint64_t allocations = allocation_counter();
    const double start = now_us();
    op();
    s.us.push_back(now_us() - start);
    s.faults.push_back(static_cast<double>(minor_faults() - faults));
    s.allocations.push_back(static_cast<double>(allocation_counter() - allocations));
  }
  return s;
}

void append(Samples& into, const Samples& from) {
  into.us.insert(into.us.end(), from.us.begin(), from.us.end());
  into.faults.insert(into.faults.end(), from.faults.begin(), from.faults.end());
  into.allocations.insert(into.allocations.end(), from.allocations.begin(), from.allocations.end());
}

void bench_acquire_fill_release() {
  struct Size {
    const char* name;
    int64_t floats;
    int repeats;
  };
  const Size sizes[] = {{"4 KiB", 1 << 10, 4000},    {"64 KiB", 16 << 10, 2000}, {"256 KiB", 64 << 10, 1000},
                        {"1 MiB", 256 << 10, 500},   {"4 MiB", 1 << 20, 200},    {"64 MiB", 16 << 20, 30}};
  std::printf("\n## acquire + fill + release (float32; medians, faults = mean minor page faults per op)\n");
  std::printf(
      "pool: default options (leases under %zu KiB get plain storage); pooled: small_bytes(0), every size pooled\n\n",
      pare::TensorPoolOptions().small_bytes() >> 10);
  std::printf("| size    | empty+fill us | pool us | speedup | pooled us | speedup | empty+fill faults | pooled faults |\n");
  std::printf("|---------|---------------|---------|---------|-----------|---------|-------------------|---------------|\n");
  for (const auto& size : sizes) {
    pare::TensorPool pool(pare::TensorPoolOptions().max_bytes(size_t{256} << 20));
    pare::TensorPool pooled(pare::TensorPoolOptions().max_bytes(size_t{256} << 20).small_bytes(0));
    auto plain = [&] { torch::empty({size.floats}, torch::kFloat).fill_(1.0f); };
    auto leased = [&size](pare::TensorPool& from) {
      return [&from, &size] {
        auto lease = from.acquire({size.floats}, torch::kFloat);
        lease.tensor().fill_(1.0f);
      };
    };
    measure(3, plain);  // warm-up, and the pools' first (missing) acquires
    measure(3, leased(pool));
    measure(3, leased(pooled));
    // Interleaved in chunks so that drift of the shared machine hits all three alike.
    Samples p, q, r;
    const int chunk = std::max(1, size.repeats / 10);
    for (int done = 0; done < size.repeats; done += chunk) {
      append(p, measure(chunk, plain));
      append(q, measure(chunk, leased(pool)));
      append(r, measure(chunk, leased(pooled)));
    }
    std::printf("| %-7s | %13.2f | %7.2f | %6.2fx | %9.2f | %6.2fx | %17.1f | %13.1f |\n", size.name, median(p.us),
                median(q.us), median(p.us) / median(q.us), median(r.us), median(p.us) / median(r.us), mean(p.faults),
                mean(r.faults));
  }
}

void bench_serving_loop(int calls) {
  auto model = pare::examples::make_fashion_cnn();
  model.eval();
  const auto input = pare::examples::load_fashion_mnist(false, 64).images;
  torch::NoGradGuard no_grad;
  pare::install_pool_allocator();  // counts LibTorch's own allocations from here on
  pare::TensorPool pool;

  auto plain = [&] { model.forward({input}); };
  auto guarded = [&] {
    pare::PoolAllocatorGuard guard(pool);
    model.forward({input});
  };
  auto allocator_calls = [] { return pare::unpooled_cpu_allocations() + pare::pooled_cpu_allocations(); };
  auto new_allocations = [&] { return pare::unpooled_cpu_allocations() + pool.stats().misses; };
  measure(10, plain);  // warm-up: the profiling executor and oneDNN's primitive caches
  measure(10, guarded);
  const auto misses_before = pool.stats().misses;

  // Interleaved in chunks so that drift of the shared machine hits both alike.
  // Plain: every allocator call is a new allocation (posix_memalign). Guard: new
  // allocations are the pool's misses plus calls not routed (other threads).
  Samples p, q, q_calls;
  const int chunk = 50;
  for (int done = 0; done < calls; done += chunk) {
    const int n = std::min(chunk, calls - done);
    append(p, measure(n, plain, allocator_calls));
    append(q, measure(n, guarded, new_allocations));
    append(q_calls, measure(2, guarded, allocator_calls));  // separate: counting needs its own reads
  }
  const auto stats = pool.stats();
  std::printf("\n## serving loop: Fashion-MNIST CNN forward, batch 64, %d calls each, %d LibTorch threads\n\n",
              calls, torch::get_num_threads());
  std::printf("| mode            | median ms | allocator calls/call | new allocations/call | faults/call (mean) | faults/call (median) |\n");
  std::printf("|-----------------|-----------|----------------------|----------------------|--------------------|----------------------|\n");
  std::printf("| plain           | %9.3f | %20.2f | %20.2f | %18.1f | %20.1f |\n", median(p.us) / 1e3,
              mean(p.allocations), mean(p.allocations), mean(p.faults), median(p.faults));
  std::printf("| allocator guard | %9.3f | %20.2f | %20.2f | %18.1f | %20.1f |\n", median(q.us) / 1e3,
              mean(q_calls.allocations), mean(q.allocations), mean(q.faults), median(q.faults));
  std::printf("\nspeedup (plain / guard, median time): %.2fx\n", median(p.us) / median(q.us));
  std::printf("pool after the loop: %llu acquires, %llu hits, %llu misses (%llu during the timed loop), "
              "%.1f MiB idle, peak in use %.1f MiB\n",
              static_cast<unsigned long long>(stats.acquires), static_cast<unsigned long long>(stats.hits),
              static_cast<unsigned long long>(stats.misses),
              static_cast<unsigned long long>(stats.misses - misses_before), stats.bytes_idle / 1048576.0,
              stats.peak_bytes_in_use / 1048576.0);
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--calls")) calls = std::max(1, std::atoi(argv[i + 1]));
    else if (!std::strcmp(argv[i], "--threads")) torch::set_num_threads(std::max(1, std::atoi(argv[i + 1])));
    else {
      std::fprintf(stderr, "usage: bench_pool [--calls 1000] [--threads N]\n");
      return 2;
    }
  }
  std::printf("# bench_pool: TensorPool vs LibTorch's allocator (%d LibTorch threads)\n", torch::get_num_threads());
  bench_acquire_fill_release();
  bench_serving_loop(calls);
  return 0;
}
