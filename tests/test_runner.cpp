#include "testing.hpp"

#include <array>
#include <atomic>
#include <thread>

#include "pare/runner.hpp"

namespace {

// Each output row is its input row doubled plus one; a negative input fails the whole forward pass.
torch::jit::Module row_model() {
  torch::jit::Module m("__torch__.RowModel");
  m.define(R"(
def forward(self, x):
  assert bool((x >= 0).all()), "negative input"
  return x * 2 + 1
)");
  return m;
}

torch::Tensor row(float value, int64_t width = 4) { return torch::full({1, width}, value); }

}  // namespace

TEST_CASE("concurrent single requests are merged and each caller gets its own row") {
  torch::set_num_threads(1);
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(16).max_delay(std::chrono::microseconds(2000)).threads(2));
  constexpr int kThreads = 8, kRequests = 60;
  std::atomic<int> wrong{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < kRequests; ++i) {
        const float value = float(t * 1000 + i);
        const auto out = runner.run({row(value)}).toTensor();
        if (out.sizes() != c10::IntArrayRef{1, 4} || !torch::equal(out, row(value * 2 + 1))) ++wrong;
      }
    });
  }
  for (auto& c : clients) c.join();
  CHECK(wrong == 0);
  const auto stats = runner.stats();
  CHECK(stats.requests == kThreads * kRequests);
  CHECK(stats.failures == 0);
  CHECK(stats.batches < stats.requests);  // merging happened
  uint64_t merged = 0;
  for (size_t n = 0; n < stats.batch_sizes.size(); ++n) merged += n * stats.batch_sizes[n];
  CHECK(merged == stats.requests);
  CHECK(stats.p50_ms > 0);  // every request's latency is recorded
  CHECK(runner.metrics_text().find("pare_runner_latency_seconds_count " + std::to_string(kThreads * kRequests)) !=
        std::string::npos);
}

// Four concurrent requests; returns how many failed with "negative input".
int run_four(pare::Runner& runner, const std::array<float, 4>& values) {
  std::vector<std::thread> clients;
  std::atomic<int> failed{0};
  for (float value : values) {
    clients.emplace_back([&, value] {
      try {
        if (!torch::equal(runner.run({row(value)}).toTensor(), row(value * 2 + 1))) failed += 100;
      } catch (const pare::Error& e) {
        if (std::string(e.what()).find("negative input") != std::string::npos) ++failed;
      }
    });
  }
  for (auto& c : clients) c.join();
  return failed;
}

TEST_CASE("a failing batch fails only its own callers") {
  torch::set_num_threads(1);
  // A batch closes when it holds max_batch rows; the delay is too long to ever
  // run out, so the four requests share one batch however slowly they arrive.
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(4).max_delay(std::chrono::hours(1)).threads(1));
  CHECK(run_four(runner, {1, 2, -1, 3}) == 4);  // the negative request poisons its batch
  CHECK(run_four(runner, {5, 6, 7, 8}) == 0);   // the next batch is unaffected
  CHECK(runner.stats().failures == 4);
  CHECK(runner.stats().batch_sizes.at(4) == 2);
}

TEST_CASE("the runner leaves the caller's module in its own mode") {
  auto training = row_model();
  training.register_attribute("training", c10::BoolType::get(), true);  // as torch.jit.script gives nn.Modules
  pare::Runner runner(training);
  CHECK(training.is_training());  // before: Runner called eval() on the caller's module
  CHECK(torch::equal(runner.run({row(1)}).toTensor(), row(3)));
  auto evaluating = row_model();
  evaluating.register_attribute("training", c10::BoolType::get(), false);
  pare::Runner shared(evaluating);  // already in eval mode: served as is
  CHECK_FALSE(evaluating.is_training());
}

TEST_CASE("without batching requests run on the caller's thread, with model errors wrapped") {
  pare::Runner runner(row_model());
  CHECK(torch::equal(runner.run({torch::ones({3, 2})}).toTensor(), torch::full({3, 2}, 3.0f)));
  CHECK_THROWS_WITH(runner.run({row(-1)}), Catch::Contains("the model failed") && Catch::Contains("negative input"));
  CHECK_THROWS_AS(runner.run({torch::ones({2}), torch::ones({2})}), pare::Error);  // wrong arity
}

TEST_CASE("the cache answers repeated inputs without a forward pass") {
  auto cache = std::make_shared<pare::InferenceCache>(pare::CacheOptions().capacity_bytes(1 << 20));
  pare::Runner runner(row_model(), pare::RunnerOptions().cache(cache));
  for (int i = 0; i < 5; ++i) CHECK(torch::equal(runner.run({row(7)}).toTensor(), row(15)));
  CHECK(runner.stats().batches == 1);
  CHECK(cache->stats().hits == 4);
  const auto text = runner.metrics_text();
  CHECK(text.find("pare_runner_requests_total 5") != std::string::npos);
  CHECK(text.find("pare_cache_hits") != std::string::npos);
  CHECK(text.find("pare_runner_latency_seconds_bucket{le=\"+Inf\"} 5") != std::string::npos);
}

TEST_CASE("the pool serves the model's allocations from call to call") {
  pare::TensorPool pool(pare::PoolOptions().max_bytes(64 << 20));
  pare::Runner runner(row_model(), pare::RunnerOptions().pool(pool).warmup(2).example_inputs({torch::ones({64, 1024})}));
  for (int i = 0; i < 5; ++i) runner.run({torch::ones({64, 1024})});
  const auto stats = pool.stats();
  CHECK(stats.hits >= 5);
  CHECK(runner.metrics_text().find("pare_pool_") != std::string::npos);
}

TEST_CASE("outputs that can't be split by rows are reported clearly") {
  torch::jit::Module scalar("__torch__.Scalar");
  scalar.define("def forward(self, x):\n  return x.sum()\n");
  pare::Runner runner(scalar, pare::RunnerOptions().max_batch(2).max_delay(std::chrono::milliseconds(500)));
  std::string messages[2];
  std::thread other([&] {
    try { runner.run({row(1)}); } catch (const pare::Error& e) { messages[0] = e.what(); }
  });
  try { runner.run({row(2)}); } catch (const pare::Error& e) { messages[1] = e.what(); }
  other.join();
  for (const auto& message : messages) CHECK_THAT(message, Catch::Contains("can't be batched along dim 0"));
  pare::Runner alone(scalar);  // without batching the same model serves fine
  CHECK(alone.run({row(2)}).toTensor().item<float>() == 8.0f);
}

TEST_CASE("bad runner options give pare::Error") {
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().max_batch(0)), Catch::Contains("max_batch must be >= 1"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().threads(0)), Catch::Contains("threads"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().warmup(3)), Catch::Contains("needs example_inputs"));
  torch::jit::Module empty("__torch__.Empty");
  CHECK_THROWS_WITH(pare::Runner(empty), Catch::Contains("no forward method"));
}
