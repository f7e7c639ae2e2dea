#include "support/testing.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/freeze_module.h>

#include "fashion_mnist.hpp"
#include "pare/distill/distill.hpp"
#include "pare/convert/export.hpp"
#include "pare/prune/prune_channels.hpp"
#include "pare/quantize/quantize.hpp"

#ifndef PARE_PYTHON
#define PARE_PYTHON "/usr/bin/python3"
#endif

namespace fs = std::filesystem;

namespace {

// torchvision models scripted by tests/support/channel_models.py, written once per run.
const fs::path& model_dir() {
  static const fs::path dir = [] {
    const auto path = fs::temp_directory_path() / ("pare_channel_models_" + std::to_string(::getpid()));
    const std::string command = std::string(PARE_PYTHON) + " " + PARE_TESTS_DIR + "/support/channel_models.py " + path.string();
    if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
    return path;
  }();
  return dir;
}

torch::jit::Module load(const std::string& name) { return torch::jit::load((model_dir() / (name + ".pt")).string()); }

torch::Tensor forward(torch::jit::Module& m, const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  return m.forward({x}).toTensor();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

torch::Tensor param(const torch::jit::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters())
    if (p.name == name) return p.value;
  for (const auto& b : m.named_buffers())
    if (b.name == name) return b.value;
  throw std::runtime_error("no parameter " + name);
}

const pare::ChannelGroupReport* group_with(const pare::ChannelPruneResult& stats, const std::string& member) {
  for (const auto& g : stats.groups)
    for (const auto& m : g.members)
      if (m == member) return &g;
  return nullptr;
}

// Zeroes every 4th output channel (1, 5, 9, ...) of each prunable group: the
// producing weights and biases and the batch norm that follows each conv
// (resnet naming: convN -> bnN, downsample.0 -> downsample.1).
void kill_channels(torch::jit::Module& m, const pare::ChannelPruneResult& stats) {
  torch::NoGradGuard no_grad;
  auto zero = [&](const std::string& name, const torch::Tensor& index) {
    for (const auto& p : m.named_parameters())
      if (p.name == name) p.value.index_fill_(0, index, 0.0);
  };
  for (const auto& group : stats.groups) {
    if (!group.blocked_by.empty()) continue;
    const auto index = torch::arange(1, group.channels_before, 4);
    for (const auto& conv : group.members) {
      std::string bn = conv;
      if (bn.size() >= 12 && bn.compare(bn.size() - 12, 12, "downsample.0") == 0) bn.back() = '1';
      const auto at = bn.rfind("conv");
      if (at != std::string::npos) bn.replace(at, 4, "bn");
      for (const auto& name : {conv + ".weight", conv + ".bias", bn + ".weight", bn + ".bias"}) zero(name, index);
    }
  }
}

pare::PrunedChannels prune(const torch::jit::Module& m, double amount, std::vector<int64_t> shape = {1, 3, 64, 64}) {
  return pare::prune_channels(m, pare::PruneChannelsOptions(amount).input_shape(std::move(shape)));
}

}  // namespace

TEST_CASE("removing exactly dead channels leaves resnet18's outputs unchanged") {
  auto model = load("resnet18");
  kill_channels(model, prune(model, 0.0).stats);
  const auto pruned = prune(model, 0.25);
  const auto x = torch::randn({2, 3, 64, 64});
  auto out = pruned.module;
  CHECK(max_abs_diff(forward(model, x), forward(out, x)) <= 1e-5);
  CHECK(pruned.stats.macs_after < pruned.stats.macs_before);
  const auto* stem = group_with(pruned.stats, "conv1");
  REQUIRE(stem != nullptr);  // the stem and every layer1 block's conv2 feed the residual adds
  CHECK(group_with(pruned.stats, "layer1.1.conv2") == stem);
  CHECK(stem->channels_after == 48);
  CHECK(param(out, "layer1.0.bn2.running_var").size(0) == 48);
  CHECK(param(out, "layer2.0.conv1.weight").size(1) == 48);
}

TEST_CASE("dead channels before flatten -> linear are removed exactly") {
  auto model = pare::examples::make_fashion_cnn({8, 16, 32}, 3);
  {
    torch::NoGradGuard no_grad;
    const auto dead = torch::tensor({0, 5, 9, 13}, torch::kLong);
    for (const auto& name : {"conv2.weight", "conv2.bias"}) param(model, name).index_fill_(0, dead, 0.0);
  }
  const auto pruned = pare::prune_channels(model, pare::PruneChannelsOptions(0.25).include({"conv2.*"}).input_shape({1, 1, 28, 28}));
  auto out = pruned.module;
  CHECK(param(out, "conv2.weight").size(0) == 12);
  CHECK(param(out, "fc1.weight").size(1) == 12 * 7 * 7);  // each channel owns its 7x7 block of columns
  CHECK(param(out, "conv1.weight").size(0) == 8);         // not selected
  const auto x = torch::randn({4, 1, 28, 28});
  CHECK(max_abs_diff(forward(model, x), forward(out, x)) <= 1e-5);
}

