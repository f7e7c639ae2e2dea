// QuantizeInt8 on the blocks of the architectures people deploy, written as
// torchvision writes them: a ResNet basic block (in-place add and ReLU), a
// MobileNetV2 inverted residual (ReLU6 = hardtanh), a DenseNet layer (cat,
// standalone BatchNorm behind a shape check), a squeeze-excite gate (mul),
// the never-slower-than-float island timing and, on a transformer-style
// block, the per-Linear choice of static, dynamic or float int8. Small
// inputs: seconds in all.

#include "support/testing.hpp"

#include <map>
#include <string>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/constants.h>

#include "pare/quantize/quantize.hpp"

namespace {

double sqnr(const torch::Tensor& reference, const torch::Tensor& approx) {
  const auto a = reference.contiguous(), b = approx.contiguous();
  return pare::sqnr_db(a.data_ptr<float>(), b.data_ptr<float>(), a.numel());
}

// Conv weights and BatchNorm statistics as torch.nn would hold them after training.
void add_conv_bn(torch::jit::Module& m, const std::string& name, int64_t in, int64_t out, int64_t k) {
  m.register_parameter(name + "_w", torch::randn({out, in, k, k}) / std::sqrt(double(in * k * k)), false);
  m.register_parameter(name + "_g", 1 + 0.2 * torch::randn({out}), false);
  m.register_parameter(name + "_b", 0.2 * torch::randn({out}), false);
  m.register_buffer(name + "_m", 0.1 * torch::randn({out}));
  m.register_buffer(name + "_v", 0.5 + torch::rand({out}));
}

std::string conv_bn(const std::string& name, const std::string& x, const std::string& padding) {
  return "torch.batch_norm(torch.conv2d(" + x + ", self." + name + "_w, None, [1, 1], [" + padding + ", " + padding +
         "]), self." + name + "_g, self." + name + "_b, self." + name + "_m, self." + name +
         "_v, False, 0.1, 1e-5, False)";
}

pare::InputBatches batches(std::vector<int64_t> shape, int n = 4) {
  pare::InputBatches out;
  for (int i = 0; i < n; ++i) out.push_back({torch::randn(shape)});
  return out;
}

// LibTorch 2.x's onednn engine has quantized::conv2d_add(_relu), into which
// pare folds a residual add and the conv before it (fold_residual_adds); 1.13 has neither.
bool folds_conv_add(const pare::PassReport& entry) {
  return entry.labels.at("engine") == "onednn" &&
         c10::Dispatcher::singleton().findSchema({"quantized::conv2d_add_relu", ""}).has_value();
}

// A folded model runs only under the onednn engine: the process's engine for one test.
struct OnednnEngine {
  std::string before = pare::current_quantized_engine();
  OnednnEngine() { pare::set_quantized_engine("onednn"); }
  ~OnednnEngine() { pare::set_quantized_engine(before); }
};

pare::Result quantize(const torch::jit::Module& m, const pare::InputBatches& calibration, bool never_slower = false) {
  return pare::Pipeline()
      .add(pare::QuantizeInt8(
          pare::QuantizeInt8Options(calibration).engine("onednn").fold_residual_adds(true).never_slower(never_slower)))
      .run(m);
}

// torchvision's BasicBlock: conv-bn-relu_, conv-bn, `out += identity`, relu_.
torch::jit::Module basic_block() {
  torch::manual_seed(7);
  torch::jit::Module m("__torch__.BasicBlock");
  add_conv_bn(m, "c1", 8, 8, 3);
  add_conv_bn(m, "c2", 8, 8, 3);
  m.define("def forward(self, x):\n  identity = x\n  out = torch.relu_(" + conv_bn("c1", "x", "1") +
           ")\n  out = " + conv_bn("c2", "out", "1") + "\n  out += identity\n  return torch.relu_(out)\n");
  return m;
}

}  // namespace

