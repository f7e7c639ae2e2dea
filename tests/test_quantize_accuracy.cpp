// QuantizeInt8's accuracy budget (max_drop with evaluate) on a CNN trained on
// Fashion-MNIST whose first layer has outlier channels (300x, compensated in
// the next layer: the float model is unchanged, plain int8 is not), and
// never_slower's island and file timing on a network of many small islands.

#include "support/testing.hpp"

#include <cmath>
#include <ATen/Parallel.h>

#include "support/fashion_testing.hpp"
#include "pare/quantize/quantize.hpp"

namespace {

constexpr double kOutlierScale = 300.0;

// Channels 0-3 of conv1 scaled by 300, conv2's weights that read them by
// 1/300: ReLU and max-pooling commute with a positive scale, so the float
// model computes the same function, while conv1's int8 output range and
// conv2's per-channel weight scales are dominated by the outliers.
torch::jit::Module with_outlier_channels(const torch::jit::Module& model) {
  auto copy = model.clone();
  torch::NoGradGuard no_grad;
  auto conv1 = copy.attr("conv1").toModule(), conv2 = copy.attr("conv2").toModule();
  for (int64_t c : {0, 1, 2, 3}) {
    conv1.attr("weight").toTensor()[c].mul_(kOutlierScale);
    conv1.attr("bias").toTensor()[c].mul_(kOutlierScale);
    conv2.attr("weight").toTensor().select(1, c).div_(kOutlierScale);
  }
  return copy;
}

struct Fixture {
  torch::jit::Module model;
  pare::InputBatches calibration;          // 4 batches of 64: 3 observed, 1 held out
  std::vector<pare::LabelledBatch> test;   // the 1000 test images in batches of 250
  double fp32 = 0;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    torch::set_num_threads(2);
    Fixture out;
    auto trained = ex::make_fashion_cnn({16, 32, 64}, 0);
    ex::train(trained, train_subset(), 2);
    out.model = with_outlier_channels(trained);
    for (int64_t b = 0; b < 4; ++b) out.calibration.push_back({train_subset().images.slice(0, b * 64, (b + 1) * 64)});
    const auto& test = test_subset();
    for (int64_t b = 0; b < 4; ++b)
      out.test.push_back({{test.images.slice(0, b * 250, (b + 1) * 250)}, test.labels.slice(0, b * 250, (b + 1) * 250)});
    out.fp32 = ex::accuracy(trained, test);
    CHECK(ex::accuracy(out.model, test) == Approx(out.fp32).margin(0.11));  // same function, up to one image
    return out;
  }();
  return f;
}

pare::QuantizeInt8Options budget_options() {
  return pare::QuantizeInt8Options(fixture().calibration);
}

pare::PassReport quantize(pare::QuantizeInt8Options options, torch::jit::Module* out = nullptr) {
  auto result = pare::Pipeline().add(pare::QuantizeInt8(std::move(options.never_slower(false)))).run(fixture().model);
  if (out) *out = result.module;
  return result.report.at("quantize_int8");
}

}  // namespace

TEST_CASE("max_drop sends the outlier layers back to float; plain int8 breaks the budget") {
  const auto& f = fixture();
  const auto plain = quantize(budget_options().evaluate(f.test));
  INFO("fp32 " << f.fp32 << "%, plain int8 " << plain.metrics.at("accuracy_int8") << "%");
  CHECK(plain.metrics.at("accuracy_fp32") == Approx(f.fp32).margin(0.11));
  REQUIRE(plain.metrics.at("plain_int8_drop") > 1.0);             // what makes this model a test of max_drop
  CHECK(plain.metrics.at("layers_float_for_accuracy") == 0);      // evaluate alone measures, changes nothing
  CHECK(plain.metrics.at("layers_int8") == 4);

  torch::jit::Module module;
  const auto budgeted = quantize(budget_options().evaluate(f.test).max_drop(1.0), &module);
  const double drop = budgeted.metrics.at("accuracy_drop");
  INFO("max_drop(1): " << budgeted.metrics.at("accuracy_int8") << "% (" << drop << " pt), float: "
                       << budgeted.labels.at("accuracy_fallback"));
  CHECK(drop <= 1.0);
  CHECK(budgeted.metrics.at("plain_int8_drop") == Approx(plain.metrics.at("plain_int8_drop")));
  CHECK(budgeted.metrics.at("layers_int8") >= 1);  // the rest stays int8
  CHECK(budgeted.metrics.at("layers_float_for_accuracy") >= 1);
  // The first layer sent back is the most sensitive: the outliers are conv1's output and conv2's input.
  const auto& fallback = budgeted.labels.at("accuracy_fallback");
  CHECK((fallback.rfind("conv1", 0) == 0 || fallback.rfind("conv2", 0) == 0));
  // The reported accuracy is the returned module's.
  auto copy = module.clone();
  CHECK(ex::accuracy(copy, test_subset()) == Approx(budgeted.metrics.at("accuracy_int8")).margin(1e-9));
  for (const auto& layer : budgeted.layers)
    if (layer.labels.at("status") == "float") CHECK(layer.labels.at("reason") == "kept float: accuracy budget (max_drop)");
}