TEST_CASE("amount 0 changes nothing") {
  auto model = load("mobilenet_v2");
  const auto pruned = prune(model, 0.0);
  for (const auto& g : pruned.stats.groups) CHECK(g.channels_after == g.channels_before);
  CHECK(pruned.stats.params_after == pruned.stats.params_before);
  CHECK(pruned.stats.macs_after == pruned.stats.macs_before);
  auto out = pruned.module;
  const auto x = torch::randn({1, 3, 64, 64});
  CHECK(max_abs_diff(forward(model, x), forward(out, x)) == 0.0);
}

TEST_CASE("torchvision models shrink, run, and their exports reload") {
  for (const std::string name : {"resnet18", "mobilenet_v2", "squeezenet1_1", "densenet121"}) {
    INFO(name);
    const auto model = load(name);
    const auto path = (model_dir() / (name + "_small.pt")).string();
    const auto result = pare::Pipeline()
                            .add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).input_shape({1, 3, 64, 64})))
                            .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path)))
                            .run(model);
    const auto& entry = result.report.at("prune_channels");
    CHECK(entry.metrics.at("macs_after") < 0.6 * entry.metrics.at("macs_before"));
    CHECK(entry.metrics.at("params_after") < entry.metrics.at("params_before"));
    CHECK(fs::file_size(path) < fs::file_size(model_dir() / (name + ".pt")));
    auto reloaded = torch::jit::load(path);
    const auto out = forward(reloaded, torch::randn({2, 3, 64, 64}));
    CHECK(out.sizes() == torch::IntArrayRef({2, 10}));
    CHECK(torch::isfinite(out).all().item<bool>());
    bool classifier_blocked = false;  // the output layer keeps its 10 classes
    for (const auto& row : entry.layers)
      if (row.labels.count("blocked_by") && row.labels.at("blocked_by").find("model output") != std::string::npos)
        classifier_blocked = row.channels_after == 10;
    CHECK(classifier_blocked);
  }
}

// The first 2-D convolution weight among a module's graph constants.
torch::Tensor first_conv_weight(const torch::jit::Module& module) {
  for (const auto* node : module.get_method("forward").graph()->nodes())
    if (node->kind() == c10::aten::conv2d) return torch::jit::toIValue(node->input(1))->toTensor();
  throw std::runtime_error("no aten::conv2d in the graph");
}

TEST_CASE("a channels-last export stores NHWC weights, matches the plain module, and keeps the plain order where a view needs it") {
  auto export_channels_last = [](const std::string& name, const std::vector<int64_t>& shape, bool prune) {
    const auto path = (model_dir() / (name + "_nhwc.pt")).string();
    const std::vector<std::vector<torch::jit::IValue>> inputs{{torch::randn(shape)}};
    pare::Pipeline pipeline;
    if (prune) pipeline.add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).input_shape(shape)));
    auto result = pipeline
                      .add(pare::ExportTorchScript(
                          pare::ExportTorchScriptOptions(path).freeze(true).channels_last(true).verify_with(inputs)))
                      .run(load(name));
    return std::make_pair(result.report.at("export_torchscript"), torch::jit::load(path));
  };
  auto [entry, reloaded] = export_channels_last("resnet18", {2, 3, 64, 64}, true);
  CHECK(entry.labels.at("channels_last") == "true");
  CHECK(entry.metrics.at("channels_last_weights") == 20);  // resnet18's 17 3x3/7x7 convs and 3 downsamples
  CHECK(entry.metrics.at("max_abs_diff") <= 1e-5);  // the file against the plain module
  CHECK(first_conv_weight(reloaded).is_contiguous(at::MemoryFormat::ChannelsLast));
  CHECK_FALSE(first_conv_weight(reloaded).is_contiguous());

  // all_blocked flattens a conv's output with view(-1, C*H*W): in NHWC order that view fails.
  auto [kept, plain] = export_channels_last("all_blocked", {2, 3, 8, 8}, false);
  CHECK_THAT(kept.labels.at("channels_last"), Catch::StartsWith("false: the converted module failed") && Catch::Contains("view"));
  CHECK(first_conv_weight(plain).is_contiguous());
  CHECK(forward(plain, torch::randn({1, 3, 8, 8})).sizes() == torch::IntArrayRef({1, 10}));
}

