// BatchNorm recalibration on a traced torch::nn model, against the C++
// frontend's own train-mode forward (momentum 1, averaged over the batches).
#include "support/testing.hpp"

#include "pare/convert/trace.hpp"
#include "pare/prune/recalibrate_batchnorm.hpp"

namespace {

torch::nn::Sequential bn_net() {
  torch::manual_seed(3);
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 4, 3)), torch::nn::BatchNorm2d(4),
                               torch::nn::ReLU(), torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 6, 3)),
                               torch::nn::BatchNorm2d(6));
}

std::vector<std::vector<c10::IValue>> random_batches(int count) {
  std::vector<std::vector<c10::IValue>> batches;
  for (int b = 0; b < count; ++b) batches.push_back({torch::randn({8, 1, 10, 10}) * (1 + b) + b});
  return batches;
}

}  // namespace

TEST_CASE("traced BatchNorm statistics become the average of train-mode batch statistics") {
  auto net = bn_net();
  net->eval();
  auto traced = pare::trace(*net, {torch::randn({2, 1, 10, 10})});
  const auto batches = random_batches(3);

  // The reference: the C++ frontend model itself, training with momentum 1, averaged by hand.
  auto reference = bn_net();
  for (size_t i : {1, 4}) reference[i]->as<torch::nn::BatchNorm2d>()->options.momentum(1.0);
  reference->train();
  std::vector<torch::Tensor> means(2), vars(2);
  torch::NoGradGuard no_grad;
  for (const auto& batch : batches) {
    reference->forward(batch[0].toTensor());
    for (size_t k = 0; k < 2; ++k) {
      auto* bn = reference[k == 0 ? 1 : 4]->as<torch::nn::BatchNorm2d>();
      means[k] = means[k].defined() ? means[k] + bn->running_mean : bn->running_mean.clone();
      vars[k] = vars[k].defined() ? vars[k] + bn->running_var : bn->running_var.clone();
    }
  }
  auto result = pare::Pipeline().add(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions(batches))).run(traced);
  const auto& entry = result.report.at("recalibrate_batchnorm");
  CHECK(entry.metrics.at("batchnorms") == 2);
  CHECK(entry.metrics.at("batchnorms_frozen") == 0);
  CHECK(entry.metrics.at("batches") == 3);
  const char* names[] = {"1", "4"};
  for (size_t k = 0; k < 2; ++k) {
    auto bn = result.module.attr(names[k]).toModule();
    CHECK(torch::allclose(bn.attr("running_mean").toTensor(), means[k] / 3, 1e-4, 1e-5));
    CHECK(torch::allclose(bn.attr("running_var").toTensor(), vars[k] / 3, 1e-4, 1e-5));
  }
  // The caller's module is untouched, and the result still runs in eval mode with the new statistics.
  CHECK(torch::allclose(traced.attr("1").toModule().attr("running_var").toTensor(), torch::ones({4})));
  const auto out = result.module.forward({batches[0][0]}).toTensor();
  CHECK(out.sizes() == std::vector<int64_t>({8, 6, 6, 6}));
}

TEST_CASE("RecalibrateBatchNorm: frozen statistics are counted, bad input is a clear error") {
  auto net = bn_net();
  net->eval();
  auto traced = pare::trace(*net, {torch::randn({2, 1, 10, 10})});
  auto frozen = torch::jit::freeze(traced);
  const auto result = pare::Pipeline()
                          .add(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions(random_batches(1))))
                          .run(frozen);
  CHECK(result.report.at("recalibrate_batchnorm").metrics.at("batchnorms") == 0);
  CHECK_THROWS_WITH(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions({})),
                    Catch::Contains("expected at least one batch"));
  CHECK_THROWS_WITH(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions(random_batches(1)).max_batches(-1)),
                    Catch::Contains("max_batches must be >= 0"));
  CHECK_THROWS_WITH(pare::Pipeline()
                        .add(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions({{torch::randn({2, 3, 10, 10})}})))
                        .run(traced),
                    Catch::Contains("batch 0 failed in the model"));
}
