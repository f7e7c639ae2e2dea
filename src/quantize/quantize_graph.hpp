#pragma once
// Internal to pare: the graph side of int8 quantization (preparing the frozen
// graph, planning which ops go int8, packing weights, rewriting). src/quantize.cpp
// drives it; nothing here is public API.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/jit/ir/ir.h>

#include "pare/quantize/observers.hpp"

namespace pare::detail {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

/// In-place tensor and list ops become functional (so that every value holds
/// one thing: `out += x; relu_(out)` would otherwise make the observer of the
/// conv output see post-ReLU values), and BatchNorm whose producer's output is
/// also read by a shape check (`input.dim() != 4`) is folded into the conv.
void prepare_for_int8(const std::shared_ptr<Graph>& graph);

/// A clamp-like activation (relu, hardtanh/ReLU6, clamp) with lo <= 0 <= hi.
/// Quantizing a value into a range inside [lo, hi] applies the clamp exactly,
/// so the producer writes the activation's output directly.
struct Activation {
  Node* node = nullptr;
  double lo = 0, hi = 0;
  bool is_relu() const;
};

/// One op of the frozen graph that will run in int8, in graph order.
struct QuantStep {
  /// Layer: Linear/Conv with prepacked weights. Join: an op with its own
  /// output scale (add, mul, cat, batch_norm, hardswish). Carry: an op that
  /// runs on int8 input and keeps (or fixes) the scale (pooling, reshapes, relu…).
  enum class Kind { Layer, Join, Carry } kind;
  Node* node = nullptr;
  std::optional<Activation> activation;     ///< absorbed into the op (its only user)
  std::string name;                         ///< layer name ("fc1"); for Join/Carry the op ("add")
  std::string layer_kind;                   ///< "Linear", "Conv1d", "Conv2d"; empty otherwise
  Value* output() const;                    ///< the float value the step replaces (the activation's, when absorbed)
  std::vector<Value*> int8_inputs() const;  ///< the float values it reads as int8
};

/// What stays float, and why.
struct FloatLayer {
  std::string name, kind, reason;
};

struct QuantPlan {
  std::vector<QuantStep> steps;
  std::vector<FloatLayer> float_layers;
  /// Float ops that read an int8 result (through a dequantize): kind and why.
  std::vector<FloatLayer> float_ops;
  /// Float values whose ranges calibration must observe, with what they are
  /// ("input of conv1", "output of fc1"), in graph order.
  std::vector<std::pair<Value*, std::string>> observed;
  /// Observed values that an absorbed activation clamps: their range is cut to [lo, hi].
  std::map<Value*, std::pair<double, double>> bounds;
};

/// Plans static int8 for a prepared frozen graph; layers matching `skip` stay float.
QuantPlan plan_static(Graph& graph, const std::vector<std::string>& skip);

/// The qparams of an observed value: the observer's range, cut to the
/// absorbed activation's bounds when there is one.
QuantParams activation_qparams(const Observer& observer, const QuantPlan& plan, Value* value);

/// Gives each cat's inputs and output one shared scale (the union of their
/// ranges; chains of cats, as in DenseNet, share one), as PyTorch's FX flow
/// observes them with one observer: quantized::cat then copies bytes instead
/// of requantizing every input. Carry steps (pooling, reshapes) keep their
/// input's scale, so the value a cat input is carried from takes the scale.
void share_cat_qparams(const QuantPlan& plan, std::map<Value*, QuantParams>& activations);
/// Rewrites the graph per `plan`. `activations` holds the qparams of every
/// observed value. Returns, per Layer step, the dequantized output value (for
/// SQNR measurement), and fills `weight_scales` with each layer's weight
/// scale range {min, max}.
std::vector<Value*> rewrite_static(Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations, bool per_channel,
                                   std::vector<std::pair<double, double>>& weight_scales);

/// Folds each quantized::add(_relu) of a rewritten graph into the
/// quantized::conv2d that is one of its operands and has no other reader, as
/// quantized::conv2d_add(_relu) (src/quantize_fuse.cpp), where the other
/// operand may be overwritten. Returns how many it fused: none unless the current
/// engine is onednn and this LibTorch has quantized::conv2d_add(_relu) (2.x).
int64_t fuse_conv_add(Graph& graph);
/// Rewrites these aten::linear nodes (constant weights) to quantized::linear_dynamic.
void rewrite_linear_dynamic(Graph& graph, const std::vector<Node*>& linears, bool per_channel);
/// Rewrites Linear layers to quantized::linear_dynamic; returns the names of
/// the layers it quantized and fills `float_layers` with those it left.
std::vector<std::string> rewrite_dynamic(Graph& graph, const std::vector<std::string>& skip, bool per_channel,
                                         std::vector<FloatLayer>& float_layers);

/// A copy of `graph` returning one tuple: its outputs, then `extra` (each
/// copied where it is defined, so later in-place ops cannot change what is
/// returned); `graph` itself is left as it was.
std::shared_ptr<Graph> graph_returning(Graph& graph, const std::vector<Value*>& extra);

/// Maps every value and node of `from` to its counterpart in `to`, a copy of it.
struct GraphCorrespondence {
  std::map<Value*, Value*> values;
  std::map<Node*, Node*> nodes;
};
GraphCorrespondence correspond(Graph& from, Graph& to);

/// Groups plan steps into islands: steps joined by int8 values share one.
/// Returns the island index of each step.
std::vector<size_t> island_of_steps(const QuantPlan& plan);
/// `plan` without the steps of the `dropped` islands, which are listed as float
/// (layers in float_layers, other ops in float_ops) with `reason`.
QuantPlan without_islands(const QuantPlan& plan, const std::set<size_t>& dropped, const std::string& reason);
/// `plan` for `to`, a copy of the graph it was made for.
QuantPlan translated(const QuantPlan& plan, const GraphCorrespondence& map);

// Helpers shared by the planning and the rewrite (src/quantize_ops.cpp).
std::string layer_kind_of(const Node* n);
std::string join_kind_of(Node* n);     ///< "add", "mul", "cat", "batch_norm", "hardswish" or ""
bool carries_int8(const Node* n);      ///< runs on an int8 tensor, keeping or fixing its scale
bool reads_only_shape(const Node* n);  ///< dim/size/numel: works on int8 tensors as is
std::optional<Activation> absorbable_activation(Node* producer);
std::vector<Value*> tensor_inputs_of_join(Node* n);

}  // namespace pare::detail
