// RunnerOptions::padding: requests of different lengths share batches, padded
// to a bucket; every answer equals the model's answer to the unpadded request,
// the cache keys on the unpadded request, and bad lengths get clear errors.

#include "support/testing.hpp"

#include <atomic>
#include <filesystem>
#include <thread>

#include <unistd.h>

#include "pare/serve/runner.hpp"

namespace {

// The BERT-style encoder of tests/support/text_models.py: forward(ids, mask) -> (hidden, logits).
torch::jit::Module text_encoder() {
  static const auto path = [] {
    const auto p = std::filesystem::temp_directory_path() / ("pare_text_encoder_" + std::to_string(getpid()) + ".pt");
    const std::string command = std::string(PARE_PYTHON) + " " + PARE_TESTS_DIR + "/support/text_models.py " +
                                p.string() + " --hidden 32 --layers 2 --heads 4 --ffn 64 --max-length 64";
    REQUIRE(std::system(command.c_str()) == 0);
    return p;
  }();
  auto m = torch::jit::load(path.string());
  m.eval();
  return m;
}

std::vector<c10::IValue> text_request(int64_t length, int64_t seed) {
  torch::manual_seed(uint64_t(seed));
  return {torch::randint(1, 1000, {1, length}, torch::kLong), torch::ones({1, length}, torch::kLong)};
}

// The model's own answer to `inputs`, and the runner's, agree in shape and within 1e-4.
void check_same(const c10::IValue& got, const c10::IValue& want) {
  const auto g = got.toTuple()->elements(), w = want.toTuple()->elements();
  REQUIRE(g.size() == w.size());
  for (size_t i = 0; i < g.size(); ++i) {
    REQUIRE(g[i].toTensor().sizes() == w[i].toTensor().sizes());
    CHECK(torch::allclose(g[i].toTensor(), w[i].toTensor(), 1e-4, 1e-4));
  }
}

c10::IValue reference(torch::jit::Module& model, const std::vector<c10::IValue>& inputs) {
  torch::NoGradGuard no_grad;
  return model.forward(inputs);
}

}  // namespace

// Whether `got` has the shapes of `want` and agrees within 1e-4 (plain C++:
// Catch's assertions are not thread-safe, so client threads use this).
bool same_answer(const c10::IValue& got, const c10::IValue& want) {
  const auto g = got.toTuple()->elements(), w = want.toTuple()->elements();
  if (g.size() != w.size()) return false;
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i].toTensor().sizes() != w[i].toTensor().sizes() ||
        !torch::allclose(g[i].toTensor(), w[i].toTensor(), 1e-4, 1e-4))
      return false;
  return true;
}

TEST_CASE("concurrent requests of many lengths get the unpadded model's answers, in shared batches") {
  auto model = text_encoder();
  pare::Runner runner(model, pare::RunnerOptions()
                                 .max_batch(8)
                                 .threads(2)
                                 .max_delay(std::chrono::milliseconds(20))
                                 .padding(pare::PaddingOptions({16, 32, 64}))
                                 .warmup(1)
                                 .example_inputs(text_request(5, 0)));
  constexpr int kClients = 6, kEach = 8;
  // Made here: the seeded generator is the process's one.
  std::vector<std::vector<std::vector<c10::IValue>>> requests(kClients);
  for (int c = 0; c < kClients; ++c)
    for (int i = 0; i < kEach; ++i)  // lengths 1..64: every bucket, lengths equal to a bucket too
      requests[size_t(c)].push_back(text_request(1 + (c * 13 + i * 7) % 64, c * 100 + i));
  std::atomic<int> answered{0}, wrong{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c)
    clients.emplace_back([&, c] {
      for (const auto& inputs : requests[size_t(c)]) {
        if (!same_answer(runner.run(inputs), reference(model, inputs))) ++wrong;
        ++answered;
      }
    });
  for (auto& t : clients) t.join();
  CHECK(answered == kClients * kEach);
  CHECK(wrong == 0);
  const auto stats = runner.stats();
  CHECK(stats.requests == int64_t(kClients * kEach));
  CHECK(stats.batches < stats.requests);  // requests of different lengths shared batches
}

TEST_CASE("the runner builds the mask itself when mask_input is set; run_async cuts answers too") {
  auto model = text_encoder();
  pare::Runner runner(model, pare::RunnerOptions().max_batch(4).padding(pare::PaddingOptions({16, 64}).mask_input(1)));
  const auto inputs = text_request(11, 3);
  check_same(runner.run({inputs[0]}), reference(model, inputs));  // ids alone: the mask is the runner's
  check_same(runner.run_async({inputs[0]}).get(), reference(model, inputs));
}

TEST_CASE("the cache keys on the unpadded request: equal prefixes of different lengths never share an entry") {
  auto model = text_encoder();
  auto cache = std::make_shared<pare::InferenceCache>(pare::InferenceCacheOptions().capacity_bytes(1 << 20));
  pare::Runner runner(model, pare::RunnerOptions().max_batch(4).cache(cache).padding(pare::PaddingOptions({32})));
  const auto long_request = text_request(20, 4);
  const std::vector<c10::IValue> short_request{long_request[0].toTensor().narrow(1, 0, 12).clone(),
                                               long_request[1].toTensor().narrow(1, 0, 12).clone()};
  check_same(runner.run(long_request), reference(model, long_request));
  check_same(runner.run(short_request), reference(model, short_request));
  check_same(runner.run(short_request), reference(model, short_request));  // a hit, still the short answer
  CHECK(cache->stats().hits == 1);
}

TEST_CASE("padding rejects bad options and requests with errors that say what is expected") {
  auto model = text_encoder();
  auto options = [] { return pare::RunnerOptions().max_batch(4); };
  CHECK_THROWS_WITH(pare::Runner(model, options().padding(pare::PaddingOptions({}))),
                    Catch::Contains("at least one length"));
  CHECK_THROWS_WITH(pare::Runner(model, options().padding(pare::PaddingOptions({32, 16}))),
                    Catch::Contains("ascending"));
  CHECK_THROWS_WITH(pare::Runner(model, options().padding(pare::PaddingOptions({32}).dim(0))),
                    Catch::Contains("dim 0 holds the batch"));
  pare::Runner runner(model, options().padding(pare::PaddingOptions({16, 32})));
  CHECK_THROWS_WITH(runner.run(text_request(40, 1)), Catch::Contains("longer than the largest bucket (32)"));
  const std::vector<c10::IValue> disagreeing{torch::ones({1, 8}, torch::kLong), torch::ones({1, 9}, torch::kLong)};
  CHECK_THROWS_WITH(runner.run(disagreeing), Catch::Contains("must share one length"));
  auto failed = runner.run_async(text_request(40, 1));
  CHECK_THROWS_AS(failed.get(), pare::Error);
}
