#include "pare/export.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/csrc/jit/serialization/import.h>

namespace pare {
namespace {

std::string temporary_path_for(const std::string& path) {
  std::random_device random;
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(random());
}

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
                std::to_string(index) + ": " + e.what());
  }
}

}  // namespace

void save_atomically(const torch::jit::Module& module, const std::string& path,
                     const std::map<std::string, std::string>& extra_files,
                     const std::function<void(const std::string&)>& check) {
  require(!path.empty(), "save: path is empty; expected a file name such as \"model.pt\"");
  const std::string temporary = temporary_path_for(path);
  torch::jit::ExtraFilesMap extras(extra_files.begin(), extra_files.end());
  try {
    module.save(temporary, extras);
  } catch (const std::exception& e) {
    std::remove(temporary.c_str());
    throw Error("could not write '" + path + "': " + e.what(), Error::Kind::Runtime);
  }
  try {
    if (check) check(temporary);
  } catch (...) {
    std::remove(temporary.c_str());  // a file that failed its check never lands at `path`
    throw;
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw Error("could not move the exported model into place at '" + path + "'", Error::Kind::Runtime);
  }
}

double max_abs_diff(const torch::jit::IValue& a, const torch::jit::IValue& b) {
  if (a.isTensor() && b.isTensor()) {
    const auto x = a.toTensor(), y = b.toTensor();
    require(x.sizes() == y.sizes(), "outputs differ in shape");
    if (x.numel() == 0) return 0.0;
    return (x.to(torch::kDouble) - y.to(torch::kDouble)).abs().max().item<double>();
  }
  auto elements = [](const torch::jit::IValue& v) -> std::vector<torch::jit::IValue> {
    if (v.isTuple()) return v.toTupleRef().elements().vec();
    if (v.isList()) return v.toListRef().vec();
    if (v.isGenericDict()) {
      std::vector<torch::jit::IValue> values;
      for (const auto& item : v.toGenericDict()) values.push_back(item.value());
      return values;
    }
    throw Error("cannot compare outputs of type " + v.tagKind() +
                "; expected tensors, tuples, lists or dicts of tensors");
  };
  if (a.isNone() && b.isNone()) return 0.0;
  const auto xs = elements(a), ys = elements(b);
  require(xs.size() == ys.size(), "outputs differ in structure");
  double worst = 0.0;
  for (size_t i = 0; i < xs.size(); ++i) worst = std::max(worst, max_abs_diff(xs[i], ys[i]));
  return worst;
}

std::string read_embedded_report(const std::string& path) {
  torch::jit::ExtraFilesMap extras{{kReportExtraFile, ""}};
  try {
    torch::jit::load(path, c10::nullopt, extras);
  } catch (const std::exception& e) {
    throw Error("'" + path + "' is not a loadable TorchScript file: " + e.what());
  }
  return extras[kReportExtraFile];
}

ExportTorchScript::ExportTorchScript(std::string path, ExportOptions options)
    : path_(std::move(path)), options_(std::move(options)) {
  require(!path_.empty(), "ExportTorchScript: path is empty; expected a file name such as \"model.pt\"");
  require(std::isfinite(options_.tolerance()) && options_.tolerance() >= 0,
          "ExportTorchScript: tolerance must be a finite number >= 0");
}

void ExportTorchScript::run(Result& state, PassReport& entry) const {
  entry.layers = weight_table(state.module);  // before freezing turns weights into constants
  if (options_.freeze()) {
    state.module.eval();
    state.module = torch::jit::freeze(state.module);
  }
  std::vector<torch::jit::IValue> expected;
  for (size_t i = 0; i < options_.verify_inputs().size(); ++i)
    expected.push_back(forward(state.module, options_.verify_inputs()[i], i, "exported"));

  Report so_far = state.report;
  so_far.passes.push_back(entry);
  double worst = 0.0;
  auto verify = [&](const std::string& written) {
    torch::jit::Module reloaded = torch::jit::load(written);
    for (size_t i = 0; i < expected.size(); ++i)
      worst = std::max(worst, max_abs_diff(expected[i], forward(reloaded, options_.verify_inputs()[i], i, "reloaded")));
    require(worst <= options_.tolerance(),
            "ExportTorchScript: the reloaded file differs from the module by " + std::to_string(worst) +
                " (tolerance " + std::to_string(options_.tolerance()) + "); '" + path_ + "' was not written",
            Error::Kind::Runtime);
  };
  auto extra_files = state.extra_files;
  extra_files[kReportExtraFile] = so_far.to_json();
  save_atomically(state.module, path_, extra_files, verify);
  entry.labels["path"] = path_;
  entry.labels["frozen"] = options_.freeze() ? "true" : "false";
  entry.metrics["file_bytes"] = double(file_size(path_));
  if (!expected.empty()) entry.metrics["max_abs_diff"] = worst;
}

}  // namespace pare
