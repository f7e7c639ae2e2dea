// QuantizeInt8 / QuantizeInt8Dynamic on real models: the example CNN trained
// on a Fashion-MNIST subset, a Conv1d + residual-add model and an MLP.

#include "support/testing.hpp"

#include <cstdio>
#include <string>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"
#include "pare/convert/export.hpp"
#include "pare/quantize/quantize.hpp"

namespace ex = pare::examples;

namespace {

struct Trained {
  torch::jit::Module model;
  ex::Dataset test;
  pare::InputBatches calibration;  // 4 batches of 64: 3 observed, 1 held out
  double float_accuracy = 0;
};

const Trained& trained() {
  static const Trained fixture = [] {
    torch::set_num_threads(2);
    Trained t;
    const auto train = ex::load_fashion_mnist(true, 3000);
    t.test = ex::load_fashion_mnist(false, 1000);
    t.model = ex::make_fashion_cnn({16, 32, 64}, 0);
    ex::train(t.model, train, 1);
    for (int64_t b = 0; b < 4; ++b) t.calibration.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});
    t.float_accuracy = ex::accuracy(t.model, t.test);
    return t;
  }();
  return fixture;
}

// Island timing off: these tests check the rewritten graph, which must not
// depend on how busy the machine is (test_quantize_graph.cpp tests the timing).
pare::Result quantize(const torch::jit::Module& model, pare::QuantizeInt8Options options) {
  return pare::Pipeline().add(pare::QuantizeInt8(std::move(options.never_slower(false)))).run(model);
}

torch::jit::Module linear_module(int64_t in, int64_t out, const std::string& kind = "Linear") {
  torch::jit::Module m("__torch__.torch.nn.modules." + std::string(kind == "Linear" ? "linear." : "conv.") + kind);
  const auto shape = kind == "Linear" ? std::vector<int64_t>{out, in} : std::vector<int64_t>{out, in, 3};
  m.register_parameter("weight", torch::randn(shape) * 0.3, false);
  m.register_parameter("bias", torch::randn({out}) * 0.1, false);
  m.define(kind == "Linear" ? "def forward(self, x):\n  return torch.linear(x, self.weight, self.bias)\n"
                            : "def forward(self, x):\n  return torch.conv1d(x, self.weight, self.bias, [1], [1])\n");
  return m;
}

// Engine tests need two engines; said loudly where this LibTorch has fewer.
bool skip_without_two(const std::vector<std::string>& engines) {
  if (engines.size() >= 2) return false;
  WARN("skipped: this LibTorch has " << engines.size() << " quantized engine(s); Debian's x86 build has onednn and qnnpack");
  return true;
}

}  // namespace

TEST_CASE("every observer, per channel and per tensor, keeps the CNN's accuracy") {
  const auto& t = trained();
  for (auto kind : {pare::ObserverKind::MinMax, pare::ObserverKind::MovingAverageMinMax,
                    pare::ObserverKind::Percentile, pare::ObserverKind::Histogram, pare::ObserverKind::Entropy}) {
    for (bool per_channel : {true, false}) {
      INFO(pare::to_string(kind) << (per_channel ? " per channel" : " per tensor"));
      auto result = quantize(t.model, pare::QuantizeInt8Options(t.calibration).observer(kind)
                                          .per_channel(per_channel));
      CHECK(ex::accuracy(result.module, t.test) > t.float_accuracy - 2.0);
      const auto& entry = result.report.at("quantize_int8");
      REQUIRE(entry.layers.size() == 4);
      for (const auto& layer : entry.layers) {
        CHECK(layer.labels.at("observer") == pare::to_string(kind));
        CHECK(layer.metrics.at("scale") > 0);
        // KL calibration clips more than an L2 search: lower SQNR, accuracy kept.
        CHECK(layer.metrics.at("sqnr_db") > (kind == pare::ObserverKind::Entropy ? 5.0 : 10.0));
      }
      CHECK(entry.metrics.at("calibration_batches") == 3);
    }
  }
}

