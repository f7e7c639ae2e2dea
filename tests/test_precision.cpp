#include "support/cuda_testing.hpp"

#include <filesystem>

#include "fashion_mnist.hpp"
#include "pare/convert/export.hpp"
#include "pare/convert/precision.hpp"

namespace {

namespace ex = pare::examples;

torch::jit::Module precision_test_cnn() {
  static const auto model = [] {
    auto m = ex::make_fashion_cnn({8, 16, 32}, 11);
    ex::train(m, ex::load_fashion_mnist(true, 2000), 1);
    m.eval();
    return m;
  }();
  return model.clone();
}

const torch::Tensor& test_images() {
  static const auto images = ex::load_fashion_mnist(false, 256).images;
  return images;
}

torch::Tensor weight(const torch::jit::Module& m, const std::string& layer) {
  return m.attr(layer).toModule().attr("weight").toTensor();
}

torch::Tensor logits(torch::jit::Module& m, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return m.forward({x}).toTensor();
}

double relative_error(const torch::Tensor& out, const torch::Tensor& ref) {
  return ((out.to(torch::kDouble) - ref.to(torch::kDouble)).norm() / ref.to(torch::kDouble).norm()).item<double>();
}

double top1_agreement(const torch::Tensor& a, const torch::Tensor& b) {
  return a.argmax(1).eq(b.argmax(1)).to(torch::kDouble).mean().item<double>();
}

}  // namespace

TEST_CASE("bf16 conversion keeps the chosen layer in fp32 and tracks the fp32 model") {
  auto model = precision_test_cnn();
  const auto reference = logits(model, test_images());
  const auto result = pare::Pipeline()
                          .add(pare::ConvertPrecision(pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"fc2"})))
                          .run(model);
  auto converted = result.module;
  CHECK(weight(converted, "conv1").scalar_type() == torch::kBFloat16);
  CHECK(weight(converted, "fc1").scalar_type() == torch::kBFloat16);
  CHECK(weight(converted, "fc2").scalar_type() == torch::kFloat);
  CHECK(weight(model, "conv1").scalar_type() == torch::kFloat);  // the pipeline's input is untouched

  const auto out = logits(converted, test_images());  // fp32 images in, as before
  CHECK(out.scalar_type() == torch::kFloat);          // the kept last layer returns fp32 logits
  CHECK(relative_error(out, reference) < 3e-2);       // bf16 keeps 8 bits of mantissa
  CHECK(top1_agreement(out, reference) >= 0.97);

  const auto& entry = result.report.at("convert_precision");
  CHECK(entry.labels.at("dtype") == "bf16");
  CHECK(entry.labels.at("kept_fp32") == "fc2");
  CHECK(entry.metrics.at("layers_converted") == 3);
  CHECK(entry.metrics.at("casts_inserted") == 4);
  const double fc2_bytes = 4.0 * (32 * 10 + 10);
  CHECK(entry.metrics.at("bytes_after") == Approx((entry.metrics.at("bytes_before") - fc2_bytes) / 2 + fc2_bytes));

  // Channels-last storage changes the layout of the convolution weights, not the function.
  auto nhwc = pare::Pipeline()
                  .add(pare::ConvertPrecision(
                      pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"fc2"}).channels_last(true)))
                  .run(model)
                  .module;
  CHECK(weight(nhwc, "conv2").is_contiguous(at::MemoryFormat::ChannelsLast));
  CHECK(!weight(nhwc, "conv2").is_contiguous());
  CHECK(relative_error(logits(nhwc, test_images()), out) < 1e-2);
}

TEST_CASE("a converted model exports, freezes and reloads without pare") {
  const auto dir = std::filesystem::temp_directory_path() / "pare_precision_export";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "m_bf16.pt").string();
  auto result = pare::Pipeline()
                    .add(pare::ConvertPrecision(pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"fc*"})))
                    .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(true)
                                                           .verify_with({{test_images().slice(0, 0, 8)}})))
                    .run(precision_test_cnn());
  auto reloaded = torch::jit::load(path);
  const auto x = test_images().slice(0, 0, 32);
  CHECK(torch::equal(logits(reloaded, x), logits(result.module, x)));
  remove_tree(dir.string());
}

TEST_CASE("ConvertPrecision rejects what it cannot do, saying what is expected") {
  CHECK_THROWS_WITH(pare::ConvertPrecision(pare::ConvertPrecisionOptions(torch::kFloat)),
                    Catch::Contains("expected torch::kHalf (fp16) or torch::kBFloat16"));
  auto model = precision_test_cnn();
  CHECK_THROWS_WITH(pare::convert_precision(model, pare::ConvertPrecisionOptions(torch::kHalf).keep_fp32({"head"})),
                    Catch::Contains("'head' matches no submodule"));
  auto frozen = torch::jit::freeze(precision_test_cnn());
  CHECK_THROWS_WITH(pare::convert_precision(frozen, pare::ConvertPrecisionOptions(torch::kHalf)),
                    Catch::Contains("no parameters"));
}

TEST_CASE("layers sharing TorchScript code must agree on their dtype") {
  // Two instances of one module type share one forward graph, hence one call site inside it.
  torch::jit::Module inner("__torch__.SharedBlock");
  inner.register_parameter("weight", torch::randn({4, 4}), false);
  inner.define("def forward(self, x):\n  return torch.matmul(x, self.weight)\n");
  torch::jit::Module pair("__torch__.Pair");
  pair.register_module("a", inner);
  pair.register_module("b", inner.deepcopy());
  pair.define("def forward(self, x):\n  return self.b.forward(self.a.forward(x))\n");
  torch::jit::Module outer("__torch__.Outer");
  outer.register_module("p", pair);
  outer.register_module("q", pair.deepcopy());
  outer.define("def forward(self, x):\n  return self.q.forward(self.p.forward(x))\n");

  auto mixed = outer.clone();
  CHECK_THROWS_WITH(pare::convert_precision(mixed, pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"p.a"})),
                    Catch::Contains("shared TorchScript code"));
  auto both = outer.clone();
  const auto summary =
      pare::convert_precision(both, pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"p.a", "q.a"}));
  CHECK(summary.kept.size() == 2);
  CHECK(summary.converted.size() == 2);
  const auto x = torch::randn({3, 4});
  CHECK(logits(both, x).scalar_type() == torch::kBFloat16);  // the last layer, q.b, is bf16
  CHECK(relative_error(logits(both, x), logits(outer, x)) < 3e-2);
}

TEST_CASE("fp16 on the GPU matches fp32 on the GPU [cuda]") {
  PARE_REQUIRE_CUDA();
  auto model = precision_test_cnn();
  model.to(torch::kCUDA);
  const auto x = test_images().to(torch::kCUDA);
  const auto reference = logits(model, x);
  auto converted = pare::Pipeline()
                       .add(pare::ConvertPrecision(pare::ConvertPrecisionOptions(torch::kHalf).keep_fp32({"fc2"})))
                       .run(model)
                       .module;
  CHECK(weight(converted, "conv1").device().is_cuda());
  CHECK(weight(converted, "conv1").scalar_type() == torch::kHalf);
  const auto out = logits(converted, x);
  CHECK(out.device().is_cuda());
  CHECK(out.scalar_type() == torch::kFloat);
  CHECK(relative_error(out.cpu(), reference.cpu()) < 5e-3);  // fp16 keeps 11 bits of mantissa
  CHECK(top1_agreement(out.cpu(), reference.cpu()) >= 0.98);
}
