// CUDA paths of the Runner, Distill and TensorPool. They run where a GPU is
// found and skip loudly elsewhere; the option checks run everywhere.

#include "support/cuda_testing.hpp"

#include <atomic>
#include <thread>

#include "support/fashion_testing.hpp"
#include "pare/cache/cache.hpp"
#include "pare/distill/distill.hpp"
#include "pare/pool/pool.hpp"
#include "pare/prune/prune.hpp"
#include "pare/serve/runner.hpp"

namespace ex = pare::examples;

namespace {



const torch::jit::Module& cuda_test_cnn() {
  static const auto model = [] {
    auto m = ex::make_fashion_cnn({8, 16, 32}, 5);
    ex::train(m, train_subset(), 1);
    m.eval();
    return m;
  }();
  return model;
}


pare::Error::Kind error_kind(const std::function<void()>& body) {
  try {
    body();
  } catch (const pare::Error& e) {
    return e.kind();
  }
  FAIL("expected a pare::Error");
  return pare::Error::Kind::InvalidArgument;
}

}  // namespace

TEST_CASE("CUDA options say what is wrong when the device is missing or unknown") {
  const auto model = ex::make_fashion_cnn({4, 8, 16}, 1);  // untrained: only the checks run
  const auto missing = torch::cuda::is_available() ? c10::Device(c10::kCUDA, 99) : c10::Device(c10::kCUDA, 0);
  CHECK_THROWS_AS(pare::Runner(model, pare::RunnerOptions().device(missing)), pare::Error);
  CHECK_THROWS_AS(pare::Distill(pare::DistillOptions(model, std::vector<pare::Batch>{{torch::zeros({1, 1, 28, 28}),
                                                                                        torch::zeros({1}, torch::kLong)}})
                                    .device(missing)),
                  pare::Error);
  CHECK_THROWS_WITH(pare::Runner(model, pare::RunnerOptions().device(c10::Device("meta"))),
                    Catch::Contains("expected cpu or cuda"));
  if (!torch::cuda::is_available()) {
    CHECK(error_kind([] { pare::TensorPool(pare::TensorPoolOptions().memory(pare::PoolMemory::Pinned)); }) ==
          pare::Error::Kind::Runtime);
    CHECK_THROWS_WITH(pare::Runner(model, pare::RunnerOptions().device(torch::kCUDA)),
                      Catch::Contains("sees no CUDA device"));
  }
  pare::TensorPool host;
  CHECK_THROWS_WITH(host.acquire({4}, torch::kFloat, torch::kCUDA), Catch::Contains("CPU storage only"));
}

TEST_CASE("a Runner on CUDA batches concurrent clients and matches the model on the CPU [cuda]") {
  PARE_REQUIRE_CUDA();
  auto model = cuda_test_cnn().clone();
  const auto images = test_subset().images;
  torch::Tensor reference;
  {
    torch::NoGradGuard no_grad;
    reference = model.forward({images}).toTensor();
  }
  auto pinned = std::make_shared<pare::TensorPool>(pare::TensorPoolOptions().memory(pare::PoolMemory::Pinned));
  pare::Runner runner(model, pare::RunnerOptions().device(torch::kCUDA).pool(pinned).max_batch(64).threads(2)
                                 .max_delay(std::chrono::microseconds(2000)));
  CHECK(model.attr("conv1").toModule().attr("weight").toTensor().is_cpu());  // the caller's module stays put
  constexpr int kClients = 8;
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int64_t i = c; i < images.size(0); i += kClients) {
        const auto out = runner.run({images.slice(0, i, i + 1)}).toTensor();
        const bool close = out.is_cpu() && torch::allclose(out, reference.slice(0, i, i + 1), 1e-3, 1e-4);
        if (!close) ++wrong;
      }
    });
  }
  for (auto& c : clients) c.join();
  CHECK(wrong == 0);
  const auto stats = runner.stats();
  CHECK(stats.requests == int64_t(images.size(0)));
  CHECK(stats.batches < stats.requests);  // merged on the way to the GPU
  const auto pool_stats = pinned->stats();
  CHECK(pool_stats.acquires > 0);  // every staged batch went through pinned memory from the pool
  CHECK(pool_stats.hits > 0);
  CHECK(pool_stats.bytes_in_use == 0);
}

TEST_CASE("a Runner on CUDA can leave outputs on the device [cuda]") {
  PARE_REQUIRE_CUDA();
  pare::Runner runner(cuda_test_cnn(), pare::RunnerOptions().device(torch::kCUDA).outputs_on_device(true)
                                         .max_batch(8).max_delay(std::chrono::microseconds(500)));
  const auto x = test_subset().images.slice(0, 0, 4);
  const auto out = runner.run({x}).toTensor();
  CHECK(out.is_cuda());
  auto model = cuda_test_cnn().clone();
  torch::NoGradGuard no_grad;
  CHECK(torch::allclose(out.cpu(), model.forward({x}).toTensor(), 1e-3, 1e-4));
  // A device input is stacked on the device, without a trip through the host.
  const auto on_device = runner.run({x.to(torch::kCUDA)}).toTensor();
  CHECK(torch::equal(on_device.cpu(), out.cpu()));
}