TEST_CASE("conv+relu and linear+relu fuse and the int8 chain has one quantize and one dequantize") {
  const auto& t = trained();
  auto result = quantize(t.model, pare::QuantizeInt8Options(t.calibration));
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::conv2d_relu") == 2);
  CHECK(count(graph, "quantized::linear_relu") == 1);
  CHECK(count(graph, "quantized::linear(") == 1);
  CHECK(count(graph, "aten::quantize_per_tensor") == 1);
  CHECK(count(graph, "aten::dequantize") == 1);
  CHECK(count(graph, "aten::conv2d") == 0);
  CHECK(count(graph, "aten::linear") == 0);
  const auto& entry = result.report.at("quantize_int8");
  CHECK(entry.labels.at("engine") == pare::available_quantized_engines().front());  // the best one by default
  CHECK(entry.layers[0].name == "conv1");
  CHECK(entry.layers[0].labels.at("relu") == "fused");
  CHECK(entry.metrics.at("output_sqnr_db") > 15.0);
  // The caller's module is untouched and still float.
  CHECK(count(graph_of(t.model), "quantized::") == 0);
}

TEST_CASE("skipped layers stay float and are listed") {
  const auto& t = trained();
  auto result = quantize(t.model, pare::QuantizeInt8Options(t.calibration).skip({"fc2"}));
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "aten::linear") == 1);
  CHECK(count(graph, "quantized::linear_relu") == 1);
  const auto& layers = result.report.at("quantize_int8").layers;
  const auto fc2 = std::find_if(layers.begin(), layers.end(), [](auto& l) { return l.name == "fc2"; });
  REQUIRE(fc2 != layers.end());
  CHECK(fc2->labels.at("status") == "float");
  CHECK(fc2->labels.at("reason") == "skipped by option");
  CHECK(ex::accuracy(result.module, t.test) > t.float_accuracy - 2.0);
  CHECK_THROWS_WITH(quantize(t.model, pare::QuantizeInt8Options(t.calibration).skip({"*"})),
                    Catch::Contains("no Linear/Conv1d/Conv2d layer can be quantized"));
}

TEST_CASE("export records the engine, shrinks the file and reloads identically") {
  const auto& t = trained();
  const std::string fp32 = "test_quantize_fp32.pt", int8 = "test_quantize_int8.pt";
  const pare::InputBatches sample = {{t.test.images.slice(0, 0, 16)}};
  pare::Pipeline().add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(fp32).freeze(true))).run(t.model);
  auto result = pare::Pipeline()
                    .add(pare::QuantizeInt8(pare::QuantizeInt8Options(t.calibration).never_slower(false)))
                    .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(int8).freeze(true).verify_with(sample)))
                    .run(t.model);
  const auto info = pare::read_quantization_info(int8);
  REQUIRE(info.has_value());
  CHECK(info->engine == pare::available_quantized_engines().front());
  CHECK(info->mode == "static");
  CHECK_FALSE(pare::read_quantization_info(fp32).has_value());
  CHECK(pare::engine_mismatch_warning(*info).empty());
  const double ratio = result.report.at("export_torchscript").metrics.at("file_bytes") /
                       pare::Pipeline().add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(fp32))).run(t.model).report.at("export_torchscript")
                           .metrics.at("file_bytes");
  CHECK(ratio < 0.35);  // the CNN is small: constants and code weigh more than in the bench's model
  auto loaded = pare::load_quantized(int8);
  CHECK(torch::equal(loaded.forward(sample[0]).toTensor(), result.module.forward(sample[0]).toTensor()));
  std::remove(fp32.c_str());
  std::remove(int8.c_str());
}

