#include "pare/convert/trace.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/shape_analysis.h>

#include <map>
#include <sstream>

#include "core/ivalue_walk.hpp"
#include "convert/trace_graph.hpp"

namespace pare {
namespace detail {

void require_arity(size_t expected, size_t given) {
  require(expected == given, "trace: the model's forward takes " + std::to_string(expected) + " argument(s) but " +
                                 std::to_string(given) + " example input(s) were given; expected one per argument");
}

}  // namespace detail

namespace {

using torch::jit::IValue;

// torch.nn's module file for each layer type of the C++ frontend, so that the
// traced submodules carry the type names Python's scripted layers have
// ("__torch__.torch.nn.modules.conv.Conv2d"), which pare's passes key on.
std::string torch_nn_file(const std::string& layer) {
  static const std::map<std::string, std::string> prefixes = {
      {"Conv", "conv"}, {"BatchNorm", "batchnorm"}, {"InstanceNorm", "instancenorm"}, {"Dropout", "dropout"},
      {"MaxPool", "pooling"}, {"AvgPool", "pooling"}, {"AdaptiveAvgPool", "pooling"}, {"AdaptiveMaxPool", "pooling"},
      {"LPPool", "pooling"}, {"Sequential", "container"}, {"ModuleList", "container"}, {"ModuleDict", "container"},
      {"Flatten", "flatten"}, {"Unflatten", "flatten"}, {"Embedding", "sparse"}, {"LSTM", "rnn"}, {"GRU", "rnn"},
      {"RNN", "rnn"}, {"LayerNorm", "normalization"}, {"GroupNorm", "normalization"}, {"Linear", "linear"},
      {"Bilinear", "linear"}, {"Identity", "linear"}, {"Upsample", "upsampling"}, {"PixelShuffle", "pixelshuffle"}};
  for (const auto& [prefix, file] : prefixes)
    if (layer.rfind(prefix, 0) == 0) return file;
  return "activation";
}

// "torch::nn::Conv2dImpl" -> "__torch__.torch.nn.modules.conv.Conv2d";
// "(anonymous namespace)::NetImpl" -> "__torch__.anonymous_namespace.Net".
std::string script_type_name(const std::string& cpp_name) {
  std::string name = cpp_name;
  if (name.size() > 4 && name.compare(name.size() - 4, 4, "Impl") == 0) name.resize(name.size() - 4);
  const std::string frontend = "torch::nn::";
  if (name.rfind(frontend, 0) == 0 && name.find("::", frontend.size()) == std::string::npos) {
    const auto layer = name.substr(frontend.size());
    return "__torch__.torch.nn.modules." + torch_nn_file(layer) + "." + layer;
  }
  std::string out = "__torch__.";
  for (size_t i = 0; i < name.size(); ++i) {
    if (name.compare(i, 2, "::") == 0) { out += '.'; ++i; }
    else if (std::isalnum(static_cast<unsigned char>(name[i])) || name[i] == '_') out += name[i];
    else if (name[i] == ' ') out += '_';
  }
  return out;
}

// A TorchScript module tree mirroring `model`: the same tensors under the same
// names (undefined ones, like a Conv's absent bias, as None, as Python scripts them).
torch::jit::Module mirror(const torch::nn::Module& model) {
  torch::jit::Module out(script_type_name(model.name()));
  out.register_attribute("training", c10::BoolType::get(), model.is_training());
  for (const auto& p : model.named_parameters(/*recurse=*/false)) out.register_parameter(p.key(), p.value(), false);
  for (const auto& b : model.named_buffers(/*recurse=*/false)) out.register_buffer(b.key(), b.value());
  for (const auto& child : model.named_children()) out.register_module(child.key(), mirror(*child.value()));
  return out;
}

// ---- inputs ---------------------------------------------------------------

std::vector<torch::Tensor> tensors_of(const std::vector<IValue>& values) {
  std::vector<torch::Tensor> out;
  for (const auto& v : values) detail::for_each_tensor(v, [&](const torch::Tensor& t) { out.push_back(t); });
  return out;
}

void require_traceable(const std::vector<IValue>& inputs, const std::string& which) {
  require(!inputs.empty(), "trace: no " + which + "; expected one input per forward argument");
  for (const auto& input : inputs) {
    const auto found = tensors_of({input});
    require(input.isTensor() || ((input.isTuple() || input.isList()) && !found.empty()),
            "trace: " + which + " must be tensors or tuples/lists of tensors (the tracer turns every other value"
            " into a constant); got " + input.tagKind());
    for (const auto& t : found) require(t.defined(), "trace: " + which + " hold an undefined tensor");
  }
}

// The batch size shared by every input tensor (dim 0), or -1 when they do not share one.
int64_t batch_of(const std::vector<IValue>& inputs) {
  int64_t batch = -1;
  for (const auto& t : tensors_of(inputs)) {
    if (t.dim() == 0 || (batch >= 0 && t.size(0) != batch)) return -1;
    batch = t.size(0);
  }
  return batch;
}

// Rows cycled to `batch`, floating values negated (so that a branch on the data's sign takes the other path).
IValue with_batch(const IValue& value, int64_t batch) {
  return detail::map_tensors(value, [&](const torch::Tensor& t) {
    const auto rows = t.index_select(0, torch::arange(batch, torch::kLong) % t.size(0));
    return t.is_floating_point() ? rows.neg() : rows;
  });
}

std::vector<IValue> derive_check_inputs(const std::vector<IValue>& example, int64_t batch) {
  std::vector<IValue> out;
  for (const auto& v : example) out.push_back(with_batch(v, batch));
  return out;
}

// ---- running the model ----------------------------------------------------

// Runs of the original and of the traced module start from the same buffers
// (BatchNorm statistics move in training mode) and the same random state
// (Dropout draws in training mode); both are put back when tracing ends.
class Replay {
 public:
  explicit Replay(const torch::nn::Module& model)
      : generator_(at::detail::getDefaultCPUGenerator()), random_(generator_.get_state()) {
    for (const auto& b : model.buffers()) buffers_.emplace_back(b, b.clone());
  }
  ~Replay() { rewind(); }
  Replay(const Replay&) = delete;
  Replay& operator=(const Replay&) = delete;