TEST_CASE("a budget plain int8 meets changes nothing") {
  const auto& f = fixture();
  const auto entry = quantize(budget_options().evaluate(f.test).max_drop(100.0));
  CHECK(entry.metrics.at("layers_int8") == 4);
  CHECK(entry.metrics.at("accuracy_evaluations") == 1);
  CHECK(entry.metrics.at("accuracy_drop") == Approx(entry.metrics.at("plain_int8_drop")));
}

TEST_CASE("an accuracy callback works like labelled batches") {
  int calls = 0;
  const auto entry = quantize(budget_options().max_drop(1.0).evaluate([&](torch::jit::Module& m) {
    ++calls;
    return ex::accuracy(m, test_subset());
  }));
  CHECK(entry.metrics.at("accuracy_drop") <= 1.0);
  CHECK(calls == entry.metrics.at("accuracy_evaluations") + 2);  // + the float model and the final module
}

TEST_CASE("max_drop and evaluate reject what they cannot use") {
  const auto& f = fixture();
  using O = pare::QuantizeInt8Options;
  CHECK_THROWS_WITH(pare::QuantizeInt8(O(f.calibration).max_drop(1.0)), Catch::Contains("max_drop needs evaluate"));
  CHECK_THROWS_WITH(pare::QuantizeInt8(O(f.calibration).max_drop(-1.0).evaluate(f.test)),
                    Catch::Contains("max_drop must be a finite number"));
  CHECK_THROWS_WITH(pare::QuantizeInt8(O(f.calibration).batch_sizes({8, 0})), Catch::Contains("batch_sizes must be positive"));
  CHECK_THROWS_WITH(pare::Evaluation(std::vector<pare::LabelledBatch>{}), Catch::Contains("no labelled batches"));
  CHECK_THROWS_WITH(pare::Evaluation(std::vector<pare::LabelledBatch>{{{torch::randn({2, 1, 28, 28})}, torch::zeros({2})}}),
                    Catch::Contains("1-D int64"));
  // Labels that do not match the output's rows: pare::Error naming the batch, at the pass's run.
  const std::vector<pare::LabelledBatch> wrong{{{torch::randn({4, 1, 28, 28})}, torch::zeros({3}, torch::kLong)}};
  CHECK_THROWS_WITH(quantize(O(f.calibration).evaluate(wrong)), Catch::Contains("one row per label"));
}

TEST_CASE("never_slower times every island alone and the file at each batch size named") {
  // tanh stays float here: each conv is an island of its own, as between the SiLUs of EfficientNet.
  torch::manual_seed(3);
  torch::jit::Module m("__torch__.SiluNet");
  for (int i = 0; i < 4; ++i) m.register_parameter("w" + std::to_string(i), torch::randn({16, 16, 3, 3}) * 0.1, false);
  m.define(R"(
def forward(self, x):
  h = torch.tanh(torch.conv2d(x, self.w0, None, [1, 1], [1, 1]))
  y = torch.tanh(torch.conv2d(h, self.w1, None, [1, 1], [1, 1]))
  y = torch.tanh(torch.conv2d(y, self.w2, None, [1, 1], [1, 1]))
  return torch.conv2d(y, self.w3, None, [1, 1], [1, 1])
)");
  pare::InputBatches calibration;
  for (int i = 0; i < 3; ++i) calibration.push_back({torch::randn({4, 16, 12, 12})});
  auto result = pare::Pipeline()
                    .add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration).engine("onednn").batch_sizes({1, 8})))
                    .run(m);
  const auto& entry = result.report.at("quantize_int8");
  CHECK(entry.metrics.at("islands_timed") == 4);
  const bool any_int8 = entry.metrics.at("layers_int8") > 0;
  CHECK(any_int8 == (entry.metrics.at("islands_kept_float") < 4));
  if (any_int8) {  // the pass's own rule: int8 kept only where its file was faster at every batch size
    for (const char* b : {"_b1", "_b8"})
      CHECK(entry.metrics.at(std::string("file_int8_ms") + b) < entry.metrics.at(std::string("file_fp32_ms") + b));
  }
  const auto x = torch::randn({8, 16, 12, 12});
  const auto reference = m.forward({x}).toTensor(), out = result.module.forward({x}).toTensor();
  CHECK((reference - out).pow(2).sum().item<double>() < 0.01 * reference.pow(2).sum().item<double>());
}
