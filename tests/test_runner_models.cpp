// Which module serves a request: hot swaps under load, and
// RunnerOptions::model_copies — each batch size runs on a module of its own
// (TorchScript's executor and onednn's int8 kernels keep the plan of the first
// input shape they run), up to the limit; the results are the model's.

#include "support/testing.hpp"

#include <atomic>
#include <thread>
#include <ATen/Parallel.h>

#include "pare/serve/runner.hpp"

namespace {

torch::jit::Module doubling_linear() {
  torch::manual_seed(3);
  torch::jit::Module m("__torch__.DoublingLinear");
  m.register_parameter("weight", torch::randn({4, 4}), false);
  m.define("def forward(self, x):\n  return torch.relu(torch.matmul(x, self.weight)) * 2\n");
  return m;
}

// One request of `rows` rows, alone in its batch (nothing else is queued).
void check_rows(pare::Runner& runner, torch::jit::Module model, int64_t rows) {
  const auto x = torch::rand({rows, 4});
  CHECK(torch::allclose(runner.run({x}).toTensor(), model.forward({x}).toTensor()));
}

}  // namespace

TEST_CASE("each batch size runs on a module of its own, up to model_copies") {
  auto model = doubling_linear();
  pare::Runner runner(model, pare::RunnerOptions().max_batch(8).model_copies(3));
  CHECK(runner.stats().model_copies == 0);
  for (int64_t rows : {1, 2, 1, 3})  // three sizes: the module itself, then two copies
    check_rows(runner, model, rows);
  CHECK(runner.stats().model_copies == 3);
  for (int64_t rows : {4, 5, 2})  // beyond the limit: the sizes share the module
    check_rows(runner, model, rows);
  CHECK(runner.stats().model_copies == 3);
  CHECK_THAT(runner.to_prometheus(), Catch::Contains("pare_runner_model_copies 3"));
}

TEST_CASE("model_copies 0 runs every batch on the one module; a swap starts the copies afresh") {
  auto model = doubling_linear();
  pare::Runner single(model, pare::RunnerOptions().max_batch(8).model_copies(0));
  for (int64_t rows : {1, 2, 3}) check_rows(single, model, rows);
  CHECK(single.stats().model_copies == 0);

  pare::Runner runner(model, pare::RunnerOptions().max_batch(8));
  for (int64_t rows : {1, 2}) check_rows(runner, model, rows);
  CHECK(runner.stats().model_copies == 2);
  auto other = doubling_linear();
  other.attr("weight").toTensor().mul_(-1);
  runner.swap(other);
  CHECK(runner.stats().model_copies == 0);
  for (int64_t rows : {3, 1}) check_rows(runner, other, rows);
  CHECK(runner.stats().model_copies == 2);
}

TEST_CASE("concurrent batches of many sizes all get the model's results") {
  auto model = doubling_linear();
  pare::Runner runner(model, pare::RunnerOptions().max_batch(16).threads(2).model_copies(4));
  std::vector<std::thread> clients;
  std::atomic<int> wrong{0};
  for (int c = 0; c < 4; ++c)
    clients.emplace_back([&, c] {
      for (int i = 0; i < 40; ++i) {
        const auto x = torch::rand({1 + (c + i) % 5, 4});
        if (!torch::allclose(runner.run({x}).toTensor(), model.forward({x}).toTensor())) ++wrong;
      }
    });
  for (auto& t : clients) t.join();
  CHECK(wrong == 0);
  CHECK(runner.stats().model_copies <= 4);
}

TEST_CASE("swaps under concurrent load fail and drop nothing") {
  torch::set_num_threads(1);
  // Two models that answer differently: every answer must be one of them, and the last installed answers last.
  auto model = doubling_linear();
  auto negated = doubling_linear();
  negated.attr("weight").toTensor().mul_(-1);
  pare::Runner runner(model, pare::RunnerOptions().max_batch(8).threads(2));
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, answered{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; !stop || i < 20; ++i) {
        const auto x = row(float(t * 1000 + i % 1000));
        try {
          const auto y = runner.run({x}).toTensor();
          wrong += !torch::allclose(y, model.forward({x}).toTensor()) && !torch::allclose(y, negated.forward({x}).toTensor());
        } catch (const pare::Error&) {
          ++wrong;
        }
        ++answered;
      }
    });
  }
  for (int s = 0; s < 21; ++s) runner.swap(s % 2 == 0 ? negated : model);  // ends on `negated`
  stop = true;
  for (auto& c : clients) c.join();
  CHECK(wrong == 0);
  CHECK(runner.stats().requests == int64_t(answered));
  CHECK(runner.stats().swaps == 21);
  const auto x = torch::rand({1, 4}) + 0.5;
  CHECK(torch::allclose(runner.run({x}).toTensor(), negated.forward({x}).toTensor()));
  CHECK(!torch::allclose(negated.forward({x}).toTensor(), model.forward({x}).toTensor()));
}
