#include "support/testing.hpp"

#include "support/fashion_testing.hpp"
#include "pare/distill/distill.hpp"
#include "pare/prune/prune.hpp"

namespace ex = pare::examples;

namespace {

// The formula written out with softmax and log, for comparison.
torch::Tensor reference_loss(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& y, double T,
                             double alpha) {
  const auto p = torch::softmax(t / T, 1);
  const auto kl = (p * (p.log() - torch::log_softmax(s / T, 1))).sum() / double(s.size(0));
  const auto ce = -torch::log_softmax(s, 1).gather(1, y.unsqueeze(1)).mean();
  return alpha * T * T * kl + (1 - alpha) * ce;
}




// A small CNN trained for one epoch on 2048 images: the teacher.
const torch::jit::Module& teacher() {
  static const auto model = [] {
    auto m = ex::make_fashion_cnn({8, 16, 32}, 1);
    ex::train(m, train_subset(), 2);
    return m;
  }();
  return model;
}

pare::DistillOptions options(pare::TrainingData data = train_subset().batches(64)) {
  return pare::DistillOptions(teacher(), std::move(data)).epochs(2).lr(1e-3);
}

bool is_error(const std::function<void()>& body, pare::Error::Kind kind = pare::Error::Kind::InvalidArgument) {
  try {
    body();
  } catch (const pare::Error& e) {
    return e.kind() == kind;
  }
  return false;
}

}  // namespace

TEST_CASE("distillation_loss matches the formula written out, in float64") {
  torch::manual_seed(0);
  const auto s = torch::randn({16, 10}, torch::kDouble) * 3, t = torch::randn({16, 10}, torch::kDouble) * 3;
  const auto y = torch::randint(0, 10, {16}, torch::kLong);
  for (const double T : {1.0, 2.0, 4.0, 10.0})
    for (const double alpha : {0.0, 0.3, 0.7, 1.0}) {
      const auto loss = pare::distillation_loss(s, t, y, pare::DistillLossOptions().temperature(T).alpha(alpha));
      CHECK(loss.item<double>() == Approx(reference_loss(s, t, y, T, alpha).item<double>()).epsilon(1e-12));
    }
}

TEST_CASE("distillation_loss gradients reach the student only and match the analytic gradient") {
  torch::manual_seed(1);
  const double T = 3.0, alpha = 0.6;
  auto s = torch::randn({8, 5}, torch::kDouble).requires_grad_(true);
  auto t = torch::randn({8, 5}, torch::kDouble).requires_grad_(true);
  const auto y = torch::randint(0, 5, {8}, torch::kLong);
  pare::distillation_loss(s, t, y, pare::DistillLossOptions().temperature(T).alpha(alpha)).backward();
  // d/ds: alpha * T * (softmax(s/T) - softmax(t/T)) / N + (1 - alpha) * (softmax(s) - onehot(y)) / N
  torch::NoGradGuard no_grad;
  const auto onehot = torch::one_hot(y, 5).to(torch::kDouble);
  const auto expected = (alpha * T * (torch::softmax(s / T, 1) - torch::softmax(t / T, 1)) +
                         (1 - alpha) * (torch::softmax(s, 1) - onehot)) / 8.0;
  CHECK(torch::allclose(s.grad(), expected, 1e-10, 1e-12));
  CHECK_FALSE(t.grad().defined());
}

TEST_CASE("distillation_loss is stable for huge logits and zero for identical ones at alpha 1") {
  const auto s = torch::tensor({{1e4f, -1e4f, 0.0f}, {5e3f, 5e3f, -5e3f}});
  const auto t = torch::tensor({{-1e4f, 1e4f, 0.0f}, {5e3f, -5e3f, 5e3f}});
  const auto y = torch::tensor({0L, 2L});
  CHECK(std::isfinite(pare::distillation_loss(s, t, y).item<float>()));
  const auto same = pare::distillation_loss(s, s.clone(), {}, pare::DistillLossOptions().alpha(1.0));
  CHECK(same.item<float>() == Approx(0.0).margin(1e-6));
}

