#include "support/runner_testing.hpp"

#include <array>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <thread>

#include "pare/serve/runner.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using pare::testing::g_gate;
using pare::testing::gated_model;
using pare::testing::kForever;
using pare::testing::row_model;

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
  int64_t merged = 0;
  for (size_t n = 0; n < stats.batch_sizes.size(); ++n) merged += int64_t(n) * stats.batch_sizes[n];
  CHECK(merged == stats.requests);
  CHECK(stats.p50_ms > 0);  // every request's latency is recorded
  CHECK(runner.to_prometheus().find("pare_runner_latency_seconds_count " + std::to_string(kThreads * kRequests)) !=
        std::string::npos);
}

TEST_CASE("a failing batch fails only its own callers") {
  torch::set_num_threads(1);
  // Only a full batch of 4 goes out (an hour of delay and gap): one batch, which the negative request poisons.
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(4).max_delay(kForever).batch_gap(kForever));
  std::vector<std::thread> clients;
  std::atomic<int> failed{0};
  for (float value : {1.0f, 2.0f, -1.0f, 3.0f}) {
    clients.emplace_back([&, value] {
      try {
        if (!torch::equal(runner.run({row(value)}).toTensor(), row(value * 2 + 1))) failed += 100;
      } catch (const pare::Error& e) {
        if (std::string(e.what()).find("negative input") != std::string::npos) ++failed;
      }
    });
  }
  for (auto& c : clients) c.join();
  clients.clear();
  CHECK(failed == 4);
  for (float value : {5.0f, 6.0f, 7.0f}) clients.emplace_back([&, value] { runner.run({row(value)}); });
  CHECK(torch::equal(runner.run({row(8)}).toTensor(), row(17)));  // the next batch is unaffected
  for (auto& c : clients) c.join();
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
  auto cache = std::make_shared<pare::InferenceCache>(pare::InferenceCacheOptions().capacity_bytes(1 << 20));
  pare::Runner runner(row_model(), pare::RunnerOptions().cache(cache));
  for (int i = 0; i < 5; ++i) CHECK(torch::equal(runner.run({row(7)}).toTensor(), row(15)));
  CHECK(runner.stats().batches == 1);
  CHECK(cache->stats().hits == 4);
  const auto text = runner.to_prometheus();
  CHECK(text.find("pare_runner_requests_total 5") != std::string::npos);
  CHECK(text.find("pare_cache_hits") != std::string::npos);
  CHECK(text.find("pare_runner_latency_seconds_bucket{le=\"+Inf\"} 5") != std::string::npos);
}

TEST_CASE("the pool serves the model's allocations from call to call") {
  auto pool = std::make_shared<pare::TensorPool>(pare::TensorPoolOptions().max_bytes(64 << 20));
  pare::Runner runner(row_model(), pare::RunnerOptions().pool(pool).warmup(2).example_inputs({torch::ones({64, 1024})}));
  for (int i = 0; i < 5; ++i) runner.run({torch::ones({64, 1024})});
  const auto stats = pool->stats();
  CHECK(stats.hits >= 5);
  CHECK(runner.to_prometheus().find("pare_pool_") != std::string::npos);
}

TEST_CASE("outputs that can't be split by rows are reported clearly") {
  torch::jit::Module scalar("__torch__.Scalar");
  scalar.define("def forward(self, x):\n  return x.sum()\n");
  pare::Runner runner(scalar, pare::RunnerOptions().max_batch(2).max_delay(kForever).batch_gap(kForever));
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
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().max_batch(8).preferred_batch_sizes({4, 2})),
                    Catch::Contains("preferred_batch_sizes must be ascending"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().max_batch(8).preferred_batch_sizes({16})),
                    Catch::Contains("max_batch = 8"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().timeout(std::chrono::microseconds(-1))),
                    Catch::Contains("timeout must not be negative"));
}