TEST_CASE("a residual block keeps the signed conv output that the add needs") {
  const OnednnEngine onednn;
  auto block = basic_block();
  const auto calibration = batches({8, 8, 12, 12});
  auto result = quantize(block, calibration);
  const auto x = torch::randn({8, 8, 12, 12});
  // The conv before `out += identity` holds negative values: a range decided
  // after the in-place add and ReLU would clip them and fall to a few dB.
  CHECK(sqnr(block.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 25.0);
  const auto& entry = result.report.at("quantize_int8");
  REQUIRE(entry.layers.size() == 2);
  CHECK(entry.layers[0].labels.at("relu") == "fused");
  CHECK(entry.layers[1].metrics.at("zero_point") > 0);  // signed: feeds the add, not a ReLU
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::conv2d_relu") == 1);
  const bool folded = folds_conv_add(entry);  // the second conv and `+= identity; relu_` as one op
  CHECK(count(graph, "quantized::add_relu") == (folded ? 0 : 1));
  CHECK(count(graph, "quantized::conv2d_add_relu") == (folded ? 1 : 0));
  CHECK(entry.metrics.at("conv_add_fused") == (folded ? 1 : 0));
  CHECK(count(graph, "aten::quantize_per_tensor") == 1);
  CHECK(count(graph, "aten::dequantize") == 1);
  CHECK(entry.metrics.at("float_ops") == 0);
}

TEST_CASE("an inverted residual stays int8 through ReLU6 (hardtanh)") {
  const OnednnEngine onednn;
  torch::manual_seed(8);
  torch::jit::Module m("__torch__.InvertedResidual");
  add_conv_bn(m, "expand", 8, 16, 1);
  add_conv_bn(m, "project", 16, 8, 1);
  m.define("def forward(self, x):\n  h = torch.hardtanh_(" + conv_bn("expand", "x", "0") +
           ", 0.0, 6.0)\n  return x + " + conv_bn("project", "h", "0") + "\n");
  const auto calibration = batches({8, 8, 10, 10});
  auto result = quantize(m, calibration);
  const auto x = torch::randn({8, 8, 10, 10});
  CHECK(sqnr(m.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 25.0);
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "hardtanh") == 0);  // absorbed: the conv's output range is [0, 6] at most
  const bool folded = folds_conv_add(result.report.at("quantize_int8"));  // `x + project(h)`: x is read before
  CHECK(count(graph, "quantized::add(") == (folded ? 0 : 1));
  CHECK(count(graph, "quantized::conv2d_add(") == (folded ? 1 : 0));
  CHECK(count(graph, "aten::dequantize") == 1);
  CHECK(result.report.at("quantize_int8").layers[0].labels.at("activation") == "hardtanh");
}

