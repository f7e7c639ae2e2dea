#include "support/testing.hpp"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "pare/prune/latency.hpp"
#include "pare/prune/prune_channels.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A residual CNN with two identical blocks (the same weights): block b on
// 32x32 maps, block c on 8x8 maps after pooling. Their channels weigh the same,
// but b's cost 16 times as much time.
torch::jit::Module layer(const std::string& name, torch::Tensor weight) {
  torch::jit::Module m(name);
  m.register_parameter("bias", torch::zeros({weight.size(0)}), false);
  m.register_parameter("weight", std::move(weight), false);
  return m;
}

torch::jit::Module two_blocks() {
  torch::manual_seed(0);
  torch::jit::Module m("TwoBlocks");
  const auto w1 = torch::randn({64, 32, 3, 3}) * 0.1, w2 = torch::randn({32, 64, 3, 3}) * 0.1;
  m.register_module("stem", layer("Stem", torch::randn({32, 3, 3, 3}) * 0.1));
  m.register_module("b1", layer("B1", w1.clone()));
  m.register_module("b2", layer("B2", w2.clone()));
  m.register_module("c1", layer("C1", w1.clone()));
  m.register_module("c2", layer("C2", w2.clone()));
  m.register_module("fc", layer("Fc", torch::randn({10, 32}) * 0.1));
  m.define(R"(
def forward(self, x):
    x = torch.relu(torch.conv2d(x, self.stem.weight, self.stem.bias, [1, 1], [1, 1], [1, 1], 1))
    y = torch.relu(torch.conv2d(x, self.b1.weight, self.b1.bias, [1, 1], [1, 1], [1, 1], 1))
    x = x + torch.conv2d(y, self.b2.weight, self.b2.bias, [1, 1], [1, 1], [1, 1], 1)
    x = torch.avg_pool2d(x, [4, 4])
    y = torch.relu(torch.conv2d(x, self.c1.weight, self.c1.bias, [1, 1], [1, 1], [1, 1], 1))
    x = x + torch.conv2d(y, self.c2.weight, self.c2.bias, [1, 1], [1, 1], [1, 1], 1)
    x = torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)
    return torch.linear(x, self.fc.weight, self.fc.bias)
)");
  m.eval();
  return m;
}

const std::vector<int64_t> kShape{1, 3, 32, 32};

std::string fresh_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("pare_latency_" + name + "_" + std::to_string(::getpid()));
  remove_tree(dir.string());
  return dir.string();
}

int64_t width_of(const pare::ChannelPruneResult& stats, const std::string& group) {
  for (const auto& g : stats.groups)
    if (g.name == group) return g.channels_after;
  throw std::runtime_error("no group " + group);
}

}  // namespace

TEST_CASE("latency table: every layer at candidate widths, cached per model and host", "[latency]") {
  const auto dir = fresh_dir("cache");
  const auto settings = pare::Latency::speedup(2.0).batch(4).repeats(3).cache_dir(dir);
  const auto table = pare::measure_latency_table(two_blocks(), kShape, settings);
  CHECK_FALSE(table.from_cache);
  CHECK(table.measure_seconds > 0);
  CHECK(table.network_seconds > 0);
  CHECK(table.input_shape == std::vector<int64_t>{4, 3, 32, 32});
  REQUIRE(table.groups.size() == 4);  // stem (tied to b2, c2 by the adds), b1, c1, the blocked output
  CHECK(table.groups[1].name == "b1");
  CHECK(table.groups[1].widths == std::vector<int64_t>{8, 16, 32, 40, 56, 64});  // multiples of 8, spread, and full
  CHECK(table.groups[3].widths == std::vector<int64_t>{10});                     // the model output keeps its classes
  REQUIRE(table.layers.size() == 6);
  for (const auto& layer : table.layers) {
    CHECK(layer.seconds.size() == layer.in_widths.size() * layer.out_widths.size());
    for (double s : layer.seconds) CHECK(s > 0);
  }
  CHECK(table.layers[1].name == "b1");
  REQUIRE(table.layers[1].in_groups.size() == 1);
  CHECK(table.layers[1].in_groups[0].first == 0);
  CHECK(table.layers[1].out_group == 1);

  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.path().extension() == ".json";
  CHECK(files == 1);
  const auto again = pare::measure_latency_table(two_blocks(), kShape, settings);
  CHECK(again.from_cache);
  CHECK(again.measure_seconds == 0);
  CHECK(again.fingerprint == table.fingerprint);
  CHECK(again.network_seconds == table.network_seconds);
  CHECK(again.layers[1].seconds == table.layers[1].seconds);

  // Another batch size is another table; a damaged file is measured again.
  const auto other = pare::measure_latency_table(two_blocks(), kShape, pare::Latency(settings).batch(2));
  CHECK_FALSE(other.from_cache);
  CHECK(other.fingerprint != table.fingerprint);
  for (const auto& entry : fs::directory_iterator(dir)) std::ofstream(entry.path()) << "{not json";
  CHECK_FALSE(pare::measure_latency_table(two_blocks(), kShape, settings).from_cache);
  remove_tree(dir);
}

