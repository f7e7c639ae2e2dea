// TensorPool: reuse, size classes, the byte bound, trim, poison, leases that
// outlive their tensor copies, thread stress, and the allocator guard on a real
// forward pass of the Fashion-MNIST CNN.

#include "support/testing.hpp"

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "fashion_mnist.hpp"
#include "pare/pool/pool.hpp"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>

namespace {

constexpr size_t kKiB = 1024;

void* data_of(const pare::PooledTensor& lease) { return lease.tensor().data_ptr(); }

// These tests exercise pooling on small tensors: no size goes to the system allocator.
pare::TensorPoolOptions every_size() { return pare::TensorPoolOptions().small_bytes(0); }

struct SingleThreadUnderTsan {  // OpenMP's runtime is not TSan-instrumented
  SingleThreadUnderTsan() {
#if defined(__SANITIZE_THREAD__)
    torch::set_num_threads(1);
#endif
  }
} single_thread_under_tsan;

}  // namespace

TEST_CASE("released storage is handed back to the next request") {
  pare::TensorPool pool(every_size());
  void* first = nullptr;
  {
    auto lease = pool.acquire({64, 1024}, torch::kFloat);
    REQUIRE(lease.tensor().sizes() == torch::IntArrayRef({64, 1024}));
    REQUIRE(lease.tensor().is_contiguous());
    lease.tensor().fill_(3);
    first = data_of(lease);
  }
  auto again = pool.acquire({64, 1024}, torch::kFloat);
  CHECK(data_of(again) == first);
  const auto stats = pool.stats();
  CHECK(stats.acquires == 2);
  CHECK(stats.misses == 1);
  CHECK(stats.hits == 1);
  CHECK(stats.bytes_in_use == int64_t(pool.size_class(64 * 1024 * 4)));
}

TEST_CASE("a storage serves any shape and dtype of its size class") {
  pare::TensorPool pool(every_size());
  void* block = nullptr;
  { block = data_of(pool.acquire({64, 1024}, torch::kFloat)); }
  { CHECK(data_of(pool.acquire({128, 512}, torch::kFloat)) == block); }
  { CHECK(data_of(pool.acquire({64 * 1024}, torch::kInt)) == block); }
  // A request slightly smaller still fits the same class (classes are 25% apart).
  { CHECK(data_of(pool.acquire({64, 1000}, torch::kFloat)) == block); }
  auto big = pool.acquire({128, 1024}, torch::kFloat);  // another class: a new block
  CHECK(data_of(big) != block);
  CHECK(pool.stats().misses == 2);
}

TEST_CASE("size classes: the default and explicit ones") {
  pare::TensorPool pool(every_size());
  CHECK(pool.size_class(1) == 256);
  CHECK(pool.size_class(64 * kKiB) == 64 * kKiB);
  CHECK(pool.size_class(64 * kKiB + 1) == 80 * kKiB);
  for (size_t bytes : {300ul, 5000ul, 70000ul, 3000000ul}) {
    CHECK(pool.size_class(bytes) >= bytes);
    CHECK(pool.size_class(bytes) <= bytes + bytes / 4 + 64);
  }
  pare::TensorPool explicit_classes(pare::TensorPoolOptions().size_classes({kKiB, 64 * kKiB}));
  CHECK(explicit_classes.size_class(10) == kKiB);
  CHECK(explicit_classes.size_class(kKiB + 1) == 64 * kKiB);
  CHECK(explicit_classes.size_class(64 * kKiB + 1) == 68 * kKiB);  // above: whole pages
  CHECK_THROWS_AS(pare::TensorPool(pare::TensorPoolOptions().size_classes({64, 32})), pare::Error);
  CHECK_THROWS_AS(pare::TensorPool(pare::TensorPoolOptions().size_classes({0, 32})), pare::Error);
}

