#include "support/testing.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "pare/prune/prune.hpp"
#include "pare/quantize/quantize.hpp"
#include "pare/convert/trace.hpp"

namespace nn = torch::nn;

namespace {

// A custom module with submodules: a Sequential with BatchNorm (buffers), Dropout,
// and a flatten written the way C++ code often does: view({x.size(0), -1}).
struct NetImpl : nn::Module {
  nn::Sequential features{nn::Conv2d(nn::Conv2dOptions(1, 4, 3).padding(1)),
                          nn::BatchNorm2d(4),
                          nn::ReLU(),
                          nn::MaxPool2d(2),
                          nn::Conv2d(nn::Conv2dOptions(4, 8, 3).padding(1).bias(false)),
                          nn::ReLU(),
                          nn::MaxPool2d(2)};
  nn::Dropout dropout{0.3};
  nn::Linear classifier{32, 10};

  NetImpl() {
    register_module("features", features);
    register_module("dropout", dropout);
    register_module("classifier", classifier);
  }
  torch::Tensor forward(const torch::Tensor& x) {
    auto h = features->forward(x);
    return classifier(dropout(h.view({h.size(0), -1})));
  }
};
TORCH_MODULE(Net);

// Moves BatchNorm's running statistics away from their initial values.
Net trained_net() {
  torch::manual_seed(1);
  Net net;
  net->train();
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 3; ++i) net->forward(torch::randn({6, 1, 8, 8}));
  net->eval();
  return net;
}

// Two inputs, two outputs.
struct TwoHeadsImpl : nn::Module {
  nn::Linear left{6, 3}, right{4, 3};
  TwoHeadsImpl() {
    register_module("left", left);
    register_module("right", right);
  }
  std::tuple<torch::Tensor, torch::Tensor> forward(torch::Tensor a, torch::Tensor b) {
    const auto sum = left(a) + right(b);
    return {sum.relu(), sum.sigmoid()};
  }
};
TORCH_MODULE(TwoHeads);

// Picks a branch from the data: a trace can only freeze one.
struct BranchyImpl : nn::Module {
  nn::Linear fc{5, 5};
  BranchyImpl() { register_module("fc", fc); }
  torch::Tensor forward(torch::Tensor x) {
    return x.sum().item<double>() > 0 ? fc(x).relu() : fc(x).sigmoid();
  }
};
TORCH_MODULE(Branchy);

// Reads a size that is not the batch size out of the input.
struct HalfBatchImpl : nn::Module {
  nn::Linear fc{8, 2};
  HalfBatchImpl() { register_module("fc", fc); }
  torch::Tensor forward(torch::Tensor x) { return fc(x.reshape({x.size(0) / 2, -1})); }
};
TORCH_MODULE(HalfBatch);

// Holds a layer it never registered: the tracer cannot read its weights by name.
struct HiddenLayerImpl : nn::Module {
  nn::Linear fc{3, 3};
  torch::Tensor forward(torch::Tensor x) { return fc(x); }
};
TORCH_MODULE(HiddenLayer);

// Takes a tuple of tensors.
struct PairSumImpl : nn::Module {
  nn::Linear fc{4, 2};
  PairSumImpl() { register_module("fc", fc); }
  torch::Tensor forward(std::tuple<torch::Tensor, torch::Tensor> pair) {
    return fc(std::get<0>(pair) + std::get<1>(pair));
  }
};
TORCH_MODULE(PairSum);

std::vector<torch::Tensor> tensors(const torch::jit::IValue& v) {
  if (v.isTensor()) return {v.toTensor()};
  std::vector<torch::Tensor> out;
  for (const auto& item : v.toTupleRef().elements()) out.push_back(item.toTensor());
  return out;
}

double max_difference(const torch::jit::IValue& a, const torch::jit::IValue& b) {
  const auto x = tensors(a), y = tensors(b);
  REQUIRE(x.size() == y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    REQUIRE(x[i].sizes() == y[i].sizes());
    worst = std::max(worst, (x[i] - y[i]).abs().max().item<double>());
  }
  return worst;
}