TEST_CASE("a different running engine is reported") {
  const auto engines = pare::available_quantized_engines();
  if (skip_without_two(engines)) return;
  const auto before = pare::current_quantized_engine();
  pare::QuantizationInfo info{engines[0], "static", "{}"};
  pare::set_quantized_engine(engines[1]);
  const auto warning = pare::engine_mismatch_warning(info);
  pare::set_quantized_engine(before);
  CHECK_THAT(warning, Catch::Contains(engines[0]) && Catch::Contains(engines[1]));
  CHECK_THROWS_WITH(pare::set_quantized_engine("tpu"), Catch::Contains("available"));
}

TEST_CASE("bad calibration data is reported with the layer or batch") {
  const auto& t = trained();
  CHECK_THROWS_WITH(pare::QuantizeInt8(pare::QuantizeInt8Options(pare::InputBatches{})), Catch::Contains("no calibration batches"));
  CHECK_THROWS_WITH(quantize(t.model, pare::QuantizeInt8Options(pare::CalibrationData::once([] {
                      return std::optional<std::vector<torch::jit::IValue>>();
                    }))),
                    Catch::Contains("yielded no batches"));
  auto with_nan = t.calibration;
  with_nan[1] = {t.calibration[1][0].toTensor().clone()};
  with_nan[1][0].toTensor()[3][0][5][5] = NAN;
  CHECK_THROWS_WITH(quantize(t.model, pare::QuantizeInt8Options(with_nan)),
                    Catch::Contains("batch 1") && Catch::Contains("input of conv1") && Catch::Contains("NaN"));
  auto wrong_shape = t.calibration;
  wrong_shape[2] = {torch::randn({8, 3, 28, 28})};
  CHECK_THROWS_WITH(quantize(t.model, pare::QuantizeInt8Options(wrong_shape)),
                    Catch::Contains("calibration batch 2 failed in the float model"));
}

TEST_CASE("progress is reported per calibration batch, from a list or a reader") {
  const auto& t = trained();
  std::vector<std::pair<int64_t, int64_t>> calls;
  quantize(t.model, pare::QuantizeInt8Options(t.calibration).progress([&](int64_t done, int64_t total) {
    calls.emplace_back(done, total);
  }));
  const std::vector<std::pair<int64_t, int64_t>> expected = {{1, 3}, {2, 3}, {3, 3}};
  CHECK(calls == expected);
  size_t next = 0;
  calls.clear();
  auto result = quantize(t.model, pare::QuantizeInt8Options(pare::CalibrationData::once([&]() -> std::optional<std::vector<torch::jit::IValue>> {
                                        if (next == t.calibration.size()) return std::nullopt;
                                        return t.calibration[next++];
                                      }))
                                      .progress([&](int64_t done, int64_t total) { calls.emplace_back(done, total); }));
  CHECK(calls.size() == 3);
  CHECK(calls.back().second == -1);
  CHECK(result.report.at("quantize_int8").labels.at("sqnr_batch") == "held-out (last batch)");
}

