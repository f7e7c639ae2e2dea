#pragma once
// pare::ExportTorchScript — atomic, verified TorchScript export.

#include <functional>

#include "pare/core/arg.hpp"
#include "pare/core/compare.hpp"
#include "pare/core/pipeline.hpp"

namespace pare {

class ExportTorchScriptOptions {
 public:
  /// `path`: the file to write (its directory must exist).
  explicit ExportTorchScriptOptions(std::string path) : path_(std::move(path)) {}
  /// The file to write (its directory must exist).
  PARE_ARG(std::string, path);
  /// torch::jit::freeze the module (eval mode, weights inlined as constants).
  PARE_ARG(bool, freeze) = false;
  /// After writing, reload the file and compare its outputs with the module's on these inputs.
  PARE_ARG(std::vector<std::vector<torch::jit::IValue>>, verify_with);
  /// Largest tolerated absolute difference between module and reloaded file.
  PARE_ARG(double, tolerance) = 1e-5;
  /// Store the frozen module's 2-D convolution weights in channels-last (NHWC)
  /// order, so that oneDNN runs each convolution on NHWC data without reordering
  /// it to and from its blocked layout: 1.03-1.74x faster on the CNNs measured in
  /// docs/export.md, most on pruned ones, but not everywhere (0.93x in one case).
  /// Needs freeze(true) and verify_with(...): the converted module must run and
  /// match the plain one on those inputs, or the export keeps the plain order and
  /// says why in the report (an op such as `view` that needs contiguous input).
  PARE_ARG(bool, channels_last) = false;

 public:
  [[deprecated("use verify_with()")]] const std::vector<std::vector<torch::jit::IValue>>& verify_inputs() const {
    return verify_with_;
  }
};

/// Writes the module to options.path() via a temporary file and a rename, embedding the
/// report so far as the extra file "pare/report.json". Report metrics:
/// file_bytes, max_abs_diff (when verified), channels_last_weights (with
/// channels_last: weights converted; label channels_last says whether they were kept). Also freezes the pipeline's module
/// if asked, so later passes see what was written.
class ExportTorchScript : public Pass {
 public:
  explicit ExportTorchScript(ExportTorchScriptOptions options);
  /// Short for ExportTorchScript(ExportTorchScriptOptions(path)).
  explicit ExportTorchScript(std::string path) : ExportTorchScript(ExportTorchScriptOptions(std::move(path))) {}
  std::string name() const override { return "export_torchscript"; }
  void run(Result& state, PassReport& entry) const override;
  const ExportTorchScriptOptions& options() const { return options_; }

 private:
  void try_channels_last(torch::jit::Module& module, const std::vector<torch::jit::IValue>& expected,
                         PassReport& entry) const;
  ExportTorchScriptOptions options_;
};

/// The extra file name under which pare embeds its report.
inline constexpr const char* kReportExtraFile = "pare/report.json";

/// Writes `module` atomically to `path` with `extra_files`: a temporary file
/// next to `path`, then `check(temporary_path)` (if given; a throw discards
/// the file), an fsync of the file, a rename and an fsync of the directory.
/// A crash or power cut never leaves a half-written model. pare::Error on
/// failure (missing directory, no permission, disk full).
void save_atomically(const torch::jit::Module& module, const std::string& path,
                     const std::map<std::string, std::string>& extra_files = {},
                     const std::function<void(const std::string&)>& check = {});

/// Reads pare's embedded report from a saved file; empty if none.
std::string read_embedded_report(const std::string& path);

}  // namespace pare