TEST_CASE("Distill trains on the GPU, keeps the masks and returns the student home [cuda]") {
  PARE_REQUIRE_CUDA();
  auto student =
      pare::Pipeline().add(pare::L1Prune(pare::L1PruneOptions(0.7).scope(pare::Scope::Global))).run(cuda_test_cnn());
  const auto zeros_before = student.module.attr("fc1").toModule().attr("weight").toTensor().eq(0).sum().item<int64_t>();
  const auto summary = pare::distill(student.module,
                                     pare::DistillOptions(cuda_test_cnn(), train_subset().batches(128))
                                         .epochs(2).device(torch::kCUDA).evaluate_on(test_subset().batches(256)),
                                     student.masks);
  const auto fc1 = student.module.attr("fc1").toModule().attr("weight").toTensor();
  CHECK(fc1.is_cpu());  // back on its own device
  CHECK(fc1.eq(0).sum().item<int64_t>() >= zeros_before);  // every pruned weight is still exactly zero
  CHECK(summary.device == "cuda:0");
  CHECK(summary.samples_per_second > 0);
  CHECK(summary.epoch_loss.back() < summary.epoch_loss.front());
  CHECK(*summary.accuracy_after >= *summary.accuracy_before - 1.0);
  WARN("Distill on " << summary.device << ": " << summary.samples_per_second << " samples/s");
}

TEST_CASE("pinned and CUDA pools reuse, poison, trim and count their own memory [cuda]") {
  PARE_REQUIRE_CUDA();
  for (const auto kind : {pare::PoolMemory::Pinned, pare::PoolMemory::Cuda}) {
    pare::TensorPool pool(pare::TensorPoolOptions().memory(kind).poison(true));
    const auto device = kind == pare::PoolMemory::Cuda ? c10::Device(torch::kCUDA, 0) : c10::Device(torch::kCPU);
    void* first = nullptr;
    {
      auto lease = pool.acquire({256, 64}, torch::kFloat, device);
      CHECK(lease.tensor().device() == device);
      if (kind == pare::PoolMemory::Pinned) CHECK(lease.tensor().is_pinned());
      lease.tensor().fill_(1);
      first = lease.tensor().data_ptr();
    }
    auto again = pool.acquire({256, 64}, torch::kFloat, device);
    CHECK(again.tensor().data_ptr() == first);                  // the same block, reused
    CHECK(again.tensor().isnan().all().item<bool>());           // poisoned on return
    const auto stats = pool.stats();
    CHECK(stats.hits == 1);
    CHECK(stats.misses == 1);
    CHECK(stats.bytes_in_use == int64_t(pool.size_class(256 * 64 * 4)));
    again.release();
    CHECK(pool.trim() == pool.size_class(256 * 64 * 4));
    CHECK(pool.stats().bytes_idle == 0);
    CHECK_THROWS_WITH(pare::PoolAllocatorGuard(pool), Catch::Contains("needs a PoolMemory::Host pool"));
  }
}

TEST_CASE("the cache keys CUDA inputs and keeps values on their device [cuda]") {
  PARE_REQUIRE_CUDA();
  pare::InferenceCache cache(pare::InferenceCacheOptions().capacity_bytes(1 << 20));
  const auto x = torch::randn({2, 8}).to(torch::kCUDA);
  int computed = 0;
  auto compute = [&] {
    ++computed;
    return c10::IValue(x * 3);
  };
  const auto first = cache.get_or_compute({x}, compute).toTensor();
  const auto again = cache.get_or_compute({x.clone()}, compute).toTensor();  // same bytes, other storage
  CHECK(computed == 1);
  CHECK(again.is_cuda());
  CHECK(torch::equal(again, first));
  CHECK(again.data_ptr() != first.data_ptr());  // a copy: writing into it leaves the cache intact
  // The same bytes on the host are another key: a CPU caller gets a CPU value.
  CHECK(cache.key_of({x}) != cache.key_of({x.cpu()}));
  const auto on_host = cache.get_or_compute({x.cpu()}, [&] { ++computed; return c10::IValue(x.cpu() * 3); });
  CHECK(computed == 2);
  CHECK(on_host.toTensor().is_cpu());
  auto changed = x.clone();
  changed[0][0] = changed[0][0] + 1;
  cache.get_or_compute({changed}, compute);
  CHECK(computed == 3);
  CHECK(cache.stats().collisions == 0);
}

TEST_CASE("large CUDA inputs are fingerprinted on the device and still keyed exactly [cuda]") {
  PARE_REQUIRE_CUDA();
  pare::InferenceCache cache(pare::InferenceCacheOptions().capacity_bytes(64 << 20));
  // 300 x 1023 floats (1.2 MB) at an odd row offset: words are not 8-byte aligned in the storage.
  const auto base = torch::randn({301, 1023}).to(torch::kCUDA);
  const auto x = base.narrow(0, 1, 300);
  CHECK(cache.key_of({x}) == cache.key_of({x.clone()}));
  CHECK(cache.key_of({x}) != cache.key_of({x.cpu()}));
  for (const auto& [row, col] : std::vector<std::pair<int, int>>{{0, 0}, {150, 511}, {299, 1022}}) {
    auto changed = x.clone();
    changed[row][col] = changed[row][col] * 2 + 1;  // one element anywhere changes the key
    CHECK(cache.key_of({changed}) != cache.key_of({x}));
  }
  int computed = 0;
  auto compute = [&] { ++computed; return c10::IValue(x.sum(1)); };
  cache.get_or_compute({x}, compute);
  const auto hit = cache.get_or_compute({x.clone()}, compute).toTensor();
  CHECK(computed == 1);
  CHECK(hit.is_cuda());
  CHECK(cache.stats().hits == 1);
}
