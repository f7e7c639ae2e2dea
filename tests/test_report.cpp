#include "support/testing.hpp"

#include <limits>

#include "pare/core/error.hpp"
#include "pare/core/report.hpp"

namespace {

pare::Report sample_report() {
  pare::Report report;
  auto& pass = report.add("l1_prune");
  pass.seconds = 0.25;
  pass.labels["scope"] = "global";
  pass.metrics["amount"] = 0.5;
  pass.series = {1.5, 0.75};
  pass.series_name = "loss";
  pare::LayerReport layer;
  layer.name = "fc1.weight";
  layer.parameters = 100;
  layer.nonzeros = 40;
  layer.metrics["scale"] = 0.125;
  layer.labels["observer"] = "minmax";
  pass.layers.push_back(layer);
  return report;
}

}  // namespace

TEST_CASE("layer and pass totals derive sparsity from counts") {
  const auto report = sample_report();
  const auto& pass = report.at("l1_prune");
  CHECK(pass.layers[0].sparsity() == Approx(0.6));
  CHECK(pass.total_parameters() == 100);
  CHECK(pass.total_nonzeros() == 40);
  CHECK(pass.total_sparsity() == Approx(0.6));
  CHECK(pare::LayerReport{}.sparsity() == 0.0);
}

TEST_CASE("JSON round-trips every field") {
  const auto report = sample_report();
  const auto copy = pare::Report::from_json(report.to_json());
  REQUIRE(copy.passes.size() == 1);
  const auto& pass = copy.at("l1_prune");
  CHECK(pass.seconds == 0.25);
  CHECK(pass.labels.at("scope") == "global");
  CHECK(pass.metrics.at("amount") == 0.5);
  CHECK(pass.series == std::vector<double>{1.5, 0.75});
  CHECK(pass.series_name == "loss");
  REQUIRE(pass.layers.size() == 1);
  CHECK(pass.layers[0].name == "fc1.weight");
  CHECK(pass.layers[0].nonzeros == 40);
  CHECK(pass.layers[0].metrics.at("scale") == 0.125);
  CHECK(pass.layers[0].labels.at("observer") == "minmax");
}

TEST_CASE("the table names every layer and the total") {
  const auto text = sample_report().to_string();
  CHECK(text.find("l1_prune") != std::string::npos);
  CHECK(text.find("fc1.weight") != std::string::npos);
  CHECK(text.find("60.00%") != std::string::npos);
  CHECK(text.find("observer=minmax") != std::string::npos);
}

TEST_CASE("bad input gives pare::Error") {
  CHECK_THROWS_AS(pare::Report::from_json("{not json"), pare::Error);
  CHECK_THROWS_AS(pare::Report::from_json("{\"passes\": [{}]}"), pare::Error);
  CHECK_THROWS_WITH(sample_report().at("quantize_int8"), Catch::Contains("no entry for pass 'quantize_int8'"));
}

TEST_CASE("the HTML page draws one bar per layer and names every layer") {
  auto report = sample_report();
  auto& quantize = report.add("quantize_int8");
  for (const char* name : {"conv1", "fc1"}) {
    pare::LayerReport layer;
    layer.name = name;
    layer.metrics["sqnr_db"] = 30;
    quantize.layers.push_back(layer);
  }
  pare::LayerReport island;
  island.name = "fc2";
  island.labels = {{"status", "float"}, {"reason", "skipped by option"}};
  quantize.layers.push_back(island);
  const auto page = report.to_html("a <b> title");
  CHECK(page.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(page.find("<script") == std::string::npos);
  CHECK(page.find("a &lt;b&gt; title") != std::string::npos);
  // time per pass (2) + sparsity of fc1.weight (1) + SQNR of conv1 and fc1 (2) + loss series (2)
  CHECK(count(page, "<rect class=\"bar ") == 7);
  CHECK(count(page, "<rect class=\"island\"") == 1);
  CHECK(page.find("float island: skipped by option") != std::string::npos);
  for (const char* name : {">fc1.weight<", ">conv1<", ">fc1<", ">fc2<"}) CHECK(page.find(name) != std::string::npos);
}

TEST_CASE("channels before/after round-trip through JSON and draw two bars per group") {
  pare::Report report;
  auto& pass = report.add("prune_channels");
  pare::LayerReport group;
  group.name = "layer1.0";
  group.channels_before = 64;
  group.channels_after = 32;
  pass.layers.push_back(group);
  pare::LayerReport dense;
  dense.name = "fc.weight";
  dense.parameters = dense.nonzeros = 10;
  pass.layers.push_back(dense);
  const auto copy = pare::Report::from_json(report.to_json());
  CHECK(copy.passes[0].layers[0].channels_before == 64);
  CHECK(copy.passes[0].layers[0].channels_after == 32);
  CHECK(!copy.passes[0].layers[1].channels_before);
  CHECK(copy.to_string().find("channels=64->32") != std::string::npos);
  CHECK(count(copy.to_html(), "<rect class=\"bar ") == 1 + 2);  // time per pass + before/after
}

TEST_CASE("layer counts from JSON must be integers in [0, 2^53]; totals never overflow") {
  const auto with_counts = [](const std::string& parameters, const std::string& nonzeros) {
    return "{\"passes\": [{\"pass\": \"p\", \"seconds\": 0, \"layers\": [{\"name\": \"w\", \"parameters\": " +
           parameters + ", \"nonzeros\": " + nonzeros + "}]}]}";
  };
  CHECK(pare::Report::from_json(with_counts("9007199254740992", "0")).passes[0].layers[0].parameters ==
        9007199254740992);
  // Found by fuzz_report_json: converting these to int64 was undefined behaviour.
  CHECK_THROWS_WITH(pare::Report::from_json(with_counts("1e300", "1")), Catch::Contains("'parameters' is 1e+300"));
  CHECK_THROWS_AS(pare::Report::from_json(with_counts("9007199254740993", "1")), pare::Error);
  CHECK_THROWS_AS(pare::Report::from_json(with_counts("10", "-1")), pare::Error);
  CHECK_THROWS_AS(pare::Report::from_json(with_counts("10", "2.5")), pare::Error);
  pare::PassReport huge;
  huge.layers.resize(2048);
  for (auto& layer : huge.layers) layer.parameters = layer.nonzeros = int64_t(1) << 53;
  CHECK(huge.total_parameters() == std::numeric_limits<std::int64_t>::max());  // saturated, not wrapped
  CHECK(huge.total_sparsity() == 0.0);
}
