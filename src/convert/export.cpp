#include "pare/convert/export.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <fstream>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/runtime/graph_iterator.h>
#include <torch/csrc/jit/serialization/import.h>

#include "core/atomic_file.hpp"
#include "quantize/engine_scope.hpp"
#include "core/ivalue_walk.hpp"
#include "core/torch_errors.hpp"

namespace pare {
namespace {

int64_t file_size(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 ? int64_t(info.st_size) : -1;
}

torch::jit::IValue forward(torch::jit::Module& module, const std::vector<torch::jit::IValue>& inputs,
                           size_t index, const char* which) {
  try {
    return module.forward(inputs);
  } catch (const std::exception& e) {
    throw Error("export verification: the " + std::string(which) + " module failed on sample input " +
                std::to_string(index) + ": " + detail::torch_message(e));
  }
}

bool is_convolution_2d(const torch::jit::Node* node) {
  if (node->kind() == c10::aten::conv2d) return true;
  if (node->kind() != c10::aten::_convolution) return false;
  const auto transposed = torch::jit::toIValue(node->input(6));
  return transposed && transposed->isBool() && !transposed->toBool();
}

// Gives every 2-D convolution whose weight is a graph constant (a frozen
// module's) a channels-last copy of it; returns how many it converted. LibTorch
// runs a convolution in channels-last order when its weight is, and its output
// keeps that order, so the elementwise ops and convolutions after it follow.
int64_t weights_to_channels_last(torch::jit::Module& module) {
  int64_t converted = 0;
  for (const auto& method : module.get_methods()) {
    auto graph = method.graph();
    torch::jit::DepthFirstGraphNodeIterator nodes(graph);
    for (auto* node = nodes.next(); node != nullptr; node = nodes.next()) {
      if (!is_convolution_2d(node)) continue;
      const auto weight = torch::jit::toIValue(node->input(1));
      if (!weight || !weight->isTensor() || weight->toTensor().dim() != 4 || !weight->toTensor().is_floating_point())
        continue;
      torch::jit::WithInsertPoint here(node);
      node->replaceInput(1, graph->insertConstant(weight->toTensor().contiguous(at::MemoryFormat::ChannelsLast)));
      ++converted;
    }
    torch::jit::EliminateDeadCode(graph);
  }
  return converted;
}

}  // namespace

void save_atomically(const torch::jit::Module& module, const std::string& path,
                     const std::map<std::string, std::string>& extra_files,
                     const std::function<void(const std::string&)>& check) {
  const torch::jit::ExtraFilesMap extras(extra_files.begin(), extra_files.end());
  detail::replace_file_atomically(
      path, "save", [&](const std::string& temporary) { module.save(temporary, extras); }, check);
}

std::string read_embedded_report(const std::string& path) {
  torch::jit::ExtraFilesMap extras{{kReportExtraFile, ""}};
  try {
    torch::jit::load(path, c10::nullopt, extras);
  } catch (const std::exception& e) {
    throw Error("'" + path + "' is not a loadable TorchScript file: " + detail::torch_message(e));
  }
  return extras[kReportExtraFile];
}

ExportTorchScript::ExportTorchScript(ExportTorchScriptOptions options) : options_(std::move(options)) {
  require(!options_.path().empty(), "ExportTorchScript: path is empty; expected a file name such as \"model.pt\"");
  require(std::isfinite(options_.tolerance()) && options_.tolerance() >= 0,
          "ExportTorchScript: tolerance must be a finite number >= 0");
  require(!options_.channels_last() || (options_.freeze() && !options_.verify_with().empty()),
          "ExportTorchScript: channels_last needs freeze(true) (weights as constants) and verify_with(inputs) "
          "(the converted module is checked on them)");
}

// Swaps in a channels-last copy of the frozen module when it runs the
// verification inputs and matches the plain module's outputs; otherwise the
// plain module stays and the report says why.
void ExportTorchScript::try_channels_last(torch::jit::Module& module, const std::vector<torch::jit::IValue>& expected,
                                          PassReport& entry) const {
  auto converted = module.clone();  // a fresh copy: a method that has run keeps its execution plan
  entry.metrics["channels_last_weights"] = double(weights_to_channels_last(converted));
  std::string verdict = "true";
  try {
    double worst = 0.0;
    for (size_t i = 0; i < expected.size(); ++i)
      worst = std::max(worst, max_abs_diff(expected[i], converted.forward(options_.verify_with()[i])));
    if (!(worst <= options_.tolerance()))
      verdict = "false: its outputs differ from the plain module's by " + std::to_string(worst);
  } catch (const std::exception& e) {
    verdict = "false: the converted module failed on the verification inputs: " + detail::torch_message(e);
  }
  entry.labels["channels_last"] = verdict;
  if (verdict == "true") module = converted;
}

void ExportTorchScript::run(Result& state, PassReport& entry) const {
  entry.layers = weight_table(state.module);  // before freezing turns weights into constants
  if (options_.freeze()) {
    state.module = detail::translate_torch_errors("ExportTorchScript: torch::jit::freeze failed on the model", [&] {
      state.module.eval();  // the pipeline's own copy
      return torch::jit::freeze(state.module);
    });
  }
  std::vector<torch::jit::IValue> expected;
  for (size_t i = 0; i < options_.verify_with().size(); ++i)
    expected.push_back(forward(state.module, options_.verify_with()[i], i, "exported"));
  if (options_.channels_last()) try_channels_last(state.module, expected, entry);

  Report so_far = state.report;
  so_far.passes.push_back(entry);
  double worst = 0.0;
  // An int8 module reloads (repacks its weights) under the engine it was quantized for.
  std::optional<detail::EngineScope> engine;
  const auto record = state.extra_files.find(kQuantizationExtraFile);
  if (record != state.extra_files.end())
    engine.emplace(parse_quantization_info(record->second).engine, "ExportTorchScript");
  auto verify = [&](const std::string& written) {
    auto reloaded = detail::translate_torch_errors("ExportTorchScript: the written file does not load",
                                                  [&] { return torch::jit::load(written); });
    for (size_t i = 0; i < expected.size(); ++i)
      worst = std::max(worst, max_abs_diff(expected[i], forward(reloaded, options_.verify_with()[i], i, "reloaded")));
    require(worst <= options_.tolerance(),
            "ExportTorchScript: the reloaded file differs from the module by " +
                (std::isinf(worst) ? std::string("NaN or Inf where the module's output is finite")
                                   : std::to_string(worst)) +
                " (tolerance " + std::to_string(options_.tolerance()) + "); '" + options_.path() + "' was not written",
            Error::Kind::Runtime);
  };
  auto extra_files = state.extra_files;
  extra_files[kReportExtraFile] = so_far.to_json();
  save_atomically(state.module, options_.path(), extra_files, verify);
  entry.labels["path"] = options_.path();
  entry.labels["frozen"] = options_.freeze() ? "true" : "false";
  entry.metrics["file_bytes"] = double(file_size(options_.path()));
  if (!expected.empty()) entry.metrics["max_abs_diff"] = worst;
}

}  // namespace pare