TEST_CASE("distillation_loss rejects bad options and inputs with pare::Error") {
  const auto s = torch::randn({4, 3}), t = torch::randn({4, 3});
  const auto y = torch::tensor({0L, 1L, 2L, 0L});
  using O = pare::DistillLossOptions;
  CHECK(is_error([&] { pare::distillation_loss(s, t, y, O().temperature(0)); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, y, O().temperature(NAN)); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, y, O().alpha(1.5)); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, y, O().alpha(-0.1)); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t); }));  // alpha 0.7 needs targets
  CHECK(is_error([&] { pare::distillation_loss(s, torch::randn({4, 4}), y); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t.to(torch::kDouble), y); }));
  CHECK(is_error([&] { pare::distillation_loss(s.to(torch::kLong), t.to(torch::kLong), y); }));
  CHECK(is_error([&] { pare::distillation_loss(s.flatten(), t.flatten(), y); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, y.to(torch::kFloat)); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, torch::tensor({0L, 1L, 3L, 0L})); }));
  CHECK(is_error([&] { pare::distillation_loss(s, t, y.slice(0, 0, 3)); }));
  CHECK_NOTHROW(pare::distillation_loss(s, t, {}, O().alpha(1.0)));
}

TEST_CASE("Distill after L1Prune recovers accuracy and keeps every pruned weight at zero") {
  const auto eval = test_subset().batches(500);
  auto pruned =
      pare::Pipeline().add(pare::L1Prune(pare::L1PruneOptions(0.85).scope(pare::Scope::Global))).run(teacher());
  int64_t progress_calls = 0, last_steps = 0;
  const auto result = pare::Pipeline()
                          .add(pare::L1Prune(pare::L1PruneOptions(0.85).scope(pare::Scope::Global)))
                          .add(pare::Distill(options().evaluate_on(eval).progress([&](int64_t, int64_t steps, double) {
                            ++progress_calls;
                            last_steps = steps;
                          })))
                          .run(teacher());
  const auto& entry = result.report.at("distill");
  REQUIRE(entry.series.size() == 2);
  CHECK(entry.series_name == "loss");
  CHECK(entry.metrics.at("steps") == 64);
  CHECK(progress_calls == 64);
  CHECK(last_steps == 64);
  CHECK(entry.metrics.at("accuracy_before") == Approx(ex::accuracy(pruned.module, test_subset())));
  CHECK(entry.metrics.at("accuracy_after") > entry.metrics.at("accuracy_before"));
  CHECK(entry.total_sparsity() == Approx(result.report.at("l1_prune").total_sparsity()));

  REQUIRE(result.masks.size() == 4);
  for (const auto& p : result.module.named_parameters()) {
    CHECK_FALSE(p.value.requires_grad());
    const auto mask = result.masks.find(p.name);
    if (mask == result.masks.end()) continue;
    CHECK(p.value.masked_select(mask->second.logical_not()).count_nonzero().item<int64_t>() == 0);
    const auto before = pruned.module.attr(p.name.substr(0, p.name.find('.'))).toModule().attr("weight").toTensor();
    CHECK_FALSE(torch::equal(p.value, before));  // the kept weights did train
  }
}

TEST_CASE("distill works outside a pipeline with streamed data and a custom optimizer") {
  auto student = ex::make_fashion_cnn({4, 8, 16}, 2);
  const auto batches = train_subset().slice(0, 512).batches(64);
  std::vector<int64_t> epochs_seen;
  int64_t optimizers_made = 0;
  const pare::TrainingData streamed(
      [&](int64_t epoch) -> pare::TrainingData::Reader {
        epochs_seen.push_back(epoch);
        return [&, next = size_t(0)]() mutable -> std::optional<pare::Batch> {
          if (next == batches.size()) return std::nullopt;
          return batches[next++];
        };
      },
      int64_t(batches.size()));
  std::vector<int64_t> steps_announced;
  auto opts = pare::DistillOptions(teacher(), streamed)
                  .optimizer_factory([&](const std::vector<torch::Tensor>& params) {
                    ++optimizers_made;
                    return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0.05).momentum(0.9));
                  })
                  .epochs(3)
                  .alpha(1.0)
                  .progress([&](int64_t, int64_t steps, double) { steps_announced.push_back(steps); });
  const auto summary = pare::distill(student, opts);
  CHECK(steps_announced.front() == 24);
  CHECK(epochs_seen == std::vector<int64_t>{0, 1, 2});
  CHECK(optimizers_made == 1);
  CHECK(summary.steps == 24);
  REQUIRE(summary.epoch_loss.size() == 3);
  CHECK(summary.epoch_loss.back() < summary.epoch_loss.front());

  size_t once = 0;  // a one-shot reader: epoch 2 finds it empty, an error that says so
  const auto dry = pare::DistillOptions(teacher(), pare::TrainingData::once([&]() -> std::optional<pare::Batch> {
                                          if (once == batches.size()) return std::nullopt;
                                          return batches[once++];
                                        })).epochs(2);
  CHECK_THROWS_WITH(pare::distill(student, dry), Catch::Contains("no batches in epoch 2"));
}

