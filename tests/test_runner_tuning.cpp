// The Runner on many cores: a limit on concurrent passes, requests that run on
// their caller's thread when queueing can't help, and the hint's tuning.
#include "support/runner_testing.hpp"

#include <algorithm>
#include <thread>
#include <ATen/Parallel.h>

#include "pare/serve/runner.hpp"
#include "serve/runner_tuning.hpp"  // the hint's choice, a pure function

namespace {

using pare::testing::g_gate;
using pare::testing::gated_model;
using pare::testing::kForever;
using pare::testing::row_model;

std::vector<c10::IValue> tuning_row(float value) { return {torch::full({1, 3}, value)}; }

}  // namespace

TEST_CASE("with a limit on passes, a caller that finds one free runs its request on its own thread") {
  pare::Runner runner(row_model(), pare::RunnerOptions().max_batch(8).concurrency(2).max_delay(kForever));
  for (int i = 0; i < 8; ++i) CHECK(torch::allclose(runner.run(tuning_row(float(i))).toTensor(), torch::full({1, 3}, 2.f * i + 1)));
  const auto stats = runner.stats();
  CHECK(stats.caller_batches == 8);  // no worker, and no max_delay waited out
  CHECK(stats.batches == 8);
  CHECK(stats.concurrency == 2);
  CHECK(stats.forward_seconds > 0);  // one pass in 8 on a thread is timed
}

TEST_CASE("requests beyond the limit queue behind the busy pass and go out as one batch") {
  g_gate.reset();
  g_gate.close();
  pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(8).concurrency(1).max_delay(kForever)
                                         .batch_gap(std::chrono::microseconds(0)));
  std::vector<std::thread> callers;
  std::vector<float> answers(4, -1);
  callers.emplace_back([&] { answers[0] = runner.run(tuning_row(0)).toTensor()[0][0].item<float>(); });
  g_gate.wait_entered(1);  // the first holds the one pass, on its own thread
  for (int i = 1; i < 4; ++i)
    callers.emplace_back([&, i] { answers[size_t(i)] = runner.run(tuning_row(float(i))).toTensor()[0][0].item<float>(); });
  while (runner.stats().queue_depth < 3) std::this_thread::yield();
  g_gate.release();
  for (auto& c : callers) c.join();
  for (int i = 0; i < 4; ++i) CHECK(answers[size_t(i)] == 2.f * float(i) + 1);
  const auto stats = runner.stats();
  CHECK(stats.caller_batches == 1);
  CHECK(stats.batch_sizes.at(3) == 1);  // the three that waited, merged by a worker
  CHECK(stats.queue_seconds > 0);
}

TEST_CASE("the hint measures the model, chooses, reports, and keeps explicit settings") {
  const std::vector<c10::IValue> example{torch::rand({1, 3})};
  pare::Runner tuned(row_model(), pare::RunnerOptions().hint(pare::RunnerHint::Throughput).example_inputs(example));
  auto stats = tuned.stats();
  CHECK(stats.hint == "throughput");
  const auto candidates = pare::detail::pass_candidates(std::thread::hardware_concurrency(), at::get_num_threads(),
                                                        stats.batch_saving >= pare::detail::kBatchingPays);
  CHECK(std::find(candidates.begin(), candidates.end(), stats.concurrency) != candidates.end());
  CHECK(stats.threads == stats.concurrency);
  CHECK(stats.batch_saving < 1);
  CHECK((stats.max_batch == 1) == (stats.batch_saving < pare::detail::kBatchingPays));
  CHECK(torch::allclose(tuned.run(tuning_row(2)).toTensor(), torch::full({1, 3}, 5.f)));
  const auto exposition = tuned.to_prometheus();
  CHECK_THAT(exposition, Catch::Contains("pare_runner_config{hint=\"throughput\""));
  CHECK_THAT(exposition, Catch::Contains("pare_runner_caller_batches_total 1"));

  pare::Runner kept(row_model(), pare::RunnerOptions().hint(pare::RunnerHint::Latency).example_inputs(example)
                                     .max_batch(4).concurrency(3).threads(2));
  stats = kept.stats();
  CHECK(stats.max_batch == 4);
  CHECK(stats.concurrency == 3);
  CHECK(stats.threads == 2);
  CHECK(stats.hint == "latency");
}