TEST_CASE("a full queue refuses at once with kind Overloaded, and nothing queued is lost") {
  g_gate.reset();
  g_gate.close();
  pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(4).max_queue(2).batch_gap(std::chrono::microseconds(0)));
  auto running = runner.run_async({row(1)});
  g_gate.wait_entered(1);  // the only worker is held at the gate with request 1
  auto queued_a = runner.run_async({row(2)});
  auto queued_b = runner.run_async({row(3)});
  CHECK(runner.stats().queue_depth == 2);
  auto refused = runner.run_async({row(4)});
  CHECK(refused.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  try {
    runner.run({row(5)});
    FAIL("expected Overloaded");
  } catch (const pare::Error& e) {
    CHECK(e.kind() == pare::Error::Kind::Overloaded);
    CHECK_THAT(e.what(), Catch::Contains("max_queue"));
  }
  g_gate.release();
  CHECK(torch::equal(running.get().toTensor(), row(3)));
  CHECK(torch::equal(queued_a.get().toTensor(), row(5)));
  CHECK(torch::equal(queued_b.get().toTensor(), row(7)));
  CHECK_THROWS_AS(refused.get(), pare::Error);
  CHECK_FALSE(g_gate.saw(4));
  const auto stats = runner.stats();
  CHECK(stats.rejected == 2);
  CHECK(stats.requests == 5);
  CHECK(stats.failures == 2);
  CHECK(runner.to_prometheus().find("pare_runner_rejected_total 2") != std::string::npos);
}

TEST_CASE("a request still queued at its deadline fails with kind Timeout and never runs") {
  g_gate.reset();
  g_gate.close();
  pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(4).batch_gap(std::chrono::microseconds(0)));
  auto running = runner.run_async({row(1)});
  g_gate.wait_entered(1);
  const auto deadline = Clock::now() + std::chrono::milliseconds(1);
  auto queued_async = runner.run_async({row(2)}, deadline);
  try {
    runner.run({row(3)}, deadline);  // the worker is held: this one can only time out
    FAIL("expected Timeout");
  } catch (const pare::Error& e) {
    CHECK(e.kind() == pare::Error::Kind::Timeout);
    CHECK_THAT(e.what(), Catch::Contains("never ran"));
  }
  g_gate.release();
  CHECK(torch::equal(running.get().toTensor(), row(3)));
  try {
    queued_async.get();  // past its deadline when the worker came back for it
    FAIL("expected Timeout");
  } catch (const pare::Error& e) {
    CHECK(e.kind() == pare::Error::Kind::Timeout);
  }
  CHECK_FALSE(g_gate.saw(2));
  CHECK_FALSE(g_gate.saw(3));
  CHECK(runner.stats().timeouts == 2);
  CHECK(runner.to_prometheus().find("pare_runner_timeouts_total 2") != std::string::npos);
}

TEST_CASE("a deadline already past fails without running, batched or not") {
  g_gate.reset();
  for (int64_t max_batch : {1, 8}) {
    pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(max_batch));
    CHECK_THROWS_AS(runner.run({row(9)}, Clock::now() - std::chrono::microseconds(1)), pare::Error);
    CHECK(runner.stats().timeouts == 1);
    CHECK(torch::equal(runner.run({row(1)}, Clock::now() + kForever).toTensor(), row(3)));
  }
  CHECK_FALSE(g_gate.saw(9));
  pare::Runner with_default(gated_model(), pare::RunnerOptions().max_batch(4).timeout(std::chrono::hours(1)));
  CHECK(torch::equal(with_default.run({row(2)}).toTensor(), row(5)));
}

TEST_CASE("a lone request goes out when no other arrives, without waiting out max_delay") {
  // With an hour of max_delay, only the gap rule can answer before the deadline.
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(64).max_delay(kForever));
  for (int i = 0; i < 3; ++i)
    CHECK(torch::equal(runner.run({row(float(i))}, Clock::now() + std::chrono::seconds(60)).toTensor(), row(2.0f * i + 1)));
  CHECK(runner.stats().timeouts == 0);
}

TEST_CASE("a batch goes out once every caller the runner has lately held is back") {
  // Half an hour of gap and an hour of delay: only rule 3's count of callers sends these batches in time.
  g_gate.reset();
  g_gate.close();
  pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(64).max_delay(kForever).batch_gap(std::chrono::minutes(30)));
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  auto first = runner.run_async({row(0)}, deadline);  // alone in the runner: it goes at once
  g_gate.wait_entered(1);
  std::vector<std::future<c10::IValue>> rest;
  for (int i = 1; i < 4; ++i) rest.push_back(runner.run_async({row(float(i))}, deadline));  // 4 held at once
  g_gate.release();
  CHECK(torch::equal(first.get().toTensor(), row(1)));  // 3 wait: one caller may come back
  rest.push_back(runner.run_async({row(4)}, deadline));  // it has: all 4 are waiting
  for (int i = 0; i < 4; ++i) CHECK(torch::equal(rest[i].get().toTensor(), row(2.0f * (i + 1) + 1)));
  const auto stats = runner.stats();
  CHECK(stats.batch_sizes.at(1) == 1);
  CHECK(stats.batch_sizes.at(4) == 1);
  CHECK(stats.timeouts == 0);
}