  void rewind() {
    torch::NoGradGuard no_grad;
    for (auto& [live, saved] : buffers_) live.copy_(saved);
    generator_.set_state(random_);
  }

 private:
  at::Generator generator_;
  torch::Tensor random_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> buffers_;
};

// Puts the model back in the mode it had.
class ModeGuard {
 public:
  ModeGuard(torch::nn::Module& model, bool training) : model_(model), was_training_(model.is_training()) {
    model_.train(training);
  }
  ~ModeGuard() { model_.train(was_training_); }
  ModeGuard(const ModeGuard&) = delete;
  ModeGuard& operator=(const ModeGuard&) = delete;

 private:
  torch::nn::Module& model_;
  bool was_training_;
};

std::shared_ptr<torch::jit::Graph> trace_graph(torch::jit::Module& self, const ForwardFunction& forward,
                                               const std::vector<IValue>& inputs, Replay& replay,
                                               const std::string& which) {
  replay.rewind();
  std::vector<std::string> names;
  for (size_t i = 0; i < inputs.size(); ++i) names.push_back(inputs.size() == 1 ? "input" : "input_" + std::to_string(i));
  try {
    auto traced = torch::jit::tracer::trace(
        torch::jit::Stack(inputs.begin(), inputs.end()),
        [&](torch::jit::Stack stack) { return torch::jit::Stack{forward(stack)}; },
        [](const torch::autograd::Variable&) { return std::string(); }, /*strict=*/true, /*force_outplace=*/false,
        &self, names);
    auto graph = traced.first->graph;
    torch::jit::EraseShapeInformation(graph);
    return graph;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::string what = e.what();
    const bool unregistered = what.find("requires grad as a constant") != std::string::npos;
    throw Error("trace: tracing the forward on the " + which + " failed: " +
                    (unregistered ? "the forward uses a tensor that requires grad but is no registered parameter or "
                                    "buffer of the model (register_module/register_parameter it). "
                                  : "") + what,
                Error::Kind::Runtime);
  }
}

void install_forward(torch::jit::Module& module, std::shared_ptr<torch::jit::Graph> graph) {
  const auto name = c10::QualifiedName(*module.type()->name(), "forward");
  auto* function = module._ivalue()->compilation_unit()->create_function(name, std::move(graph));
  module.type()->addMethod(function);
}

// ---- checking ---------------------------------------------------------------

double largest_difference(const std::vector<torch::Tensor>& traced, const std::vector<torch::Tensor>& original,
                          double tolerance, std::string& problem) {
  if (traced.size() != original.size()) {
    problem = "returns " + std::to_string(traced.size()) + " tensors where the model returns " +
              std::to_string(original.size());
    return 0;
  }
  double worst = 0;
  for (size_t i = 0; i < traced.size(); ++i) {
    if (traced[i].sizes() != original[i].sizes()) {
      std::ostringstream out;
      out << "returns output " << i << " of shape " << traced[i].sizes() << " where the model returns "
          << original[i].sizes();
      problem = out.str();
      return 0;
    }
    const auto a = traced[i].to(torch::kDouble), b = original[i].to(torch::kDouble);
    const auto excess = ((a - b).abs() - tolerance * (1 + b.abs())).max().item<double>();
    worst = std::max(worst, (a - b).abs().max().item<double>());
    if (excess > 0 && problem.empty()) problem = "differs in output " + std::to_string(i);
  }
  return worst;
}

void check_outputs(torch::jit::Module& traced, const ForwardFunction& forward, const std::vector<IValue>& inputs,
                   Replay& replay, double tolerance, const std::string& which) {
  torch::NoGradGuard no_grad;
  replay.rewind();
  const auto original = tensors_of({forward(inputs)});
  replay.rewind();
  std::vector<torch::Tensor> result;
  try {
    result = tensors_of({traced.forward(inputs)});
  } catch (const std::exception& e) {
    throw Error("trace: the traced module fails on the " + which + ": " + e.what(), Error::Kind::Runtime);
  }
  std::string problem;
  const double worst = largest_difference(result, original, tolerance, problem);
  if (problem.empty()) return;
  std::ostringstream out;
  out << "trace: on the " << which << " the traced module " << problem << " (largest difference " << worst
      << ", tolerance " << tolerance << "): the forward does something a trace cannot record (data-dependent"
      << " control flow, values read out of tensors, state kept outside registered parameters and buffers)";
  throw Error(out.str(), Error::Kind::Runtime);
}

}  // namespace

torch::jit::Module trace(torch::nn::Module& model, const ForwardFunction& forward, std::vector<IValue> example_inputs,
                         TraceOptions options) {
  require(static_cast<bool>(forward), "trace: forward is empty; expected a function that calls the model");
  require(options.tolerance() >= 0, "trace: tolerance must be >= 0");
  require_traceable(example_inputs, "example inputs");
  const int64_t batch = batch_of(example_inputs);
  if (options.check_inputs().empty())
    require(batch > 0, "trace: the example inputs do not share one batch size (dim 0 of every tensor), so pare "
                       "cannot derive a second input set; pass one with TraceOptions::check_inputs");
  const auto check_inputs =
      !options.check_inputs().empty() ? options.check_inputs() : derive_check_inputs(example_inputs, batch + 3);
  require_traceable(check_inputs, "check inputs");
  require(check_inputs.size() == example_inputs.size(), "trace: " + std::to_string(check_inputs.size()) +
                                                            " check inputs for " + std::to_string(example_inputs.size()) +
                                                            " example inputs; expected as many");

  ModeGuard mode(model, options.training());
  torch::NoGradGuard no_grad;
  Replay replay(model);
  auto module = mirror(model);
  auto graph = trace_graph(module, forward, example_inputs, replay, "example inputs");
  auto check_graph = trace_graph(module, forward, check_inputs, replay, "check inputs");
  detail::generalize_batch(*graph, *check_graph, {batch, batch_of(check_inputs)}, options.dynamic_batch());
  detail::canonicalize_layers(graph);
  install_forward(module, graph);
  check_outputs(module, forward, example_inputs, replay, options.tolerance(), "example inputs");
  check_outputs(module, forward, check_inputs, replay, options.tolerance(), "check inputs");
  return module;
}

}  // namespace pare
