#include "support/testing.hpp"

#include "support/fashion_testing.hpp"
#include "pare/distill/distill.hpp"

#include <torch/csrc/jit/passes/inliner.h>

// A named namespace: helpers such as teacher() also exist in test_distill.cpp,
// which may share this file's unity batch.
namespace distill_match_test {
namespace {

torch::jit::Module linear(int64_t in, int64_t out) {
  torch::nn::Linear layer(in, out);
  torch::jit::Module m("__torch__.torch.nn.modules.linear.Linear");
  m.register_parameter("weight", layer->weight.detach().clone(), false);
  m.register_parameter("bias", layer->bias.detach().clone(), false);
  m.define("def forward(self, x):\n  return torch.linear(x, self.weight, self.bias)\n");
  return m;
}

// A residual block whose forward reaches its Linear through a helper method.
torch::jit::Module block(int64_t width) {
  torch::jit::Module m("__torch__.pare_tests.Block");
  m.register_module("fc", linear(width, width));
  m.define(R"(
def transform(self, x):
  return torch.relu(self.fc.forward(x))

def forward(self, x):
  return x + self.transform(x)
)");
  return m;
}

// flatten -> embed (784 -> width) -> blocks.b0 .. b{depth-1} -> head (width -> 10).
torch::jit::Module residual_mlp(int64_t width, int64_t depth, uint64_t seed) {
  torch::manual_seed(seed);
  torch::jit::Module net("__torch__.pare_tests.ResidualMLP");
  net.register_module("embed", linear(28 * 28, width));
  torch::jit::Module blocks("__torch__.pare_tests.Blocks");
  std::string body = "def forward(self, x):\n  x = self.embed.forward(torch.flatten(x, 1))\n";
  for (int64_t i = 0; i < depth; ++i) {
    blocks.register_module("b" + std::to_string(i), block(width));
    body += "  x = self.blocks.b" + std::to_string(i) + ".forward(x)\n";
  }
  net.register_module("blocks", blocks);
  net.register_module("head", linear(width, 10));
  net.define(body + "  return self.head.forward(x)\n");
  return net;
}

const torch::jit::Module& teacher() {
  static const auto model = [] {
    auto m = residual_mlp(32, 4, 0);
    ex::train(m, train_subset(), 2);
    return m;
  }();
  return model;
}

// Mean squared distance between a student's and the teacher's outputs at two submodules, on test images.
double hidden_distance(const torch::jit::Module& student, const std::string& student_path,
                       const std::string& teacher_path) {
  torch::NoGradGuard no_grad;
  const std::vector<c10::IValue> images{test_subset().images.slice(0, 0, 500)};
  const auto s = pare::submodule_outputs(student, images, {student_path}).front();
  const auto t = pare::submodule_outputs(teacher(), images, {teacher_path}).front();
  return torch::mse_loss(s, t).item<double>();
}

pare::DistillOptions options() {
  return pare::DistillOptions(teacher(), train_subset().batches(64)).epochs(2).lr(2e-3);
}

}  // namespace

TEST_CASE("submodule_outputs returns what the submodules compute, and leaves the module as it was") {
  auto net = residual_mlp(16, 3, 1);
  const auto graph_before = graph_of(net);
  const auto methods_before = net.get_methods().size();
  const auto x = torch::randn({5, 1, 28, 28});
  auto embed = net.attr("embed").toModule(), blocks = net.attr("blocks").toModule();
  const auto e = embed.forward({torch::flatten(x, 1)}).toTensor();
  auto b0 = blocks.attr("b0").toModule(), b1 = blocks.attr("b1").toModule();
  const auto h0 = b0.forward({e}).toTensor();
  const auto fc1 = b1.attr("fc").toModule().forward({h0}).toTensor();
  const auto h1 = b1.forward({h0}).toTensor();

  const pare::SubmoduleOutputs outputs(net, {"blocks.b1.fc", "embed", "blocks.b1", "blocks.b0"});
  const auto [captured, output] = outputs.run({x});
  REQUIRE(captured.size() == 4);
  CHECK(torch::allclose(captured[0], fc1));
  CHECK(torch::allclose(captured[1], e));
  CHECK(torch::allclose(captured[2], h1));
  CHECK(torch::allclose(captured[3], h0));
  CHECK(torch::allclose(output.toTensor(), net.forward({x}).toTensor()));
  CHECK(graph_of(net) == graph_before);
  CHECK(net.get_methods().size() == methods_before);

  // Gradients flow to the module's own parameters.
  for (auto p : net.parameters()) p.set_requires_grad(true);
  pare::submodule_outputs(net, {x}, {"blocks.b0"}).front().sum().backward();
  CHECK(embed.attr("weight").toTensor().grad().defined());
  CHECK_FALSE(net.attr("head").toModule().attr("weight").toTensor().grad().defined());
}

TEST_CASE("submodule_outputs finds submodules whose calls a pass inlined into forward (PruneChannels heads does)") {
  auto net = residual_mlp(16, 3, 1);
  auto inlined = net.clone();
  torch::jit::Inline(*inlined.get_method("forward").graph());
  inlined = inlined.clone();  // a fresh method: the edited graph, no cached plan
  REQUIRE(count(graph_of(inlined), "prim::CallMethod") == 0);
  const auto x = torch::randn({5, 1, 28, 28});
  const std::vector<std::string> paths{"blocks.b1.fc", "embed", "blocks.b1", "blocks.b0"};
  const auto expected = pare::SubmoduleOutputs(net, paths).run({x}).first;
  const auto [captured, output] = pare::SubmoduleOutputs(inlined, paths).run({x});
  REQUIRE(captured.size() == paths.size());
  for (size_t i = 0; i < paths.size(); ++i) {
    INFO(paths[i]);
    CHECK(torch::allclose(captured[i], expected[i]));
  }
  CHECK(torch::allclose(output.toTensor(), net.forward({x}).toTensor()));
  CHECK_THROWS_WITH(pare::submodule_outputs(inlined, {x}, {"blocks.b3"}), Catch::Contains("no submodule"));
}

TEST_CASE(
    "submodule_outputs names what is wrong: a missing submodule (listing those that exist), no call, "
    "two calls, a call in a branch") {
  auto net = residual_mlp(8, 3, 2);
  const std::vector<c10::IValue> x{torch::randn({2, 1, 28, 28})};
  CHECK_THROWS_WITH(
      pare::submodule_outputs(net, x, {"blocks.b7"}),
      Catch::Contains("no submodule 'blocks.b7'") && Catch::Contains("'blocks' has the submodules [b0, b1, b2]"));
  CHECK_THROWS_WITH(pare::submodule_outputs(net, x, {"body"}),
                    Catch::Contains("the model has the submodules [embed, blocks, head]"));
  CHECK_THROWS_AS(pare::submodule_outputs(net, x, {"blocks..b1"}), pare::Error);
  CHECK_THROWS_AS(pare::submodule_outputs(net, x, {""}), pare::Error);

  torch::jit::Module odd("__torch__.pare_tests.Odd");
  odd.register_module("fc", linear(4, 4));
  odd.register_module("unused", linear(4, 4));
  odd.register_module("twice", linear(4, 4));
  odd.register_module("maybe", linear(4, 4));
  odd.define(R"(
def forward(self, x):
  x = self.twice.forward(self.twice.forward(self.fc.forward(x)))
  if bool(x.sum() > 0):
    x = self.maybe.forward(x)
  return x
)");
  const std::vector<c10::IValue> y{torch::randn({2, 4})};
  CHECK(pare::submodule_outputs(odd, y, {"fc"}).size() == 1);
  CHECK_THROWS_WITH(pare::submodule_outputs(odd, y, {"unused"}), Catch::Contains("never calls submodule 'unused'"));
  CHECK_THROWS_WITH(pare::submodule_outputs(odd, y, {"twice"}), Catch::Contains("2 times"));
  CHECK_THROWS_WITH(pare::submodule_outputs(odd, y, {"maybe"}), Catch::Contains("loop or branch"));
}

TEST_CASE("match_loss: MSE as torch computes it, cosine 0 for parallel and 2 for opposite outputs") {
  const auto s = torch::randn({3, 5, 8}), t = torch::randn({3, 5, 8});
  CHECK(pare::match_loss(s, t, pare::MatchLoss::MSE).item<double>() == Approx(torch::mse_loss(s, t).item<double>()));
  CHECK(pare::match_loss(s, s * 3, pare::MatchLoss::Cosine).item<double>() == Approx(0).margin(1e-6));
  CHECK(pare::match_loss(s, -s, pare::MatchLoss::Cosine).item<double>() == Approx(2).margin(1e-6));
  CHECK_THROWS_WITH(pare::match_loss(s, t.slice(2, 0, 4), pare::MatchLoss::MSE), Catch::Contains("expected one shape"));
  CHECK(pare::parse_match_loss("cosine") == pare::MatchLoss::Cosine);
  CHECK_THROWS_AS(pare::parse_match_loss("kl"), pare::Error);
}

TEST_CASE("DistillMatch::layers maps depths uniformly, last block to last block") {
  const auto pairs = pare::DistillMatch::layers("layers", 6, "student.layers", 3, pare::MatchLoss::Cosine, 0.5);
  REQUIRE(pairs.size() == 3);
  CHECK(pairs[0].teacher() == "layers.1");
  CHECK(pairs[1].teacher() == "layers.3");
  CHECK(pairs[2].teacher() == "layers.5");
  CHECK(pairs[2].student() == "student.layers.2");
  CHECK(pairs[1].loss() == pare::MatchLoss::Cosine);
  CHECK(pairs[1].weight() == 0.5);
  CHECK(pare::DistillMatch::layers("l", 4, "l", 4)[2].teacher() == "l.2");
  CHECK_THROWS_AS(pare::DistillMatch::layers("l", 2, "l", 3), pare::Error);
  const auto options =
      pare::DistillOptions(teacher(), train_subset().batches(64)).match({"head", {"blocks.b3", "blocks.b1"}});
  CHECK(options.match()[0].teacher() == "head");
  CHECK(options.match()[0].student() == "head");
  CHECK(options.match()[1].student() == "blocks.b1");
}

TEST_CASE("Distill with match pulls a shallower student's hidden states towards the teacher's") {
  const std::vector<pare::DistillMatch> pairs{{"blocks.b1", "blocks.b0"}, {"blocks.b3", "blocks.b1"}};
  auto logits_only = residual_mlp(32, 2, 3);
  auto matched = logits_only.clone();
  const double before = hidden_distance(matched, "blocks.b1", "blocks.b3");
  pare::distill(logits_only, options());
  const auto result = pare::Pipeline().add(pare::Distill(options().match(pairs))).run(matched);
  const auto& entry = result.report.at("distill");
  CHECK(entry.labels.at("match_1") == "blocks.b3 -> blocks.b1 (mse, 1.000000)");
  REQUIRE(entry.metrics.count("match_1_loss") == 1);

  const pare::DistillResult direct = [&] {
    auto student = residual_mlp(32, 2, 3);
    return pare::distill(student, options().match(pairs));
  }();
  REQUIRE(direct.match_loss.size() == 2);
  REQUIRE(direct.match_loss[1].size() == 2);
  CHECK(direct.match_loss[1][1] < direct.match_loss[1][0]);
  CHECK(entry.metrics.at("match_1_loss") == Approx(direct.match_loss[1][1]).epsilon(1e-4));

  const double after = hidden_distance(result.module, "blocks.b1", "blocks.b3");
  const double unmatched = hidden_distance(logits_only, "blocks.b1", "blocks.b3");
  INFO("hidden-state MSE to the teacher: before " << before << ", logits only " << unmatched << ", matched " << after);
  CHECK(after < 0.5 * before);
  CHECK(after < 0.5 * unmatched);
}

TEST_CASE("Distill's match is validated: names, weights, and widths that differ") {
  const auto data = train_subset().slice(0, 128).batches(64);
  using O = pare::DistillOptions;
  CHECK_THROWS_WITH(
      pare::Distill(O(teacher(), data).match({"blocks.b9"})),
      Catch::Contains("Distill: the teacher has no submodule 'blocks.b9'") && Catch::Contains("[b0, b1, b2, b3]"));
  CHECK_THROWS_WITH(pare::Distill(O(teacher(), data).match({pare::DistillMatch("head").weight(-1)})),
                    Catch::Contains("weight"));
  auto student = residual_mlp(32, 2, 4);
  CHECK_THROWS_WITH(pare::distill(student, O(teacher(), data).match({"blocks.b3"})),
                    Catch::Contains("Distill: the student has no submodule 'blocks.b3'"));
  auto narrow = residual_mlp(16, 2, 5);
  CHECK_THROWS_WITH(pare::distill(narrow, O(teacher(), data).match({{"blocks.b3", "blocks.b1"}})),
                    Catch::Contains("[64, 32] but the student's [64, 16]"));
  for (const auto& p : narrow.parameters()) CHECK_FALSE(p.requires_grad());
}

}  // namespace distill_match_test