TEST_CASE("the hint's choice: measured passes, batches only where they save time") {
  using pare::detail::tuned;
  const auto hinted = pare::RunnerOptions().hint(pare::RunnerHint::Throughput);
  auto o = tuned(hinted, 0.5, 32);
  CHECK(o.concurrency() == 32);
  CHECK(o.max_batch() == 32);
  CHECK(o.threads() == 32);
  CHECK(o.batch_gap().count() == 0);
  o = tuned(hinted, 0.2, 16);  // a batch saves too little: every request on its caller's thread
  CHECK(o.max_batch() == 1);
  CHECK(o.threads() == 16);  // for asynchronous requests
  CHECK(tuned(pare::RunnerOptions().hint(pare::RunnerHint::Latency), 0.5, 16).max_batch() == 8);
  o = tuned(pare::RunnerOptions(hinted).max_batch(64).batch_gap(std::chrono::microseconds(50)), 0.1, 16);
  CHECK(o.max_batch() == 64);
  CHECK(o.batch_gap().count() == 50);
  CHECK(tuned(pare::RunnerOptions().max_batch(2), 0.9, 16).concurrency() == 0);  // no hint: nothing chosen

  using pare::detail::pass_candidates;
  CHECK(pass_candidates(16, 1, false) == std::vector<int>{1, 16, 32});
  CHECK(pass_candidates(16, 4, false) == std::vector<int>{1, 4, 8});
  CHECK(pass_candidates(1, 1, false) == std::vector<int>{1, 2});
  CHECK(pass_candidates(16, 1, true) == std::vector<int>{1, 16});  // batching pays: no more passes than cores
  CHECK(pass_candidates(1, 1, true) == std::vector<int>{1});
  using pare::detail::choose_passes;
  CHECK(choose_passes({{1, 100}, {16, 1000}, {32, 950}}) == 32);  // within 10% of the best: the most passes
  CHECK(choose_passes({{1, 100}, {16, 1000}, {32, 800}}) == 16);
  CHECK(choose_passes({{1, 2000}, {2, 900}, {4, 400}}) == 1);     // a BLAS that serializes concurrent calls
}

TEST_CASE("bad tuning options give pare::Error naming what is expected") {
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().concurrency(-1)), Catch::Contains("concurrency must be in [0, 4096]"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().hint(pare::RunnerHint::Throughput)),
                    Catch::Contains("hint(throughput) measures the model at construction and needs example_inputs"));
  CHECK_THROWS_WITH(pare::Runner(row_model(), pare::RunnerOptions().hint(pare::RunnerHint::Throughput)
                                                  .example_inputs({c10::IValue(3)})),
                    Catch::Contains("must be a tensor with a batch dimension"));
  CHECK_THROWS_WITH(pare::parse_runner_hint("fast"), Catch::Contains("expected one of throughput, latency"));
  CHECK(pare::runner_hint_name(pare::parse_runner_hint("latency")) == "latency");
}

TEST_CASE("a caller with a free pass runs the queue's front batch, its own request among them") {
  g_gate.reset();
  g_gate.close();
  // Two passes: a worker's batch holds one at the gate; callers queue behind it
  // until a caller finds the second pass free and runs the queue itself.
  pare::Runner runner(gated_model(), pare::RunnerOptions().max_batch(8).concurrency(2).threads(1).max_delay(kForever)
                                         .batch_gap(std::chrono::microseconds(0)));
  auto first = runner.run_async(tuning_row(0));  // a worker takes it: one pass held
  g_gate.wait_entered(1);
  std::vector<std::thread> callers;
  std::vector<float> answers(3, -1);
  for (int i = 1; i < 3; ++i)
    callers.emplace_back([&, i] { answers[size_t(i)] = runner.run(tuning_row(float(i))).toTensor()[0][0].item<float>(); });
  g_gate.wait_entered(2);  // one caller got the free pass and runs the queue's front
  g_gate.release();
  for (auto& c : callers) c.join();
  CHECK(first.get().toTensor()[0][0].item<float>() == 1);
  for (int i = 1; i < 3; ++i) CHECK(answers[size_t(i)] == 2.f * float(i) + 1);
  const auto stats = runner.stats();
  CHECK(stats.caller_batches >= 1);
  CHECK(stats.requests == 3);
}
