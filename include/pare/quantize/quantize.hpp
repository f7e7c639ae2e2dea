#pragma once
// pare::QuantizeInt8 and pare::QuantizeInt8Dynamic — post-training int8
// quantization of any TorchScript model, exported as standard quantized
// TorchScript (quantized::linear / quantized::conv2d with prepacked weights)
// that stock PyTorch loads without pare.

#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

#include "pare/core/arg.hpp"
#include "pare/core/batches.hpp"
#include "pare/quantize/observers.hpp"
#include "pare/core/pipeline.hpp"
#include "pare/quantize/quantization_info.hpp"

namespace pare {

/// One model input list per calibration batch.
using InputBatches = std::vector<std::vector<torch::jit::IValue>>;
/// Calibration inputs: a list (InputBatches) or batches produced on demand.
using CalibrationData = BatchSource<std::vector<torch::jit::IValue>>;
/// Called after each calibration batch with (batches done, batches in all or -1 if unknown).
using CalibrationProgress = std::function<void(int64_t, int64_t)>;

/// One labelled batch for QuantizeInt8Options::evaluate: the model's inputs
/// and the class index of each row (a 1-D int64 tensor).
using LabelledBatch = std::pair<std::vector<torch::jit::IValue>, torch::Tensor>;

/// How QuantizeInt8 measures accuracy for max_drop, in percent (higher is
/// better): top-1 of the model's output (rows of class scores) on labelled
/// batches, or a callback given the candidate module.
class Evaluation {
 public:
  Evaluation() = default;
  /// Top-1 on these batches. pare::Error at use for an empty list or labels that are not 1-D int64.
  Evaluation(std::vector<LabelledBatch> batches);  // NOLINT: implicit, so evaluate(batches) reads as it says
  /// `accuracy(module)` returns the module's accuracy in percent.
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, Evaluation> &&
                                              std::is_invocable_r_v<double, F&, torch::jit::Module&>>>
  Evaluation(F accuracy)  // NOLINT: implicit, so evaluate([](torch::jit::Module& m) { ... }) reads as it says
      : accuracy_(std::function<double(torch::jit::Module&)>(std::move(accuracy))) {}
  /// True when neither batches nor a callback were given.
  bool empty() const { return !accuracy_; }
  /// The module's accuracy in percent.
  double operator()(torch::jit::Module& module) const;

 private:
  std::function<double(torch::jit::Module&)> accuracy_;
};

class QuantizeInt8Options {
 public:
  /// The batches to calibrate on (one epoch is read). With two or more, the
  /// last one is held out: it is not observed and measures each layer's SQNR
  /// against the float model.
  explicit QuantizeInt8Options(CalibrationData calibration) : calibration_(std::move(calibration)) {}
  /// The calibration batches.
  PARE_ARG(CalibrationData, calibration);
  /// How activation ranges are chosen (default: histogram).
  PARE_ARG(ObserverOptions, observer);
  /// Weights: one symmetric scale per output channel (default) or one per tensor.
  PARE_ARG(bool, per_channel) = true;
  /// Layers to leave in float: names such as "fc2" or glob patterns ("features.*").
  PARE_ARG(std::vector<std::string>, skip);
  /// Quantized engine ("onednn", "qnnpack", "fbgemm", "x86"); empty: the best this LibTorch has.
  PARE_ARG(std::string, engine);
  /// Called after each calibration batch.
  PARE_ARG(CalibrationProgress, progress);
  /// Never slower than float (default on): times the model on the held-out
  /// calibration batch with each island of int8 ops (ops joined by int8
  /// tensors) in int8 and in float, and keeps float where int8 loses. The
  /// report lists each island's timings.
  PARE_ARG(bool, never_slower) = true;
  /// With never_slower, each island holding Linear layers is also timed with
  /// them as dynamic int8 (quantized::linear_dynamic, activations quantized
  /// on the fly, the island's other ops float), and the island keeps the
  /// fastest of static int8, dynamic int8 and float (default on). The report
  /// gives every Linear a "form" label (static, dynamic, float), a "why"
  /// label and its island's timings; metrics linears_static/_dynamic/_float.
  PARE_ARG(bool, try_dynamic) = true;
  /// Fold each residual add (+ReLU) into the convolution that feeds it, as
  /// quantized::conv2d_add(_relu): one pass over memory instead of two. Needs
  /// the onednn engine and LibTorch 2.x (elsewhere nothing is folded; metric
  /// conv_add_fused counts the folds), and the file then runs only where the
  /// process's quantized engine is onednn (torch.backends.quantized.engine =
  /// "onednn"; LibTorch's default on x86 is "x86"). Default off.
  PARE_ARG(bool, fold_residual_adds) = false;
  /// Batch sizes never_slower times at (the held-out batch's rows, repeated
  /// or cut to each size); empty: the held-out batch's own size. The file is
  /// kept int8 only where it is faster than float at every one of them.
  PARE_ARG(std::vector<int64_t>, batch_sizes);
  /// Accuracy budget in points (percent): with evaluate(), the layers whose
  /// int8 hurts the output most go back to float until the int8 model is at
  /// most this much less accurate than the float one. Unset: no budget.
  PARE_ARG(std::optional<double>, max_drop);
  /// How max_drop measures accuracy: labelled batches or a callback.
  PARE_ARG(Evaluation, evaluate);
};

/// Static int8: freezes the module (folding BatchNorm), calibrates activation
/// ranges on the user's batches, and rewrites Linear/Conv1d/Conv2d to
/// quantized ops, absorbing a following relu/hardtanh/clamp; add, mul, cat,
/// batch_norm, hardswish, pooling, flatten/reshape and clamp-like activations
/// between them stay quantized, so a model is quantized once at its entry and
/// dequantized where a float op needs it. Inputs and outputs stay float. Layers it cannot quantize stay
/// float and are listed in the report. The process's quantized engine is
/// switched to options().engine() only while the pass runs, then restored.
/// Report: per layer scale, zero_point, observer, sqnr_db; the engine is also
/// written by ExportTorchScript as the extra file "pare/quantization.json".
class QuantizeInt8 : public Pass {
 public:
  explicit QuantizeInt8(QuantizeInt8Options options);
  /// Short for QuantizeInt8(QuantizeInt8Options(calibration)).
  explicit QuantizeInt8(CalibrationData calibration) : QuantizeInt8(QuantizeInt8Options(std::move(calibration))) {}
  std::string name() const override { return "quantize_int8"; }
  void run(Result& state, PassReport& entry) const override;
  const QuantizeInt8Options& options() const { return options_; }