TEST_CASE("latency table JSON round trip; LatencyModel rejects broken tables", "[latency]") {
  auto table = pare::measure_latency_table(two_blocks(), kShape, pare::Latency::speedup(2.0).batch(2).repeats(2));
  const auto back = pare::LatencyTable::from_json(table.to_json());
  CHECK(back.to_json() == table.to_json());
  const pare::LatencyModel model(back);
  CHECK(model.predict(model.full_widths()) == Approx(table.network_seconds).epsilon(1e-9));
  CHECK_THROWS_AS(model.predict({32, 64}), pare::Error);
  CHECK_THROWS_AS(pare::LatencyTable::from_json("{\"format\": 3}"), pare::Error);
  table.layers[1].seconds.pop_back();
  CHECK_THROWS_AS(pare::LatencyModel(table), pare::Error);
}

TEST_CASE("LatencyModel predicts the measured pruned module", "[latency]") {
  const auto model = two_blocks();
  const pare::LatencyModel latency(pare::measure_latency_table(model, kShape, pare::Latency::speedup(2.0).batch(8)));
  for (double amount : {0.5, 0.75}) {
    const auto pruned = pare::prune_channels(model, pare::PruneChannelsOptions(amount).input_shape(kShape));
    std::vector<int64_t> widths;
    for (size_t g = 0; g < pruned.stats.groups.size(); ++g) {
      REQUIRE(pruned.stats.groups[g].name == latency.table().groups[g].name);
      widths.push_back(pruned.stats.groups[g].channels_after);
    }
    const double predicted = latency.predict(widths);
    const auto measured = pare::measure_seconds({model, pruned.module}, kShape, pare::Latency::speedup(2.0).batch(8));
    const double error = predicted / measured[1] - 1;
    std::printf(
        "latency model, %.0f%% of channels removed: predicted %.3f ms, measured %.3f ms (input %.3f ms): %+.1f%%\n",
        amount * 100, predicted * 1e3, measured[1] * 1e3, measured[0] * 1e3, error * 100);
    // Reported, not asserted: how close the prediction comes depends on how busy the host is.
    if (std::abs(error) >= 0.35) WARN("latency model off by " << error * 100 << "% on this host");
    CHECK(predicted < latency.predict(latency.full_widths()));
  }
}

// What `prune` returns, or nothing when its latency target was measured missed:
// whether a target is met depends on how busy the host is, and unit tests do
// not assert timing. A miss must be the error that says so.
template <class Prune>
auto met_or_missed(Prune&& prune) -> std::optional<decltype(prune())> {
  try {
    return prune();
  } catch (const pare::Error& miss) {
    CHECK_THAT(miss.what(), Catch::Contains("was not met"));
    WARN("latency target not measured met on this host: " << miss.what());
    return std::nullopt;
  }
}

