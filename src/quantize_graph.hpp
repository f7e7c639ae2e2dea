#pragma once
// Internal to pare: the graph side of int8 quantization (planning which ops
// go int8, packing weights, rewriting the frozen graph). src/quantize.cpp
// drives it; nothing here is public API.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/jit/ir/ir.h>

#include "pare/observers.hpp"

namespace pare::detail {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

/// One op of the frozen graph that will run in int8, in graph order.
struct QuantStep {
  enum class Kind { Layer, Add, Carry } kind;
  Node* node = nullptr;
  Node* relu = nullptr;       ///< a ReLU fused into the op (its only user)
  std::string name;           ///< layer name ("fc1"); empty for Add/Carry
  std::string layer_kind;     ///< "Linear", "Conv1d", "Conv2d"
  Value* output() const;      ///< the float value the step replaces (the ReLU's, when fused)
};

/// What stays float, and why.
struct FloatLayer {
  std::string name, kind, reason;
};

struct QuantPlan {
  std::vector<QuantStep> steps;
  std::vector<FloatLayer> float_layers;
  /// Float values whose ranges calibration must observe, with what they are
  /// ("input of conv1", "output of fc1"), in graph order.
  std::vector<std::pair<Value*, std::string>> observed;
};

/// Plans static int8 for a frozen graph; layers matching `skip` stay float.
QuantPlan plan_static(Graph& graph, const std::vector<std::string>& skip);

/// Rewrites the graph per `plan`. `activations` holds the qparams of every
/// observed value. Returns, per Layer step, the dequantized output value (for
/// SQNR measurement), and fills `weight_scales` with each layer's weight
/// scale range {min, max}.
std::vector<Value*> rewrite_static(Graph& graph, const QuantPlan& plan,
                                   const std::map<Value*, QuantParams>& activations, bool per_channel,
                                   std::vector<std::pair<double, double>>& weight_scales);

/// Rewrites Linear layers to quantized::linear_dynamic; returns the names of
/// the layers it quantized and fills `float_layers` with those it left.
std::vector<std::string> rewrite_dynamic(Graph& graph, const std::vector<std::string>& skip, bool per_channel,
                                         std::vector<FloatLayer>& float_layers);

/// A copy of `graph` returning one tuple: its outputs, then `extra`;
/// `graph` itself is left as it was.
std::shared_ptr<Graph> graph_returning(Graph& graph, const std::vector<Value*>& extra);

}  // namespace pare::detail