TEST_CASE("idle bytes stay under max_bytes, least recently used freed first") {
  pare::TensorPool pool(every_size().max_bytes(3 * 64 * kKiB));
  std::vector<pare::PooledTensor> leases;
  std::vector<void*> blocks;
  for (int i = 0; i < 5; ++i) {
    leases.push_back(pool.acquire({16 * 1024}, torch::kFloat));  // 64 KiB each
    blocks.push_back(data_of(leases.back()));
  }
  for (auto& lease : leases) CHECK(lease.release());  // released in order 0..4
  auto stats = pool.stats();
  CHECK(stats.bytes_idle == int64_t(3 * 64 * kKiB));
  CHECK(stats.blocks_idle == 3);
  CHECK(stats.evictions == 2);
  // Idle now: 2, 3, 4; the most recently released comes back first.
  std::vector<pare::PooledTensor> again;
  for (int i = 0; i < 3; ++i) again.push_back(pool.acquire({16 * 1024}, torch::kFloat));
  CHECK(data_of(again[0]) == blocks[4]);
  CHECK(data_of(again[1]) == blocks[3]);
  CHECK(data_of(again[2]) == blocks[2]);
  CHECK(pool.stats().misses == 5);
  again.push_back(pool.acquire({16 * 1024}, torch::kFloat));
  CHECK(pool.stats().misses == 6);
}

TEST_CASE("trim frees all idle storage") {
  pare::TensorPool pool(every_size());
  auto held = pool.acquire({1000}, torch::kDouble);
  { auto a = pool.acquire({4096}, torch::kFloat), b = pool.acquire({100}, torch::kLong); }
  const auto idle = pool.stats().bytes_idle;
  CHECK(idle == int64_t(pool.size_class(4096 * 4) + pool.size_class(800)));
  CHECK(int64_t(pool.trim()) == idle);
  CHECK(pool.stats().bytes_idle == 0);
  CHECK(pool.stats().blocks_idle == 0);
  CHECK(pool.stats().bytes_in_use == int64_t(pool.size_class(8000)));  // leases in use are untouched
  CHECK(held.tensor().fill_(1).sum().item<double>() == 1000);
}

TEST_CASE("poison mode fills released storage with NaN / 0xFF") {
  pare::TensorPool pool(every_size().poison(true));
  auto lease = pool.acquire({256}, torch::kFloat);
  lease.tensor().fill_(1);
  const float* stale = lease.tensor().data_ptr<float>();
  REQUIRE(lease.release());
  for (int i = 0; i < 256; ++i) REQUIRE(std::isnan(stale[i]));  // idle storage stays mapped
  auto ints = pool.acquire({256}, torch::kInt);
  CHECK(ints.tensor().eq(-1).all().item<bool>());
}

TEST_CASE("a tensor copied out of a lease keeps its storage out of the pool") {
  pare::TensorPool pool(every_size());
  torch::Tensor kept;
  void* block = nullptr;
  {
    auto lease = pool.acquire({1024}, torch::kFloat);
    lease.tensor().fill_(7);
    block = data_of(lease);
    kept = lease.tensor().view({32, 32});
    CHECK_FALSE(lease.release());  // a view still uses the storage
    CHECK_FALSE(lease.valid());
    CHECK_THROWS_AS(lease.tensor(), pare::Error);
  }
  CHECK(pool.stats().outlived == 1);
  {
    auto other = pool.acquire({1024}, torch::kFloat);
    CHECK(data_of(other) != block);  // never aliases the live copy
    other.tensor().fill_(-1);
    CHECK(kept.eq(7).all().item<bool>());
  }
  kept = torch::Tensor();  // last user gone: the storage returns
  auto reused = pool.acquire({1024}, torch::kFloat);
  CHECK(data_of(reused) == block);
}

TEST_CASE("leases move, and a moved-to lease releases once") {
  pare::TensorPool pool(every_size());
  auto a = pool.acquire({10}, torch::kFloat);
  pare::PooledTensor b = std::move(a);
  CHECK_FALSE(a.valid());
  CHECK(b.valid());
  b = pool.acquire({20}, torch::kFloat);  // releases the first storage
  CHECK(pool.stats().releases == 1);
  CHECK(b.release());
  CHECK_FALSE(b.release());
  CHECK(pool.stats().releases == 2);
  CHECK(pool.stats().bytes_in_use == 0);
}