TEST_CASE("an op with unknown channel mapping keeps its groups whole and is named") {
  auto model = load("channel_shuffle");
  const auto pruned = prune(model, 0.5, {1, 3, 16, 16});
  const auto* shuffled = group_with(pruned.stats, "conv1");
  REQUIRE(shuffled != nullptr);
  CHECK(shuffled->channels_after == 8);
  CHECK(shuffled->blocked_by.find("aten::view") != std::string::npos);
  CHECK(group_with(pruned.stats, "conv2")->channels_after == 8);
  CHECK(group_with(pruned.stats, "conv3")->channels_after == 8);
  CHECK_THROWS_WITH(prune(load("all_blocked"), 0.5, {1, 3, 8, 8}), Catch::Contains("aten::view") && Catch::Contains("model output"));
  CHECK_THROWS_WITH(prune(torch::jit::freeze(load("channel_shuffle")), 0.5, {1, 3, 16, 16}), Catch::Contains("before freezing"));
}

TEST_CASE("scope, norm, min_channels, round_to and selection") {
  const auto model = load("resnet18");
  auto options = [](double amount) { return pare::PruneChannelsOptions(amount).input_shape({1, 3, 32, 32}); };
  const auto rounded = pare::prune_channels(model, options(0.3).round_to(8).norm(pare::Norm::L2));
  for (const auto& g : rounded.stats.groups)
    if (g.blocked_by.empty()) CHECK(g.channels_after % 8 == 0);
  const auto floor = pare::prune_channels(model, options(0.99).scope(pare::Scope::Global).min_channels(4));
  int64_t before = 0, after = 0;
  for (const auto& g : floor.stats.groups) {
    CHECK(g.channels_after >= 4);
    before += g.blocked_by.empty() ? g.channels_before : 0;
    after += g.blocked_by.empty() ? g.channels_after : 0;
  }
  CHECK(after < before / 10);
  const auto only_layer4 = pare::prune_channels(model, options(0.5).include({"layer4.*"}).exclude({"layer4.1.*"}));
  CHECK(group_with(only_layer4.stats, "layer4.0.conv1")->channels_after == 256);
  CHECK(group_with(only_layer4.stats, "layer4.1.conv1")->channels_after == 512);
  CHECK(group_with(only_layer4.stats, "layer1.0.conv1")->channels_after == 64);
  CHECK_THROWS_AS(pare::PruneChannels(pare::PruneChannelsOptions(1.5)), pare::Error);
  CHECK_THROWS_AS(pare::PruneChannels(pare::PruneChannelsOptions(0.5).min_channels(0)), pare::Error);
  CHECK_THROWS_AS(pare::PruneChannels(pare::PruneChannelsOptions(0.5).round_to(0)), pare::Error);
  CHECK_THROWS_WITH(pare::prune_channels(model, options(0.5).include({"nothing*"})), Catch::Contains("candidates"));
  CHECK_THROWS_WITH(pare::prune_channels(model, options(0.5).input_shape({1, 5, 32, 32})), Catch::Contains("input_shape"));
}

TEST_CASE("channel pruning feeds Distill and QuantizeInt8 in one pipeline") {
  const auto data = pare::examples::load_fashion_mnist(true, 512);
  auto teacher = pare::examples::make_fashion_cnn({16, 32, 64}, 1);
  std::vector<pare::Batch> batches;
  pare::InputBatches calibration;
  for (int64_t i = 0; i < data.size(); i += 64) {
    const auto b = data.slice(i, i + 64);
    batches.emplace_back(b.images, b.labels);
    calibration.push_back({b.images});
  }
  const auto result = pare::Pipeline()
                          .add(pare::L1Prune(pare::L1PruneOptions(0.5)))
                          .add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).input_shape({1, 1, 28, 28})))
                          .add(pare::Distill(pare::DistillOptions(teacher, batches).epochs(1)))
                          .add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration).never_slower(false)))
                          .run(teacher);
  CHECK(result.report.at("prune_channels").metrics.at("macs_after") < 0.5 * result.report.at("prune_channels").metrics.at("macs_before"));
  CHECK(result.masks.at("conv2.weight").sizes() == torch::IntArrayRef({16, 8, 3, 3}));
  auto out = result.module;
  CHECK(forward(out, data.images.slice(0, 0, 8)).sizes() == torch::IntArrayRef({8, 10}));
}