TEST_CASE("a full batch goes out at once; preferred sizes cap and cut batches") {
  SECTION("full") {
    pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(4).max_delay(kForever).batch_gap(kForever));
    std::vector<std::future<c10::IValue>> futures;
    for (int i = 0; i < 4; ++i) futures.push_back(runner.run_async({row(float(i))}, Clock::now() + std::chrono::seconds(60)));
    for (int i = 0; i < 4; ++i) CHECK(torch::equal(futures[i].get().toTensor(), row(2.0f * i + 1)));
    CHECK(runner.stats().batch_sizes.at(4) == 1);
  }
  SECTION("preferred") {
    g_gate.reset();
    g_gate.close();
    pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(8).preferred_batch_sizes({2, 4})
                                           .batch_gap(std::chrono::microseconds(0)));
    std::vector<std::future<c10::IValue>> futures;
    futures.push_back(runner.run_async({row(0)}));
    g_gate.wait_entered(1);
    for (int i = 1; i < 4; ++i) futures.push_back(runner.run_async({row(float(i))}));
    g_gate.release();  // 3 rows wait: cut to 2, then the last one alone
    for (int i = 0; i < 4; ++i) CHECK(torch::equal(futures[i].get().toTensor(), row(2.0f * i + 1)));
    const auto sizes = runner.stats().batch_sizes;
    CHECK(sizes.at(1) == 2);
    CHECK(sizes.at(2) == 1);
  }
}

TEST_CASE("run_async hands every caller its own result, by future or callback") {
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(16).threads(2));
  std::vector<std::future<c10::IValue>> futures;
  for (int i = 0; i < 50; ++i) futures.push_back(runner.run_async({row(float(i))}));
  std::mutex mutex;
  std::condition_variable all_done;
  int done = 0, wrong = 0;
  for (int i = 0; i < 50; ++i) {
    runner.run_async({row(float(i))}, [&, i](pare::RunOutcome outcome) {
      std::lock_guard<std::mutex> lock(mutex);
      wrong += !outcome.ok() || !torch::equal(outcome.output.toTensor(), row(2.0f * i + 1));
      ++done;
      all_done.notify_all();
    });
  }
  for (int i = 0; i < 50; ++i) CHECK(torch::equal(futures[i].get().toTensor(), row(2.0f * i + 1)));
  std::unique_lock<std::mutex> lock(mutex);
  all_done.wait(lock, [&] { return done == 50; });
  CHECK(wrong == 0);
  auto failing = runner.run_async({row(-1)});
  CHECK_THROWS_WITH(failing.get(), Catch::Contains("negative input"));
  CHECK_THROWS_AS(runner.run_async({row(1)}, pare::Runner::Done()), pare::Error);
}

TEST_CASE("swap: queued requests finish on the old model, new ones run on the new one") {
  g_gate.reset();
  g_gate.close();
  pare::Runner runner(gated_model(2, 1), pare::RunnerOptions().max_batch(8).batch_gap(std::chrono::microseconds(0)));
  auto running = runner.run_async({row(1)});
  g_gate.wait_entered(1);
  auto queued = runner.run_async({row(2)});
  runner.swap(gated_model(10, 0));
  auto after = runner.run_async({row(3)});
  g_gate.release();
  CHECK(torch::equal(running.get().toTensor(), row(3)));
  CHECK(torch::equal(queued.get().toTensor(), row(5)));
  CHECK(torch::equal(after.get().toTensor(), row(30)));
  CHECK(runner.stats().swaps == 1);
  CHECK(runner.stats().failures == 0);
  torch::jit::Module empty("__torch__.Empty");
  CHECK_THROWS_WITH(runner.swap(empty), Catch::Contains("no forward method"));
}

TEST_CASE("Prometheus exposition: latency and batch size histograms, queue depth, counters") {
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(4).max_delay(kForever).batch_gap(kForever));
  std::vector<std::future<c10::IValue>> futures;
  for (int i = 0; i < 4; ++i) futures.push_back(runner.run_async({row(float(i))}));
  for (auto& f : futures) f.get();
  const auto text = runner.to_prometheus();
  for (const char* line : {"pare_runner_batch_size_bucket{le=\"2\"} 0", "pare_runner_batch_size_bucket{le=\"4\"} 1",
                           "pare_runner_batch_size_count 1", "pare_runner_batch_size_sum 4", "pare_runner_queue_depth 0",
                           "pare_runner_latency_seconds_count 4", "# TYPE pare_runner_latency_seconds histogram",
                           "pare_runner_rejected_total 0", "pare_runner_timeouts_total 0"})
    CHECK_THAT(text, Catch::Contains(line));
}