std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const pare::Error& e) {
    return e.what();
  }
  return "(no pare::Error)";
}

std::filesystem::path scratch_dir() {
  const auto dir = std::filesystem::temp_directory_path() / ("pare_trace_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("traced modules equal the torch::nn model at two batch sizes") {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  SECTION("torch::nn::Sequential") {
    nn::Sequential model(nn::Linear(6, 12), nn::ReLU(), nn::Dropout(0.5), nn::Linear(nn::LinearOptions(12, 3).bias(false)));
    model->eval();  // trace's default mode: Dropout off
    auto traced = pare::trace(model, {torch::randn({4, 6})});
    for (int64_t batch : {1, 9}) {
      const auto x = torch::randn({batch, 6});
      CHECK(max_difference(traced.forward({x}), model->forward(x)) <= 1e-6);
    }
  }
  SECTION("a ModuleHolder layer") {
    nn::Conv2d conv(nn::Conv2dOptions(3, 5, 3).stride(2));
    auto traced = pare::trace(conv, {torch::randn({2, 3, 9, 9})});
    for (int64_t batch : {1, 7}) {
      const auto x = torch::randn({batch, 3, 9, 9});
      CHECK(max_difference(traced.forward({x}), conv(x)) <= 1e-6);
    }
  }
  SECTION("a Linear on 3-d inputs (matmul and add_ in the C++ frontend)") {
    nn::Linear linear(6, 4);
    auto traced = pare::trace(linear, {torch::randn({2, 5, 6})});
    for (int64_t batch : {1, 3}) {
      const auto x = torch::randn({batch, 5, 6});
      CHECK(max_difference(traced.forward({x}), linear(x)) <= 1e-6);
    }
  }
  SECTION("a tuple input") {
    PairSum model;
    const auto pair = [](int64_t batch) {
      return std::make_tuple(torch::randn({batch, 4}), torch::randn({batch, 4}));
    };
    auto traced = pare::trace(model, {pair(3)});
    for (int64_t batch : {1, 6}) {
      const auto x = pair(batch);
      CHECK(max_difference(traced.forward({x}), model(x)) <= 1e-6);
    }
  }
  SECTION("a custom module with submodules, BatchNorm, Dropout and view({x.size(0), -1})") {
    auto net = trained_net();
    auto traced = pare::trace(net, {torch::randn({4, 1, 8, 8})});
    for (int64_t batch : {1, 4, 13}) {
      const auto x = torch::randn({batch, 1, 8, 8});
      CHECK(max_difference(traced.forward({x}), net(x)) <= 1e-6);
    }
  }
  SECTION("several inputs and outputs, through a std::shared_ptr") {
    auto model = std::make_shared<TwoHeadsImpl>();
    auto traced = pare::trace(model, {torch::randn({3, 6}), torch::randn({3, 4})});
    for (int64_t batch : {2, 5}) {
      const auto a = torch::randn({batch, 6}), b = torch::randn({batch, 4});
      const auto [relu, sigmoid] = model->forward(a, b);
      CHECK(max_difference(traced.forward({a, b}), c10::ivalue::Tuple::create({relu, sigmoid})) <= 1e-6);
    }
  }
}

TEST_CASE("the traced module keeps parameters and buffers by name and reads them with GetAttr") {
  auto net = trained_net();
  auto traced = pare::trace(net, {torch::randn({2, 1, 8, 8})});
  const auto params = net->named_parameters();
  const auto traced_params = traced.named_parameters();
  CHECK(traced_params.size() == params.size());
  for (const auto& p : traced_params) {
    REQUIRE(params.contains(p.name));
    CHECK(p.value.is_same(params[p.name]));  // shared with the model, as torch.jit.trace does
  }
  const auto buffers = net->named_buffers();
  CHECK(traced.named_buffers().size() == buffers.size());
  for (const auto& b : traced.named_buffers()) CHECK(buffers.contains(b.name));
  CHECK(traced.attr("features").toModule().attr("1").toModule().type()->name()->qualifiedName() ==
        "__torch__.torch.nn.modules.batchnorm.BatchNorm2d");

  const auto graph = traced.get_method("forward").graph();
  int reads = 0, tensor_constants = 0;
  for (const auto* node : graph->nodes()) {
    reads += node->kind() == c10::prim::GetAttr;
    if (node->kind() == c10::prim::Constant && node->output()->type()->isSubtypeOf(*c10::TensorType::get()))
      ++tensor_constants;
  }
  CHECK(reads >= int(params.size()));
  CHECK(tensor_constants == 0);
  CHECK_FALSE(net->is_training());  // the model's mode is restored
}