TEST_CASE("acquire validates its arguments") {
  pare::TensorPool pool(every_size());
  CHECK_THROWS_WITH(pool.acquire({4, -1}), Catch::Contains("negative dimension"));
  CHECK_THROWS_WITH(pool.acquire({4}, torch::kQInt8), Catch::Contains("dtype"));
  CHECK_THROWS_WITH(pool.acquire({4}, torch::kFloat, torch::Device(torch::kCUDA, 0)),
                    Catch::Contains("CPU storage only"));
  auto empty = pool.acquire({0, 8});
  CHECK(empty.tensor().numel() == 0);
}

TEST_CASE("many threads acquire and release concurrently", "[tsan]") {
  pare::TensorPool pool(every_size().max_bytes(512 * kKiB));
  constexpr int kThreads = 8, kRounds = 300;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const int64_t n = 64 << ((t + i) % 8);  // 256 B .. 32 KiB
        auto lease = pool.acquire({n}, torch::kInt);
        auto* data = lease.tensor().data_ptr<int32_t>();
        for (int64_t j = 0; j < n; ++j) data[j] = t;
        if (i % 7 == 0) std::this_thread::yield();
        for (int64_t j = 0; j < n; ++j) wrong += data[j] != t;
        if (i % 50 == 0) pool.trim();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(wrong == 0);
  const auto stats = pool.stats();
  CHECK(stats.acquires == kThreads * kRounds);
  CHECK(stats.hits + stats.misses == stats.acquires);
  CHECK(stats.releases == stats.acquires);
  CHECK(stats.bytes_in_use == 0);
  CHECK(stats.bytes_idle <= int64_t(512 * kKiB));
  CHECK(stats.hits > 0);
}

TEST_CASE("the allocator guard makes a forward pass reuse its buffers", "[tsan]") {
  auto model = pare::examples::make_fashion_cnn();
  model.eval();
  const auto input = pare::examples::load_fashion_mnist(false, 64).images;
  torch::NoGradGuard no_grad;
  const auto reference = model.forward({input}).toTensor();

  pare::TensorPool pool(every_size());
  for (int i = 0; i < 3; ++i) {  // warm-up: the executor's profiling runs allocate differently
    pare::PoolAllocatorGuard guard(pool);
    model.forward({input});
  }
  const auto warm = pool.stats();
  REQUIRE(warm.misses > 0);  // the forward's allocations did go through the pool
  const auto unpooled_before = pare::unpooled_cpu_allocations();
  torch::Tensor output;
  for (int i = 0; i < 5; ++i) {
    pare::PoolAllocatorGuard guard(pool);
    auto out = model.forward({input}).toTensor();
    if (i == 4) output = out;  // one output alive at a time, as in the warm-up
  }
  const auto after = pool.stats();
  const auto unpooled_after = pare::unpooled_cpu_allocations();
  INFO("misses " << warm.misses << " -> " << after.misses << ", acquires " << warm.acquires << " -> "
                 << after.acquires);
  CHECK(after.misses == warm.misses);  // steady state: no new allocation
  CHECK(after.acquires > warm.acquires);
  if (torch::get_num_threads() == 1)  // worker threads of intra-op parallelism are not routed
    CHECK(unpooled_after == unpooled_before);
  CHECK(torch::allclose(output, reference, 1e-5, 1e-6));
  // Outside the guard, allocations go to LibTorch's allocator again.
  const auto acquires = pool.stats().acquires;
  auto plain = torch::empty({1000});
  CHECK(pool.stats().acquires == acquires);
  CHECK(pare::unpooled_cpu_allocations() > unpooled_after);
}