 private:
  QuantizeInt8Options options_;
};

class QuantizeInt8DynamicOptions {
 public:
  /// Weights: one symmetric scale per output channel (default) or one per tensor.
  PARE_ARG(bool, per_channel) = true;
  /// Layers to leave in float: names or glob patterns.
  PARE_ARG(std::vector<std::string>, skip);
  /// Quantized engine; empty: the best this LibTorch has.
  PARE_ARG(std::string, engine);
};

/// Dynamic int8: Linear weights become int8 (quantized::linear_dynamic),
/// activations are quantized on the fly; no calibration. LSTMs stay float.
class QuantizeInt8Dynamic : public Pass {
 public:
  explicit QuantizeInt8Dynamic(QuantizeInt8DynamicOptions options = {});
  std::string name() const override { return "quantize_int8_dynamic"; }
  void run(Result& state, PassReport& entry) const override;
  const QuantizeInt8DynamicOptions& options() const { return options_; }

 private:
  QuantizeInt8DynamicOptions options_;
};

/// Calibration batches from a file written by stock PyTorch's torch.save: a
/// list of tensors or tuples of tensors, one batch each, of any length
/// including one; a tuple (one batch of a multi-input model); or a bare
/// tensor, split along dim 0 into batches of `batch_size`. pare::Error for a missing file, bytes that are not a
/// torch.save file, or contents of another type.
InputBatches load_calibration_file(const std::string& path, int64_t batch_size = 32);

/// The extra file in which quantized exports record their engine and layers.
inline constexpr const char* kQuantizationExtraFile = "pare/quantization.json";

/// Quantized engines this LibTorch supports, best first (x86, fbgemm, onednn, qnnpack; qnnpack first on ARM).
std::vector<std::string> available_quantized_engines();
/// The engine in use now.
std::string current_quantized_engine();
/// Switches the process's quantized engine; pare::Error naming the available ones otherwise.
void set_quantized_engine(const std::string& engine);

/// Reads the record from a saved file; std::nullopt if the file is not a pare int8 export.
std::optional<QuantizationInfo> read_quantization_info(const std::string& path);
/// A warning when the running engine differs from the recorded one; empty otherwise.
std::string engine_mismatch_warning(const QuantizationInfo& info);
/// torch::jit::load, first warning (TORCH_WARN) when the file's engine differs
/// from the running one; with `switch_engine`, switches to the file's engine
/// if this LibTorch has it.
torch::jit::Module load_quantized(const std::string& path, bool switch_engine = false);

}  // namespace pare
