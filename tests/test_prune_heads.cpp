// PruneChannels on a BERT-style encoder (tests/support/text_models.py): two
// inputs (ids, mask), attention heads removed whole across q/k/v and the
// output projection, FFN neurons removed; the pruned file agrees with a
// reference re-implementation of its shapes (tests/support/text_reference.py,
// stock PyTorch), torchvision ViT's nn.MultiheadAttention loses heads too
// (tests/support/vit_reference.py), and bad inputs give clear errors.

#include "support/testing.hpp"

#include <filesystem>

#include <unistd.h>

#include "pare/prune/prune_channels.hpp"

// Named, so that its helpers do not meet other test files' in a unity batch.
namespace prune_heads_testing {

const char* kSizes = " --vocab 100 --hidden 64 --layers 2 --heads 4 --ffn 128 --max-length 32";

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("pare_heads_" + std::to_string(getpid()) + "_" + name)).string();
}

torch::jit::Module scripted_encoder() {
  static const auto path = [] {
    const auto p = temp_path("encoder.pt");
    const std::string command =
        std::string(PARE_PYTHON) + " " + PARE_TESTS_DIR + "/support/text_models.py " + p + kSizes;
    REQUIRE(std::system(command.c_str()) == 0);
    return p;
  }();
  auto m = torch::jit::load(path);
  m.eval();
  return m;
}

std::vector<c10::IValue> example() {
  torch::manual_seed(3);
  return {torch::randint(0, 100, {1, 16}, torch::kLong), torch::ones({1, 16}, torch::kLong)};
}

// The pruned file, loaded by stock PyTorch, against the eager encoder built with its shapes: exit 0 when within 1e-4.
int reference_check(const torch::jit::Module& pruned) {
  const auto path = temp_path("pruned.pt");
  pruned.save(path);
  const std::string command =
      std::string(PARE_PYTHON) + " " + PARE_TESTS_DIR + "/support/text_reference.py " + path + kSizes;
  const int status = std::system(command.c_str());
  std::filesystem::remove(path);
  return status;
}

int64_t rows(const torch::jit::Module& m, const std::string& layer) {
  return m.attr("layers")
      .toModule()
      .attr(layer)
      .toModule()
      .attr("attention")
      .toModule()
      .attr("query")
      .toModule()
      .attr("weight")
      .toTensor()
      .size(0);
}

// tests/support/vit_reference.py with `verb` ("write" or "check") on `path`: its exit status.
int vit_reference(const std::string& verb, const std::string& path) {
  const std::string command =
      std::string(PARE_PYTHON) + " " + PARE_TESTS_DIR + "/support/vit_reference.py " + verb + " " + path;
  return std::system(command.c_str());
}

}  // namespace prune_heads_testing

namespace heads_testing = prune_heads_testing;

TEST_CASE("heads and FFN neurons of a two-input encoder are removed and match a reference") {
  const auto model = heads_testing::scripted_encoder();
  const auto pruned =
      pare::prune_channels(model, pare::PruneChannelsOptions(0.5).heads(0.5).example_inputs(heads_testing::example()));
  int attention = 0;
  for (const auto& group : pruned.stats.groups) {
    if (group.head_size > 0) {
      ++attention;
      CHECK(group.channels_before == 64);
      CHECK(group.channels_after == 32);
      CHECK(group.head_size == 16);
      CHECK(group.members.size() == 3);  // query, key, value
    }
    if (group.name.size() > 12 && group.name.substr(group.name.size() - 12) == "intermediate") {
      CHECK(group.channels_before == 128);
      CHECK(group.channels_after == 64);
    }
  }
  CHECK(attention == 2);
  // q, k and v keep the same heads, and the output projection the same columns.
  const auto& q = pruned.kept.at("layers.0.attention.query.weight").front().second;
  CHECK(torch::equal(q, pruned.kept.at("layers.0.attention.key.weight").front().second));
  CHECK(torch::equal(q, pruned.kept.at("layers.0.attention.value.weight").front().second));
  CHECK(torch::equal(q, pruned.kept.at("layers.0.attention.output.weight").front().second));
  CHECK(heads_testing::rows(pruned.module, "0") == 32);
  CHECK(
      pruned.module.attr("layers").toModule().attr("0").toModule().attr("attention").toModule().attr("heads").toInt() ==
      2);
  CHECK(model.attr("layers").toModule().attr("0").toModule().attr("attention").toModule().attr("heads").toInt() == 4);
  CHECK(heads_testing::reference_check(pruned.module) == 0);
}