TEST_CASE("an add whose other operand is the conv's own input is not folded") {
  const OnednnEngine onednn;
  // quantized::conv2d_add writes into the other operand while it reads the
  // conv's input: folding `x + conv(x)` would overwrite x mid-convolution.
  torch::manual_seed(9);
  torch::jit::Module m("__torch__.SelfResidual");
  add_conv_bn(m, "c", 8, 8, 3);
  m.define("def forward(self, x):\n  return x + " + conv_bn("c", "x", "1") + "\n");
  auto result = quantize(m, batches({8, 8, 10, 10}));
  const auto x = torch::randn({8, 8, 10, 10});
  CHECK(sqnr(m.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 25.0);
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::conv2d_add") == 0);
  CHECK(count(graph, "quantized::add(") == 1);
  CHECK(result.report.at("quantize_int8").metrics.at("conv_add_fused") == 0);
}

namespace {

// The scale a quantized op writes its output with (its second-to-last input, a constant).
double quantized_output_scale(const torch::jit::Module& m, const std::string& kind) {
  for (const auto* node : m.get_method("forward").graph()->nodes())
    if (node->kind().toQualString() == kind)
      return torch::jit::toIValue(node->input(node->inputs().size() - 2))->toDouble();
  FAIL("no " << kind << " in the graph");
  return 0;
}

}  // namespace

TEST_CASE("a dense layer stays int8 through cat, a standalone batch_norm and ReLUs behind shape checks") {
  torch::manual_seed(9);
  torch::jit::Module m("__torch__.DenseLayer");
  add_conv_bn(m, "stem", 3, 8, 3);
  add_conv_bn(m, "norm", 16, 16, 1);        // only its BatchNorm statistics are used
  add_conv_bn(m, "bottleneck", 16, 16, 1);  // folds into its conv past the shape check, as torchvision's norm2
  m.register_parameter("grow_w", torch::randn({8, 16, 3, 3}) / 12.0, false);
  m.define("def forward(self, x):\n  a = torch.relu(" + conv_bn("stem", "x", "1") +
           ")\n  features = [a]\n  features.append(torch.max_pool2d(a, 3, 1, 1))\n  c = torch.cat(features, 1)\n"
           "  assert c.dim() == 4\n"
           "  n = torch.relu(torch.batch_norm(c, self.norm_g, self.norm_b, self.norm_m, self.norm_v, False, 0.1, "
           "1e-5, False))\n"
           "  h = torch.conv2d(n, self.bottleneck_w, None, [1, 1], [0, 0])\n  assert h.dim() == 4\n"
           "  h = torch.relu_(torch.batch_norm(h, self.bottleneck_g, self.bottleneck_b, self.bottleneck_m, "
           "self.bottleneck_v, False, 0.1, 1e-5, False))\n"
           "  return torch.conv2d(h, self.grow_w, None, [1, 1], [1, 1])\n");
  const auto calibration = batches({4, 3, 12, 12});
  auto result = quantize(m, calibration);
  const auto x = torch::randn({4, 3, 12, 12});
  CHECK(sqnr(m.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 20.0);
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::cat(") == 1);
  CHECK(count(graph, "quantized::batch_norm_relu") == 1);
  CHECK(count(graph, "aten::batch_norm") == 0);
  // The ReLU after the folded BatchNorm fuses into the conv, though the shape check also reads the conv's output.
  CHECK(count(graph, "quantized::conv2d_relu") == 2);
  CHECK(count(graph, "aten::relu") == 0);
  CHECK(count(graph, "aten::quantize_per_tensor") == 1);
  CHECK(count(graph, "aten::dequantize") == 1);  // the shape checks read the int8 tensors
  // The cat's inputs (the stem, and its max-pooled copy) and output share one
  // scale, so the cat copies bytes instead of requantizing.
  const double stem_scale = result.report.at("quantize_int8").layers.at(0).metrics.at("scale");
  CHECK(quantized_output_scale(result.module, "quantized::cat") == Approx(stem_scale).epsilon(1e-9));
}

TEST_CASE("a squeeze-excite gate multiplies in int8; an op without int8 kernel is listed") {
  torch::manual_seed(10);
  torch::jit::Module m("__torch__.SqueezeExcite");
  add_conv_bn(m, "body", 8, 8, 3);
  add_conv_bn(m, "gate", 8, 8, 1);
  m.define("def forward(self, x):\n  h = torch.relu(" + conv_bn("body", "x", "1") + ")\n  s = torch.sigmoid(" +
           conv_bn("gate", "torch.adaptive_avg_pool2d(h, [1, 1])", "0") +
           ")\n  return torch.softmax(torch.flatten(h * s, 1), 1)\n");
  const auto calibration = batches({4, 8, 8, 8});
  auto result = quantize(m, calibration);
  const auto x = torch::randn({4, 8, 8, 8});
  CHECK(sqnr(m.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 20.0);
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::mul(") == 1);
  CHECK(count(graph, "aten::dequantize") == 1);
  const auto& entry = result.report.at("quantize_int8");
  CHECK(entry.metrics.at("float_ops") == 1);
  CHECK_THAT(entry.labels.at("float_ops"), Catch::Contains("aten::softmax"));
}

TEST_CASE("never slower: each island is timed, and the one kept is the faster") {
  const OnednnEngine onednn;
  auto block = basic_block();
  auto result = quantize(block, batches({2, 8, 12, 12}), /*never_slower=*/true);
  const auto& entry = result.report.at("quantize_int8");
  REQUIRE(entry.metrics.at("islands_timed") == 1);  // the whole block is one int8 island
  const bool kept_float = entry.metrics.at("islands_kept_float") == 1;
  // The file is timed against float unless the island already lost alone; int8 stays only if the file won.
  if (!kept_float) CHECK(entry.metrics.at("file_int8_ms_b2") < entry.metrics.at("file_fp32_ms_b2"));
  CHECK(entry.labels.at("never_slower").find(kept_float ? "stays float" : "faster") != std::string::npos);
  const auto graph = graph_of(result.module);
  CHECK(count(graph, "quantized::add_relu") + count(graph, "quantized::conv2d_add_relu") == (kept_float ? 0 : 1));
  CHECK(entry.metrics.at("layers_int8") == (kept_float ? 0 : 2));
  const auto x = torch::randn({2, 8, 12, 12});
  CHECK(sqnr(block.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 25.0);
}

// A transformer-style block: Linear+ReLU feeding a Linear (one island, read
// in two places outside it), a float attention-like matmul and softmax, and
// an output projection.
torch::jit::Module linear_block() {
  torch::manual_seed(3);
  torch::jit::Module m("__torch__.LinearBlock");
  const auto add_linear = [&](const std::string& name, int64_t in, int64_t out) {
    m.register_parameter(name + "_w", torch::randn({out, in}) / std::sqrt(double(in)), false);
    m.register_parameter(name + "_b", 0.1 * torch::randn({out}), false);
  };
  add_linear("up", 64, 128);
  add_linear("down", 128, 64);
  add_linear("proj", 128, 64);
  m.define(R"(def forward(self, x):
  h = torch.relu(torch.linear(x, self.up_w, self.up_b))
  g = torch.linear(h, self.down_w, self.down_b)
  s = torch.softmax(torch.matmul(g, g.transpose(-1, -2)), -1)
  return torch.linear(torch.matmul(s, torch.tanh(h)), self.proj_w, self.proj_b)
)");
  return m;
}

pare::Result quantize_linears(const torch::jit::Module& m, bool never_slower, bool try_dynamic) {
  return pare::Pipeline()
      .add(pare::QuantizeInt8(
          pare::QuantizeInt8Options(batches({4, 16, 64})).never_slower(never_slower).try_dynamic(try_dynamic)))
      .run(m);
}

// Every Linear's form, from the report; checks each has one of the three and a reason.
std::map<std::string, int64_t> linear_forms(const pare::PassReport& entry) {
  std::map<std::string, int64_t> forms;
  for (const auto& layer : entry.layers) {
    if (layer.labels.at("kind") != "Linear") continue;
    const auto& form = layer.labels.at("form");
    CHECK((form == "static" || form == "dynamic" || form == "float"));
    CHECK(!layer.labels.at("why").empty());
    ++forms[form];
  }
  return forms;
}

TEST_CASE("per-layer choice: each Linear gets static, dynamic or float int8 by measured speed, and says why") {
  auto block = linear_block();
  const auto x = torch::randn({4, 16, 64});
  for (const bool try_dynamic : {true, false}) {
    auto result = quantize_linears(block, true, try_dynamic);
    const auto& entry = result.report.at("quantize_int8");
    auto forms = linear_forms(entry);
    CHECK(forms["static"] + forms["dynamic"] + forms["float"] == 3);
    CHECK(entry.metrics.at("linears_dynamic") == double(forms["dynamic"]));
    const auto graph = graph_of(result.module);
    CHECK(count(graph, "quantized::linear_dynamic") == size_t(forms["dynamic"]));
    CHECK(count(graph, "quantized::linear(") + count(graph, "quantized::linear_relu(") == size_t(forms["static"]));
    for (const auto& layer : entry.layers) {  // the timings that decided it
      REQUIRE(layer.metrics.count("island_float_ms") == 1);
      CHECK(layer.metrics.count("island_dynamic_ms") == (try_dynamic ? 1U : 0U));
    }
    if (!try_dynamic) CHECK(forms["dynamic"] == 0);
    CHECK(sqnr(block.forward({x}).toTensor(), result.module.forward({x}).toTensor()) > 25.0);
  }
}

TEST_CASE("per-layer choice: without never_slower every Linear is static int8, not timed") {
  auto result = quantize_linears(linear_block(), false, true);
  const auto& entry = result.report.at("quantize_int8");
  auto forms = linear_forms(entry);
  CHECK(forms["static"] == 3);
  for (const auto& layer : entry.layers) CHECK(layer.labels.at("why") == "static int8: not timed");
  CHECK(count(graph_of(result.module), "aten::quantize_per_tensor") == 2);  // up → down stays int8 between them
}
