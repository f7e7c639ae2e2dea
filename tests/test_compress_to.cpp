// CompressTo on a CNN trained on Fashion-MNIST: a modest target met within the
// budget with every candidate in the report, a target out of reach answered
// with the best found and a message that says so, and bad options refused.

#include "support/testing.hpp"

#include <sstream>
#include <ATen/Parallel.h>

#include "support/fashion_testing.hpp"
#include "pare/compress/compress_to.hpp"

// A named namespace: the names must not meet those of the files in the same unity batch.
namespace compress_to_test {

struct Fixture {
  torch::jit::Module model;
  std::vector<pare::Batch> train, eval;
  double fp32 = 0;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    torch::set_num_threads(2);
    Fixture out;
    out.model = ex::make_fashion_cnn({32, 64, 128}, 0);
    ex::train(out.model, train_subset(), 2);
    for (int64_t b = 0; b < 2048; b += 128)
      out.train.emplace_back(train_subset().images.slice(0, b, b + 128), train_subset().labels.slice(0, b, b + 128));
    for (int64_t b = 0; b < 1000; b += 250)
      out.eval.emplace_back(test_subset().images.slice(0, b, b + 250), test_subset().labels.slice(0, b, b + 250));
    out.fp32 = ex::accuracy(out.model, test_subset());
    return out;
  }();
  return f;
}

pare::CompressToOptions options(double speedup, double max_drop) {
  const auto& f = fixture();
  return pare::CompressToOptions(pare::Latency::speedup(speedup).batch(16).repeats(5), max_drop, f.train, f.eval)
      .epochs(1)
      .max_candidates(4);
}

TEST_CASE("CompressTo meets a modest target within the budget; the report lists every candidate", "[compress_to]") {
  const auto& f = fixture();
  const auto result = pare::Pipeline().add(pare::CompressTo(options(1.5, 2.0))).run(f.model);
  const auto& entry = result.report.at("compress_to");
  INFO(entry.labels.at("message"));
  // Whether 1.5x is reached depends on the host's timing (a loaded 2-core
  // machine may measure less): what must hold is that the verdict agrees with
  // what the pass measured on the exported module, and that it says so.
  const bool met = entry.metrics.at("met") == 1.0;
  const double drop = entry.metrics.at("input_accuracy") - entry.metrics.at("accuracy");
  CHECK(met == (entry.metrics.at("speedup") >= 1.5 && drop <= 2.0));
  CHECK(entry.labels.at("message").rfind(met ? "target met" : "target not met", 0) == 0);
  if (!met) WARN("1.5x not reached on this host: " << entry.labels.at("message"));
  CHECK(entry.metrics.at("input_accuracy") == Approx(f.fp32).margin(0.01));
  REQUIRE(!entry.layers.empty());
  int chosen = 0;
  for (const auto& row : entry.layers) {
    CHECK(row.metrics.count("speedup") == 1);
    if (row.labels.count("note")) {  // its pruning target was measured missed: no file, and the note says why
      CHECK_THAT(row.labels.at("note"), Catch::Contains("not met") || Catch::Contains("out of reach"));
      CHECK(row.labels.at("chosen") == "no");
      continue;
    }
    CHECK(row.metrics.at("file_bytes") > 0);
    CHECK(!row.labels.at("applied").empty());
    chosen += row.labels.at("chosen") == "yes";
  }
  CHECK(chosen == 1);
  if (met) {  // the search stops at the first candidate that meets both
    CHECK(entry.layers.back().labels.at("chosen") == "yes");
    CHECK(entry.layers.back().labels.at("applied").find("prune_channels") != std::string::npos);
  }
  // The module is the exported candidate: its accuracy is the one reported, and it is smaller.
  auto module = result.module;
  CHECK(ex::accuracy(module, test_subset()) == Approx(entry.metrics.at("accuracy")).margin(0.01));
  auto input = f.model.clone();
  input.eval();
  std::stringstream input_file;
  torch::jit::freeze(input).save(input_file);  // the input exported the same way: frozen
  CHECK(entry.metrics.at("file_bytes") < double(input_file.str().size()));
  const auto html = result.report.to_html();
  CHECK(html.find("Latency and accuracy of every candidate") != std::string::npos);
  CHECK(count(html, "class=\"point chosen\"") == 1);
}

TEST_CASE("CompressTo: a target out of reach gives the best found and says it was not met", "[compress_to]") {
  const auto& f = fixture();
  // No channel allocation of this CNN runs 50x faster, and no accuracy may be lost.
  const auto r = pare::compress_to(f.model, options(50.0, 0.0).max_candidates(2));
  INFO(r.message);
  CHECK_FALSE(r.met);
  CHECK(r.message.rfind("target not met", 0) == 0);
  CHECK(r.message.find("50.00x") != std::string::npos);
  CHECK(!r.candidates.empty());
  CHECK(r.candidates.size() <= 2);
  for (const auto& c : r.candidates) CHECK_FALSE((c.meets_latency && c.meets_accuracy));
}

TEST_CASE("CompressTo refuses bad options with pare::Error", "[compress_to]") {
  const auto& f = fixture();
  const auto target = pare::Latency::speedup(2.0);
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, -1.0, f.train, f.eval)),
                    Catch::Contains("max_drop"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, std::nan(""), f.train, f.eval)),
                    Catch::Contains("max_drop"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, 1.0, {}, f.eval)),
                    Catch::Contains("no train batches"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, 1.0, f.train, {})),
                    Catch::Contains("no eval batches"));
  auto bad_labels = f.eval;
  bad_labels[1].second = bad_labels[1].second.to(torch::kFloat);
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, 1.0, f.train, bad_labels)),
                    Catch::Contains("eval batch 1") && Catch::Contains("int64"));
  auto short_labels = f.train;
  short_labels[0].second = short_labels[0].second.slice(0, 0, 3);
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(target, 1.0, short_labels, f.eval)),
                    Catch::Contains("one label per row"));
  const pare::CompressToOptions good(target, 1.0, f.train, f.eval);
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(good).epochs(-1)), Catch::Contains("epochs"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(good).max_candidates(0)),
                    Catch::Contains("max_candidates"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(good).calibration_batches(0)),
                    Catch::Contains("calibration_batches"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(good).lr(0)), Catch::Contains("lr"));
  CHECK_THROWS_WITH(pare::CompressTo(pare::CompressToOptions(good).engine("abacus")), Catch::Contains("abacus"));
  CHECK_THROWS_AS(pare::compress_to(f.model, pare::CompressToOptions(good).max_candidates(101)), pare::Error);
}

}  // namespace compress_to_test