TEST_CASE("distill stops with a runtime pare::Error when the loss turns NaN, weights untouched") {
  auto student = ex::make_fashion_cnn({4, 8, 16}, 3);
  const auto before = student.attr("fc1").toModule().attr("weight").toTensor().clone();
  auto bad = train_subset().slice(0, 64);
  auto images = bad.images.clone();
  images[0][0][0][0] = NAN;
  const std::vector<pare::Batch> nan_batch{{images, bad.labels}};
  CHECK(is_error([&] { pare::distill(student, options(nan_batch)); }, pare::Error::Kind::Runtime));
  CHECK(torch::equal(student.attr("fc1").toModule().attr("weight").toTensor(), before));
  for (const auto& p : student.parameters()) CHECK_FALSE(p.requires_grad());
}

TEST_CASE("apply_masks zeroes pruned weights and validates names and shapes") {
  auto model = ex::make_fashion_cnn({4, 8, 16}, 4);
  auto mask = torch::rand({16, 8 * 7 * 7}) > 0.5;
  pare::apply_masks(model, {{"fc1.weight", mask}});
  const auto w = model.attr("fc1").toModule().attr("weight").toTensor();
  CHECK(w.masked_select(mask.logical_not()).count_nonzero().item<int64_t>() == 0);
  CHECK(w.masked_select(mask).count_nonzero().item<int64_t>() == mask.sum().item<int64_t>());
  CHECK(is_error([&] { pare::apply_masks(model, {{"fc9.weight", mask}}); }));
  CHECK(is_error([&] { pare::apply_masks(model, {{"fc1.weight", mask.t()}}); }));
  CHECK(is_error([&] { pare::apply_masks(model, {{"fc1.weight", mask.to(torch::kFloat)}}); }));
}

TEST_CASE("Distill validates its options") {
  using O = pare::DistillOptions;
  const auto data = train_subset().slice(0, 64).batches(64);
  CHECK_THROWS_WITH(pare::Distill(O(torch::jit::Module(), data)), Catch::Contains("teacher has no forward"));
  CHECK_THROWS_WITH(pare::Distill(O(teacher(), std::vector<pare::Batch>{})), Catch::Contains("no training batches"));
  CHECK(is_error([&] { pare::Distill(O(teacher(), data).epochs(0)); }));
  CHECK(is_error([&] { pare::Distill(O(teacher(), data).lr(-1)); }));
  CHECK(is_error([&] { pare::Distill(O(teacher(), data).momentum(1.0)); }));
  CHECK(is_error([&] { pare::Distill(O(teacher(), data).temperature(0)); }));
  auto self = teacher().clone();
  CHECK(is_error([&] { pare::distill(self, O(self, data)); }));
}

TEST_CASE("a batch the model rejects is a pare::Error naming the model and the batch shape") {
  auto student = ex::make_fashion_cnn({4, 8, 16}, 5);
  const std::vector<pare::Batch> wrong{{torch::randn({4, 3, 28, 28}), torch::zeros({4}, torch::kLong)}};
  // Before: LibTorch's c10::Error escaped distill() and the pipeline.
  CHECK_THROWS_WITH(pare::distill(student, options(wrong)),
                    Catch::Contains("Distill: the student failed on a batch of shape [4, 3, 28, 28]") &&
                        Catch::Contains("channels"));
  CHECK_THROWS_AS(pare::Pipeline().add(pare::Distill(options(wrong))).run(student), pare::Error);
  const std::vector<pare::Batch> flat{{torch::randn({4, 784}), torch::zeros({4}, torch::kLong)}};
  CHECK_THROWS_WITH(pare::top1_accuracy(student, flat), Catch::Contains("top1_accuracy: the model failed"));
  for (const auto& p : student.parameters()) CHECK_FALSE(p.requires_grad());
}

TEST_CASE("distill and top1_accuracy leave the caller's teacher and model in their own mode") {
  auto training_teacher = teacher().clone();
  training_teacher.train(true);  // a user's module straight from training
  auto student = ex::make_fashion_cnn({4, 8, 16}, 6);
  const auto data = train_subset().slice(0, 128).batches(64);
  pare::distill(student, pare::DistillOptions(training_teacher, data).epochs(1));
  for (const auto& m : training_teacher.modules()) CHECK(m.is_training());  // before: eval() for the run
  training_teacher.train(true);
  CHECK(pare::top1_accuracy(training_teacher, data) > 0);
  for (const auto& m : training_teacher.modules()) CHECK(m.is_training());
}