TEST_CASE("Conv1d and a residual add stay int8") {
  torch::manual_seed(3);
  torch::jit::Module net("__torch__.ResidualNet");
  net.register_module("conv", linear_module(1, 4, "Conv1d"));
  net.register_module("fc1", linear_module(64, 32));
  net.register_module("fc2", linear_module(32, 32));
  net.define(R"(
def forward(self, x):
  h = torch.relu(self.fc1.forward(torch.flatten(self.conv.forward(x), 1)))
  return torch.relu(self.fc2.forward(h) + h)
)");
  pare::InputBatches batches;
  for (int i = 0; i < 3; ++i) batches.push_back({torch::randn({32, 1, 16})});
  auto result = quantize(net, pare::QuantizeInt8Options(batches));
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::conv1d(") == 1);
  CHECK(count(graph, "quantized::add_relu") == 1);
  CHECK(count(graph, "aten::dequantize") == 1);
  const auto x = torch::randn({32, 1, 16});
  const auto reference = net.forward({x}).toTensor(), approx = result.module.forward({x}).toTensor();
  CHECK(pare::sqnr_db(reference.data_ptr<float>(), approx.contiguous().data_ptr<float>(), reference.numel()) > 20.0);
}

TEST_CASE("dynamic int8 quantizes Linear weights without calibration") {
  torch::manual_seed(4);
  torch::jit::Module mlp("__torch__.Mlp");
  mlp.register_module("fc1", linear_module(64, 128));
  mlp.register_module("fc2", linear_module(128, 128));
  mlp.register_module("fc3", linear_module(128, 10));
  mlp.define("def forward(self, x):\n  return self.fc3.forward(torch.relu(self.fc2.forward(torch.relu(self.fc1.forward(x)))))\n");
  for (bool per_channel : {true, false}) {
    auto result = pare::Pipeline()
                      .add(pare::QuantizeInt8Dynamic(pare::QuantizeInt8DynamicOptions().per_channel(per_channel).skip({"fc3"})))
                      .run(mlp);
    const auto graph = graph_of(result.module);
    CHECK(count(graph, "quantized::linear_dynamic") == 2);
    CHECK(count(graph, "aten::linear") == 1);
    const auto x = torch::randn({16, 64});
    const auto reference = mlp.forward({x}).toTensor(), approx = result.module.forward({x}).toTensor();
    CHECK(pare::sqnr_db(reference.data_ptr<float>(), approx.contiguous().data_ptr<float>(), reference.numel()) > 25.0);
    CHECK(result.extra_files.at(pare::kQuantizationExtraFile).find("\"dynamic\"") != std::string::npos);
  }
}

TEST_CASE("the quantized engine is switched only while a pass runs, then restored") {
  const auto engines = pare::available_quantized_engines();
  if (skip_without_two(engines)) return;
  const auto& t = trained();
  const auto before = pare::current_quantized_engine();
  const auto other = engines[0] == before ? engines[1] : engines[0];
  const pare::QuantizeInt8 pass(pare::QuantizeInt8Options(t.calibration).engine(other));
  CHECK(pare::current_quantized_engine() == before);  // before: constructing switched the process's engine
  const pare::QuantizeInt8Dynamic dynamic(pare::QuantizeInt8DynamicOptions().engine(other));
  CHECK(pare::current_quantized_engine() == before);
  const auto result = pare::Pipeline().add(pass).run(t.model);
  CHECK(result.report.at("quantize_int8").labels.at("engine") == other);
  CHECK(pare::current_quantized_engine() == before);  // restored after the run
  CHECK_THROWS_AS(pare::QuantizeInt8(pare::QuantizeInt8Options(t.calibration).engine("tpu")), pare::Error);
  auto failing = t.calibration;
  failing[1] = {torch::randn({8, 3, 28, 28})};
  CHECK_THROWS_AS(quantize(t.model, pare::QuantizeInt8Options(failing).engine(other)), pare::Error);
  CHECK(pare::current_quantized_engine() == before);  // restored when the run fails too
}

TEST_CASE("a model whose forward fails on the calibration data gives pare::Error with LibTorch's line") {
  torch::jit::Module picky("__torch__.Picky");
  picky.register_parameter("weight", torch::randn({10, 784}), false);
  picky.define("def forward(self, x):\n  return torch.linear(x.flatten(1), self.weight)\n");
  const pare::InputBatches wrong{{torch::randn({4, 1, 20, 20})}, {torch::randn({4, 1, 20, 20})}};
  // Before: pare::Error for the first forward, but the message held the whole TorchScript traceback.
  CHECK_THROWS_WITH(quantize(picky, pare::QuantizeInt8Options(wrong)),
                    Catch::Contains("QuantizeInt8: calibration batch 0 failed in the float model") &&
                        Catch::Contains("cannot be multiplied") && !Catch::Contains("Traceback"));
}
