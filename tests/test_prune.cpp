#include "support/testing.hpp"

#include "fashion_mnist.hpp"
#include "pare/prune/prune.hpp"

namespace {

torch::jit::Module small_cnn() { return pare::examples::make_fashion_cnn({4, 8, 16}, 7); }

pare::Result prune(const torch::jit::Module& model, pare::L1PruneOptions options) {
  return pare::Pipeline().add(pare::L1Prune(options)).run(model);
}

torch::Tensor weight(const torch::jit::Module& m, const std::string& layer) {
  return m.attr(layer).toModule().attr("weight").toTensor();
}

int64_t zeros(const torch::Tensor& t) { return t.numel() - t.count_nonzero().item<int64_t>(); }

}  // namespace

TEST_CASE("prune_count rounds half to even like Python's round") {
  CHECK(pare::prune_count(0.5, 5) == 2);   // 2.5 -> 2
  CHECK(pare::prune_count(0.5, 7) == 4);   // 3.5 -> 4
  CHECK(pare::prune_count(0.3, 10) == 3);
  CHECK(pare::prune_count(1.0, 9) == 9);
}

TEST_CASE("prune_smallest zeroes exactly the smallest magnitudes") {
  auto t = torch::tensor({0.5f, -0.1f, 3.0f, -2.0f, 0.2f, 1.0f});
  const auto masks = pare::prune_smallest({t}, 3);
  CHECK(torch::equal(masks[0], torch::tensor({false, false, true, true, false, true})));
  CHECK(torch::equal(t, torch::tensor({0.0f, 0.0f, 3.0f, -2.0f, 0.0f, 1.0f})));
}

TEST_CASE("prune_smallest resolves ties in order and prunes exactly count") {
  auto a = torch::tensor({1.0, 1.0, 1.0, 5.0}, torch::kDouble);
  auto b = torch::tensor({1.0, 0.5}, torch::kDouble);
  const auto masks = pare::prune_smallest({a, b}, 3);
  CHECK(zeros(a) + zeros(b) == 3);
  CHECK(torch::equal(masks[0], torch::tensor({false, false, true, true})));  // ties go in order
  CHECK(torch::equal(masks[1], torch::tensor({true, false})));
}

TEST_CASE("prune_smallest agrees with a sort on random data across float types") {
  for (auto dtype : {torch::kFloat, torch::kDouble}) {
    torch::manual_seed(3);
    std::vector<torch::Tensor> tensors{torch::randn({300, 7}, dtype), torch::randn({1001}, dtype)};
    const auto all = torch::cat({tensors[0].flatten(), tensors[1]}).abs();
    const int64_t count = 777;
    const auto threshold = std::get<0>(all.sort()).index({count - 1}).item<double>();
    pare::prune_smallest(tensors, count);
    const auto after = torch::cat({tensors[0].flatten(), tensors[1]});
    CHECK(zeros(after) == count);
    CHECK(after.abs().masked_select(after != 0).min().item<double>() > threshold);
  }
}

TEST_CASE("local unstructured pruning hits every layer's own amount") {
  const auto model = small_cnn();
  const auto result = prune(model, pare::L1PruneOptions(0.5));
  for (const auto& layer : {"conv1", "conv2", "fc1", "fc2"}) {
    const auto w = weight(result.module, layer);
    CHECK(zeros(w) == pare::prune_count(0.5, w.numel()));
    CHECK(torch::equal(result.masks.at(std::string(layer) + ".weight"), w != 0));
  }
  CHECK(zeros(weight(model, "fc1")) == 0);  // the input module is untouched
}