TEST_CASE("latency target: the time-costly group loses more, the result is measured faster", "[latency]") {
  const auto model = two_blocks();
  // Only the blocks' inner widths may shrink: the same weights, the same importance.
  const auto options = pare::PruneChannelsOptions(0)
                           .input_shape(kShape)
                           .include({"b1.*", "c1.*"})
                           .target(pare::Latency::speedup(1.6).batch(8));
  const auto pruned_or_none = met_or_missed([&] { return pare::prune_channels(model, options); });
  if (!pruned_or_none) return;
  const auto& pruned = *pruned_or_none;
  REQUIRE(pruned.stats.latency);
  const auto& r = *pruned.stats.latency;
  std::printf(
      "latency target 1.6x: %.2fx measured (%.3f -> %.3f ms), predicted %.3f ms (%+.1f%%), %zu attempts; "
      "widths stem %lld, b1 %lld, c1 %lld\n",
      r.speedup(), r.input_seconds * 1e3, r.measured_seconds * 1e3, r.predicted_seconds * 1e3,
      r.prediction_error() * 100, r.attempts.size(), (long long)width_of(pruned.stats, "stem"),
      (long long)width_of(pruned.stats, "b1"), (long long)width_of(pruned.stats, "c1"));
  CHECK(r.speedup() >= 1.6);
  // b1 and c1 have the same weights, and b1 runs at 16x c1's pixels: where the
  // table the pass measured says so (what cutting each to 8 channels saves),
  // b1 must lose more. A table measured while the host was busy can say
  // otherwise; then the allocation is not asserted (no timing asserts here).
  const pare::LatencyModel table(r.table);
  auto saving = [&](size_t group) {
    auto widths = table.full_widths();
    widths[group] = table.table().groups[group].widths.front();
    return table.predict(table.full_widths()) - table.predict(widths);
  };
  REQUIRE(r.table.groups.at(1).name == "b1");
  REQUIRE(r.table.groups.at(2).name == "c1");
  if (saving(1) > 2 * saving(2)) CHECK(width_of(pruned.stats, "b1") < width_of(pruned.stats, "c1"));
  else WARN("the latency table did not find b1 costlier than c1 on this host; allocation not checked");
  CHECK(r.attempts.back().widths == std::vector<int64_t>{width_of(pruned.stats, "stem"), width_of(pruned.stats, "b1"),
                                                         width_of(pruned.stats, "c1"), 10});
  // Measured again, independently: not slower than the input.
  const auto again = pare::measure_seconds({model, pruned.module}, kShape, pare::Latency::speedup(2.0).batch(8));
  std::printf("measured again: %.3f -> %.3f ms (%.2fx)\n", again[0] * 1e3, again[1] * 1e3, again[0] / again[1]);
  CHECK(again[1] < again[0]);

  pare::Pipeline pipeline;
  pipeline.add(pare::PruneChannels(options));
  const auto result = met_or_missed([&] { return pipeline.run(model); });
  if (!result) return;
  const auto& entry = result->report.at("prune_channels");
  CHECK(entry.metrics.at("latency_speedup") >= 1.6);
  CHECK(entry.metrics.at("latency_table_cached") == 0);
  CHECK(entry.labels.at("latency_target") == "1.60x faster at batch 8, 1 thread");
  CHECK(pare::LatencyTable::from_json(entry.labels.at("latency_table")).groups.size() == 4);
}

TEST_CASE("latency target: met as it is, out of reach, bad targets", "[latency]") {
  const auto model = two_blocks();
  const auto base = pare::PruneChannelsOptions(0).input_shape(kShape);
  // A whole second per call: the input already meets it, nothing is removed.
  const auto met = pare::prune_channels(model, pare::PruneChannelsOptions(base).target(pare::Latency::at_most(1s, 2)));
  CHECK(met.stats.params_after == met.stats.params_before);
  CHECK(met.stats.latency->attempts.size() == 1);
  // 1000x faster is beyond the narrowest widths.
  CHECK_THROWS_WITH(
      pare::prune_channels(model, pare::PruneChannelsOptions(base).target(pare::Latency::speedup(1000).batch(2))),
      Catch::Contains("out of reach"));
  // Only the cheap block may shrink: 3x is out of reach too.
  CHECK_THROWS_AS(pare::prune_channels(model, pare::PruneChannelsOptions(base).include({"c1.*"}).target(
                                                  pare::Latency::speedup(3).batch(2))),
                  pare::Error);

  CHECK_THROWS_WITH(pare::Latency::speedup(1.0), Catch::Contains("not above 1"));
  CHECK_THROWS_AS(pare::Latency::speedup(0.5), pare::Error);
  CHECK_THROWS_AS(pare::Latency::speedup(std::nan("")), pare::Error);
  CHECK_THROWS_WITH(pare::Latency::at_most(-5us, 8), Catch::Contains("not positive"));
  CHECK_THROWS_AS(pare::Latency::at_most(0us, 8), pare::Error);
  CHECK_THROWS_AS(pare::Latency::at_most(1ms, 0), pare::Error);
  CHECK_THROWS_WITH(pare::PruneChannels(pare::PruneChannelsOptions(base).target(pare::Latency::speedup(2).repeats(0))),
                    Catch::Contains("repeats"));
  CHECK_THROWS_AS(pare::PruneChannels(pare::PruneChannelsOptions(base).target(pare::Latency::speedup(2).max_widths(1))),
                  pare::Error);
  CHECK_THROWS_AS(pare::measure_latency_table(model, {}, pare::Latency::speedup(2)), pare::Error);
}