TEST_CASE("global head ranking takes the weakest heads across layers") {
  auto model = heads_testing::scripted_encoder().clone();
  {
    torch::NoGradGuard no_grad;  // layer 1's heads 1-3 are weak
    auto attention = model.attr("layers").toModule().attr("1").toModule().attr("attention").toModule();
    for (const char* name : {"query", "key", "value"})
      attention.attr(name).toModule().attr("weight").toTensor().narrow(0, 16, 48).mul_(0.01);
  }
  const auto options = pare::PruneChannelsOptions(0.0).heads(0.375).example_inputs(heads_testing::example());
  const auto local = pare::prune_channels(model, options);
  CHECK(heads_testing::rows(local.module, "0") == 32);  // 0.375 of 4 rounds to 2 in every layer
  CHECK(heads_testing::rows(local.module, "1") == 32);
  const auto global = pare::prune_channels(model, pare::PruneChannelsOptions(options).heads_scope(pare::Scope::Global));
  CHECK(heads_testing::rows(global.module, "0") == 64);  // 3 of 8 heads, all from layer 1
  CHECK(heads_testing::rows(global.module, "1") == 16);
  CHECK(heads_testing::reference_check(global.module) == 0);
}

TEST_CASE("heads of torchvision's nn.MultiheadAttention are removed and match a reference") {
  const auto path = heads_testing::temp_path("vit.pt");
  REQUIRE(heads_testing::vit_reference("write", path) == 0);
  auto vit = torch::jit::load(path);
  vit.eval();
  torch::manual_seed(4);
  const auto options = pare::PruneChannelsOptions(0.5).heads(0.25).example_inputs({torch::randn({1, 3, 32, 32})});
  const auto pruned = pare::prune_channels(vit, options);
  int attention = 0;
  for (const auto& group : pruned.stats.groups) {
    if (group.head_size == 0) continue;
    ++attention;
    CHECK(group.blocked_by.empty());
    CHECK(group.head_size == 16);
    CHECK(group.channels_after == 48);  // 3 of 4 heads
  }
  CHECK(attention == 2);
  const auto written_out = pruned.module.attr("encoder")
                               .toModule()
                               .attr("layers")
                               .toModule()
                               .attr("encoder_layer_0")
                               .toModule()
                               .attr("self_attention")
                               .toModule();
  CHECK(written_out.attr("num_heads").toInt() == 3);
  CHECK(!written_out.hasattr("in_proj_weight"));
  CHECK(written_out.attr("query_weight").toTensor().size(0) == 48);
  pruned.module.save(path);
  CHECK(heads_testing::vit_reference("check", path) == 0);
  // Heads left alone: nothing is written out, the fused attention stays.
  const auto ffn_only = pare::prune_channels(vit, pare::PruneChannelsOptions(options).heads(0.0));
  for (const auto& group : ffn_only.stats.groups) CHECK(group.head_size == 0);
  std::filesystem::remove(path);
}

TEST_CASE("bad inputs for transformer pruning give pare::Error") {
  const auto model = heads_testing::scripted_encoder();
  const auto inputs = heads_testing::example();
  CHECK_THROWS_WITH(pare::prune_channels(model, pare::PruneChannelsOptions(0.5)),
                    Catch::Contains("forward takes 2 inputs; set example_inputs"));
  CHECK_THROWS_WITH(pare::prune_channels(model, pare::PruneChannelsOptions(0.5).example_inputs({inputs[0]})),
                    Catch::Contains("forward takes 2 inputs but example_inputs has 1"));
  CHECK_THROWS_WITH(pare::prune_channels(model, pare::PruneChannelsOptions(0.5).heads(1.5).example_inputs(inputs)),
                    Catch::Contains("heads 1.5") && Catch::Contains("outside [0, 1]"));
  CHECK_THROWS_WITH(
      pare::prune_channels(model, pare::PruneChannelsOptions(0.5).input_shape({1, 8}).example_inputs(inputs)),
      Catch::Contains("both input_shape and example_inputs"));
  CHECK_THROWS_WITH(pare::prune_channels(model, pare::PruneChannelsOptions(0.5).example_inputs(
                                                    {inputs[0], torch::ones({1, 16, 3}, torch::kLong)})),
                    Catch::Contains("does not run on inputs of shape 1x16, 1x16x3"));
}