TEST_CASE("layers trace to the operators Python scripts them to, so int8 quantization finds them all") {
  auto net = trained_net();
  auto traced = pare::trace(net, {torch::randn({4, 1, 8, 8})});
  std::map<std::string, int> kinds;
  const auto graph = traced.get_method("forward").graph();
  for (const auto* node : graph->nodes()) ++kinds[node->kind().toQualString()];
  INFO(graph->toString());
  CHECK(kinds["aten::conv2d"] == 2);
  CHECK(kinds["aten::linear"] == 1);
  CHECK(kinds["aten::_convolution"] + kinds["aten::addmm"] + kinds["aten::matmul"] + kinds["aten::view"] == 0);

  const auto calibration = pare::InputBatches{{torch::randn({16, 1, 8, 8})}};
  const auto result =  // never_slower off: whether int8 wins on this tiny model depends on the machine
      pare::Pipeline().add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration).never_slower(false))).run(traced);
  int int8_layers = 0;
  for (const auto& layer : result.report.at("quantize_int8").layers) int8_layers += layer.labels.at("status") == "int8";
  CHECK(int8_layers == 3);
  const auto x = torch::randn({6, 1, 8, 8});
  torch::NoGradGuard no_grad;
  const auto error = (const_cast<torch::jit::Module&>(result.module).forward({x}).toTensor() - net(x)).abs().max();
  CHECK(error.item<double>() < 0.1 * net(x).abs().max().item<double>());
}

TEST_CASE("training mode traces batch statistics and leaves the model's buffers as they were") {
  auto net = trained_net();
  net->train();
  const auto running_mean = net->features[1]->as<nn::BatchNorm2d>()->running_mean.clone();
  auto traced = pare::trace(net, {torch::randn({4, 1, 8, 8})}, pare::TraceOptions().training(true));
  CHECK(net->is_training());
  CHECK(torch::equal(net->features[1]->as<nn::BatchNorm2d>()->running_mean, running_mean));
  const auto eval_traced = pare::trace(net, {torch::randn({4, 1, 8, 8})});
  const auto x = torch::randn({5, 1, 8, 8});
  torch::NoGradGuard no_grad;
  // Batch statistics differ from the running ones, and Dropout is live: the two graphs differ.
  CHECK(max_difference(traced.forward({x}), const_cast<torch::jit::Module&>(eval_traced).forward({x})) > 1e-3);
}

TEST_CASE("data-dependent control flow is reported, not frozen") {
  Branchy model;
  const auto message = error_of([&] { pare::trace(model, {torch::rand({3, 5}) + 0.1}); });
  INFO(message);
  CHECK(message.find("different operations") != std::string::npos);
  CHECK(message.find("aten::relu") != std::string::npos);
  CHECK(message.find("control flow") != std::string::npos);
}

TEST_CASE("sizes other than the batch size are reported; the batch size is made dynamic unless disabled") {
  HalfBatch model;
  const auto check = pare::TraceOptions().check_inputs({torch::randn({6, 4})});
  const auto message = error_of([&] { pare::trace(model, {torch::randn({4, 4})}, check); });
  INFO(message);
  CHECK(message.find("aten::reshape") != std::string::npos);
  CHECK(message.find("is 2 on the example inputs (batch 4)") != std::string::npos);

  auto net = trained_net();
  const auto fixed = error_of([&] { pare::trace(net, {torch::randn({4, 1, 8, 8})}, pare::TraceOptions().dynamic_batch(false)); });
  INFO(fixed);
  CHECK(fixed.find("bakes the batch size in") != std::string::npos);
}

