// pare::model_fingerprint, and pare::Runner keeping the cached results of
// different models apart in one shared cache.

#include "support/testing.hpp"

#include <sstream>

#include "pare/cache/fingerprint.hpp"
#include "pare/serve/runner.hpp"

namespace {

// y = x * weight + offset, with the code's constant `offset` and a weight parameter.
torch::jit::Module affine(float weight, int offset = 1) {
  torch::jit::Module m("__torch__.Affine");
  m.register_parameter("weight", torch::full({1}, weight), false);
  m.define("def forward(self, x):\n  return x * self.weight + " + std::to_string(offset) + "\n");
  return m;
}

torch::jit::Module reloaded(const torch::jit::Module& m) {
  std::stringstream archive;
  m.save(archive);
  return torch::jit::load(archive);
}


}  // namespace

TEST_CASE("a fingerprint follows the code and the weights, nothing else") {
  const auto model = affine(2);
  const auto fingerprint = pare::model_fingerprint(model);
  CHECK(fingerprint.size() == 32);
  CHECK(fingerprint.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(pare::model_fingerprint(model) == fingerprint);            // deterministic
  CHECK(pare::model_fingerprint(affine(2)) == fingerprint);        // an equal model
  CHECK(pare::model_fingerprint(reloaded(model)) == fingerprint);  // a save/load copy
  auto used = affine(2);
  used.forward({row(1)});
  CHECK(pare::model_fingerprint(used) == fingerprint);  // running it changes nothing

  CHECK(pare::model_fingerprint(affine(3)) != fingerprint);     // other weights
  CHECK(pare::model_fingerprint(affine(2, 5)) != fingerprint);  // other code
  auto nudged = affine(2);
  {
    torch::NoGradGuard no_grad;
    nudged.attr("weight").toTensor().add_(1e-6);  // the smallest change of one weight
  }
  CHECK(pare::model_fingerprint(nudged) != fingerprint);
}

TEST_CASE("runners over different models sharing one cache each get their own results") {
  // Before, the key had no model identity: the second runner was served the first one's output.
  auto cache = std::make_shared<pare::InferenceCache>(pare::InferenceCacheOptions().capacity_bytes(1 << 20));
  pare::Runner doubling(affine(2), pare::RunnerOptions().cache(cache));
  pare::Runner tripling(affine(3), pare::RunnerOptions().cache(cache));
  CHECK(torch::equal(doubling.run({row(5)}).toTensor(), row(11)));
  CHECK(torch::equal(tripling.run({row(5)}).toTensor(), row(16)));
  CHECK(torch::equal(doubling.run({row(5)}).toTensor(), row(11)));  // hits, each of its own entry
  CHECK(torch::equal(tripling.run({row(5)}).toTensor(), row(16)));
  CHECK(cache->stats().hits == 2);
  CHECK(cache->stats().entries == 2);

  SECTION("with batching too") {
    pare::Runner batched(affine(4), pare::RunnerOptions().cache(cache).max_batch(8).threads(1));
    CHECK(torch::equal(batched.run({row(5)}).toTensor(), row(21)));
  }
  SECTION("runners over equal models share their entries") {
    pare::Runner twin(affine(2), pare::RunnerOptions().cache(cache));
    CHECK(torch::equal(twin.run({row(5)}).toTensor(), row(11)));
    CHECK(twin.stats().batches == 0);  // served from the cache: no forward pass
  }
  SECTION("an explicit namespace replaces the fingerprint") {
    pare::Runner named(affine(7), pare::RunnerOptions().cache(cache).cache_namespace("affine@7"));
    CHECK(torch::equal(named.run({row(5)}).toTensor(), row(36)));
    CHECK(cache->get({row(5)}, "affine@7").has_value());
  }
}