TEST_CASE("tensors allocated under a guard may outlive the guard and the pool") {
  torch::Tensor survivor;
  {
    pare::TensorPool pool(every_size().poison(true));
    {
      pare::PoolAllocatorGuard guard(pool);
      survivor = torch::ones({300, 300});
      auto scratch = torch::zeros({1000});
    }
    CHECK(pool.stats().bytes_in_use == int64_t(pool.size_class(300 * 300 * 4)));
  }
  CHECK(survivor.sum().item<float>() == 90000);
  survivor = torch::Tensor();  // returns to the pool's state, which then frees everything
}

TEST_CASE("guards nest and stay on their thread") {
  pare::TensorPool outer, inner;
  pare::PoolAllocatorGuard outer_guard(outer);
  const auto routed = pare::pooled_cpu_allocations();
  auto a = torch::empty({100});
  auto zero = torch::empty({0});  // a call the guard serves without storage
  {
    pare::PoolAllocatorGuard inner_guard(inner);
    auto b = torch::empty({100});
    std::thread([] { auto c = torch::empty({100}); }).join();
  }
  auto d = torch::empty({100});
  CHECK(outer.stats().acquires == 2);
  CHECK(inner.stats().acquires == 1);
  CHECK(pare::pooled_cpu_allocations() == routed + 4);
}

TEST_CASE("stats in Prometheus text format") {
  pare::TensorPool pool(every_size());
  { auto lease = pool.acquire({10}); }
  { auto lease = pool.acquire({10}); }
  const auto text = pool.to_prometheus({{"pool", "io"}});
  CHECK_THAT(text, Catch::Contains("# TYPE pare_pool_hits_total counter"));
  CHECK_THAT(text, Catch::Contains("pare_pool_hits_total{pool=\"io\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("pare_pool_misses_total{pool=\"io\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("pare_pool_idle_bytes{pool=\"io\"} 256\n"));
  CHECK_THAT(text, Catch::Contains("# TYPE pare_pool_in_use_bytes gauge"));
}

// Hidden from the default run: needs a process in which no pool exists yet
// (ctest runs it alone as cpp.pool.fresh_process).
TEST_CASE("the routing allocator is installed by the pool's constructor, on its thread", "[.][fresh-process]") {
  c10::Allocator* const libtorch_allocator = c10::GetCPUAllocator();
  REQUIRE(pare::unpooled_cpu_allocations() == 0);  // no router yet in this process
  pare::TensorPool pool;
  // Before: only the first PoolAllocatorGuard installed it, on whichever thread
  // (a Runner worker) entered one first, racing other threads' allocations.
  CHECK(c10::GetCPUAllocator() != libtorch_allocator);
  auto plain = torch::ones({16});
  CHECK(pare::unpooled_cpu_allocations() > 0);  // forwarded to LibTorch's allocator outside a guard
  std::thread worker([&] {
    pare::PoolAllocatorGuard guard(pool);  // a worker only reads the table
    auto pooled = torch::ones({1024});
  });
  worker.join();
  CHECK(pool.stats().acquires > 0);
}

TEST_CASE("leases below small_bytes get plain storage from LibTorch's allocator") {
  pare::TensorPool pool(pare::TensorPoolOptions().small_bytes(64 * kKiB));
  CHECK(pare::TensorPoolOptions().small_bytes() == 0);  // the default: every size pooled
  {
    auto small = pool.acquire({16 * 1024 - 1}, torch::kFloat);  // one float under 64 KiB
    small.tensor().fill_(2);
    CHECK(small.tensor().sum().item<float>() == 2.0f * (16 * 1024 - 1));
  }
  { auto large = pool.acquire({16 * 1024}, torch::kFloat); }
  const auto stats = pool.stats();
  CHECK(stats.small == 1);
  CHECK(stats.acquires == 1);  // only the 64 KiB lease went through the pool
  CHECK(stats.releases == 1);
  CHECK(pool.to_prometheus().find("pare_pool_small_total 1") != std::string::npos);
}