TEST_CASE("trace validates its inputs") {
  auto net = trained_net();
  CHECK(error_of([&] { pare::trace(net, {}); }).find("no example inputs") != std::string::npos);
  CHECK(error_of([&] { pare::trace(net, {torch::randn({2, 1, 8, 8}), torch::randn({2, 1, 8, 8})}); })
            .find("takes 1 argument(s) but 2") != std::string::npos);
  CHECK(error_of([&] { pare::trace(net, {int64_t(3)}); }).find("must be tensors") != std::string::npos);
  CHECK(error_of([&] { pare::trace(net, {torch::randn({2, 1, 8, 8})}, pare::TraceOptions().tolerance(-1)); })
            .find("tolerance") != std::string::npos);
  CHECK(error_of([&] {
          pare::trace(net, {torch::randn({2, 1, 8, 8})},
                      pare::TraceOptions().check_inputs({torch::randn({3, 1, 8, 8}), torch::randn({3, 1, 8, 8})}));
        }).find("2 check inputs for 1 example inputs") != std::string::npos);
  HiddenLayer hidden;
  CHECK(error_of([&] { pare::trace(hidden, {torch::randn({2, 3})}); }).find("no registered parameter") !=
        std::string::npos);
  Net empty(nullptr);
  CHECK(error_of([&] { pare::trace(empty, {torch::randn({2, 1, 8, 8})}); }).find("empty") != std::string::npos);
}

#ifdef PARE_PYTHON
// The equivalent torch.nn model in Python, loaded with the traced weights: same
// outputs, and L1Prune with an include glob prunes the same weights in both.
TEST_CASE("stock Python torch loads the traced file; L1Prune sees it as the scripted Python model") {
  const auto dir = scratch_dir();
  auto net = trained_net();
  auto traced = pare::trace(net, {torch::randn({4, 1, 8, 8})});
  traced.save((dir / "traced.pt").string());
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({5, 1, 8, 8});
  const auto bytes = torch::pickle_save(c10::ivalue::Tuple::create({x, net(x)}));
  std::ofstream(dir / "io.pt", std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  std::ofstream(dir / "check.py") << R"(import sys, torch, torch.nn as nn
d = sys.argv[1]
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2))
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(32, 10)
    def forward(self, x):
        x = self.features(x)
        return self.classifier(self.dropout(x.view(x.size(0), -1)))
traced = torch.jit.load(d + "/traced.pt")
x, expected = torch.load(d + "/io.pt")
assert (traced(x) - expected).abs().max().item() <= 1e-6, "traced output differs in Python"
assert traced(x[:2]).shape == (2, 10), "the batch size is not dynamic"
net = Net().eval()
net.load_state_dict(traced.state_dict())
assert (net(x) - expected).abs().max().item() <= 1e-6, "the Python model with the traced weights differs"
torch.jit.script(net).save(d + "/scripted.pt")
print("python ok")
)";
  const auto command = std::string(PARE_PYTHON) + " " + (dir / "check.py").string() + " " + dir.string() + " 2>&1";
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  const int status = ::pclose(pipe);
  INFO(output);
  REQUIRE(status == 0);
  REQUIRE(output.find("python ok") != std::string::npos);

  const auto scripted = torch::jit::load((dir / "scripted.pt").string());
  const auto options = pare::L1PruneOptions(0.5).include({"features.*"});
  const auto ours = pare::Pipeline().add(pare::L1Prune(options)).run(traced);
  const auto theirs = pare::Pipeline().add(pare::L1Prune(options)).run(scripted);
  REQUIRE(ours.masks.size() == 2);
  REQUIRE(ours.masks.size() == theirs.masks.size());
  for (const auto& [name, mask] : ours.masks) {
    INFO(name);
    REQUIRE(theirs.masks.count(name));
    CHECK(torch::equal(mask, theirs.masks.at(name)));
  }
  CHECK(ours.masks.count("features.0.weight"));
  remove_tree(dir.string());
}
#endif