TEST_CASE("global pruning uses one threshold across layers") {
  const auto result = prune(small_cnn(), pare::L1PruneOptions(0.9).scope(pare::Scope::Global));
  const auto& entry = result.report.at("l1_prune");
  CHECK(entry.total_parameters() - entry.total_nonzeros() == pare::prune_count(0.9, entry.total_parameters()));
  double largest_pruned = 0, smallest_kept = 1e9;
  for (const auto& [name, mask] : result.masks) {
    const auto layer = name.substr(0, name.find('.'));
    const auto original = weight(small_cnn(), layer).abs();
    if (mask.logical_not().any().item<bool>())
      largest_pruned = std::max(largest_pruned, original.masked_select(mask.logical_not()).max().item<double>());
    if (mask.any().item<bool>())
      smallest_kept = std::min(smallest_kept, original.masked_select(mask).min().item<double>());
  }
  CHECK(largest_pruned <= smallest_kept);
}

TEST_CASE("structured pruning removes whole output channels with the smallest L1 norms") {
  const auto model = small_cnn();
  const auto norms = weight(model, "conv2").abs().sum({1, 2, 3});
  const auto result = prune(model, pare::L1PruneOptions(0.25).structured(0).include({"conv2.weight"}));
  const auto w = weight(result.module, "conv2");
  const auto channel_alive = w.abs().sum({1, 2, 3}) != 0;
  CHECK(channel_alive.logical_not().sum().item<int64_t>() == 2);  // round(0.25 * 8)
  const auto dead_max = norms.masked_select(channel_alive.logical_not()).max().item<double>();
  const auto alive_min = norms.masked_select(channel_alive).min().item<double>();
  CHECK(dead_max <= alive_min);
  CHECK(result.masks.size() == 1);
  CHECK(zeros(weight(result.module, "fc1")) == 0);
}

TEST_CASE("global structured pruning ranks channels across layers") {
  const auto result = prune(small_cnn(), pare::L1PruneOptions(0.5).structured(0).scope(pare::Scope::Global));
  int64_t dead = 0, channels = 0;
  for (const auto& layer : {"conv1", "conv2", "fc1", "fc2"}) {
    const auto w = weight(result.module, layer).flatten(1);
    dead += (w.abs().sum(1) == 0).sum().item<int64_t>();
    channels += w.size(0);
  }
  CHECK(dead == pare::prune_count(0.5, channels));
}

TEST_CASE("pruning twice keeps earlier masks") {
  auto once = prune(small_cnn(), pare::L1PruneOptions(0.5));
  const auto twice = pare::Pipeline()
                         .add(pare::L1Prune(pare::L1PruneOptions(0.5)))
                         .add(pare::L1Prune(pare::L1PruneOptions(0.8).exclude({"fc2.*"})))
                         .run(small_cnn());
  const auto first = once.masks.at("fc1.weight"), second = twice.masks.at("fc1.weight");
  CHECK(second.logical_and(first.logical_not()).sum().item<int64_t>() == 0);
  CHECK(torch::equal(twice.masks.at("fc2.weight"), once.masks.at("fc2.weight")));
}

TEST_CASE("bad options and models give pare::Error") {
  CHECK_THROWS_WITH(pare::L1Prune(pare::L1PruneOptions(1.5)), Catch::Contains("outside [0, 1]"));
  CHECK_THROWS_AS(pare::L1Prune(pare::L1PruneOptions(-0.1)), pare::Error);
  CHECK_THROWS_WITH(prune(small_cnn(), pare::L1PruneOptions(0.5).include({"nothing.*"})),
                    Catch::Contains("no layer matches") && Catch::Contains("conv1.weight"));
  CHECK_THROWS_WITH(prune(small_cnn(), pare::L1PruneOptions(0.5).structured(4)), Catch::Contains("out of range"));
  auto half = small_cnn();
  half.to(torch::kHalf);
  CHECK_THROWS_WITH(prune(half, pare::L1PruneOptions(0.5)), Catch::Contains("expected float32 or float64"));
  auto nan = small_cnn();
  weight(nan, "fc2").index_put_({0, 0}, NAN);
  CHECK_THROWS_WITH(prune(nan, pare::L1PruneOptions(0.5)), Catch::Contains("NaN"));
  CHECK_THROWS_AS(pare::Pipeline().run(small_cnn()), pare::Error);
}
