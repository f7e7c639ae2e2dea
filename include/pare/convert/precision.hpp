#pragma once
// pare::ConvertPrecision — fp16 / bf16 weights for GPU deployment, with chosen
// layers (typically the classifier) kept in fp32.
//
//   auto result = pare::Pipeline()
//       .add(pare::ConvertPrecision(pare::ConvertPrecisionOptions(torch::kBFloat16).keep_fp32({"fc2"})))
//       .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions("model_bf16.pt")))
//       .run(model);
//
// Every layer with parameters (Linear, Conv, BatchNorm, ...) casts its floating
// inputs to the dtype of its own weights where it is called, so the converted
// module takes the same fp32 inputs as before, a kept layer receives fp32
// activations, and its outputs (e.g. the logits of a kept last layer) are fp32.
// The casts are plain aten::to nodes: the export loads in stock PyTorch/LibTorch.

#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "pare/core/arg.hpp"
#include "pare/core/pipeline.hpp"

namespace pare {

class ConvertPrecisionOptions {
 public:
  /// `dtype`: torch::kHalf (fp16) or torch::kBFloat16 (bf16).
  explicit ConvertPrecisionOptions(c10::ScalarType dtype) : dtype_(dtype) {}

  /// torch::kHalf (fp16) or torch::kBFloat16 (bf16).
  PARE_ARG(c10::ScalarType, dtype);
  /// Submodules left in fp32: glob patterns over full module names ("fc2",
  /// "classifier.*", "layer4.1.bn2"). A pattern that matches no submodule is an error.
  PARE_ARG(std::vector<std::string>, keep_fp32);
  /// Store converted 4-D (Conv2d) weights channels-last: cuDNN then runs the
  /// convolutions in NHWC, the layout its fp16/bf16 tensor-core kernels prefer
  /// (outputs become channels-last too). Values are unchanged.
  PARE_ARG(bool, channels_last) = false;

 public:
  [[deprecated("use keep_fp32()")]] const std::vector<std::string>& keep_fp32_patterns() const { return keep_fp32_; }
};

/// What a conversion did.
struct PrecisionResult {
  std::vector<std::string> converted;  ///< module names ("" is the root) whose tensors changed dtype
  std::vector<std::string> kept;       ///< module names kept in fp32
  int64_t casts_inserted = 0;          ///< aten::to nodes added at call sites
  int64_t bytes_before = 0, bytes_after = 0;  ///< parameters and floating buffers
};
using PrecisionSummary [[deprecated("renamed PrecisionResult")]] = PrecisionResult;

/// Converts `module` in place (its methods' code gains the casts: convert a
/// module before its first forward, or a clone of it, as Pipeline does). Integer buffers (BatchNorm's num_batches_tracked)
/// and the inputs of embedding layers stay as they are. pare::Error for a dtype
/// other than fp16/bf16, a pattern that matches nothing, a module with no
/// forward, or shared TorchScript code (two instances of one module type) whose
/// layers would need different dtypes: keep both or neither.
PrecisionResult convert_precision(torch::jit::Module& module, const ConvertPrecisionOptions& options);

/// The pass. Report: metrics bytes_before, bytes_after, casts_inserted,
/// layers_converted, layers_kept_fp32; labels dtype ("fp16"/"bf16") and kept_fp32.
class ConvertPrecision : public Pass {
 public:
  explicit ConvertPrecision(ConvertPrecisionOptions options);
  /// Short for ConvertPrecision(ConvertPrecisionOptions(dtype)).
  explicit ConvertPrecision(c10::ScalarType dtype) : ConvertPrecision(ConvertPrecisionOptions(dtype)) {}
  std::string name() const override { return "convert_precision"; }
  void run(Result& state, PassReport& entry) const override;
  const ConvertPrecisionOptions& options() const { return options_; }

 private:
  ConvertPrecisionOptions options_;
};

}  // namespace pare
