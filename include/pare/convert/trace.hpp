#pragma once
// pare::trace — a LibTorch C++ frontend model (torch::nn) as a TorchScript module.

#include <functional>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <torch/script.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>

#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"

namespace pare {

class TraceOptions {
 public:
  /// Trace in training mode (BatchNorm batch statistics, live Dropout). Default: eval.
  PARE_ARG(bool, training) = false;
  /// A second set of inputs the traced module is checked against. Empty (the
  /// default): derived from the example inputs with another batch size (rows
  /// cycled, floats negated).
  PARE_ARG(std::vector<torch::jit::IValue>, check_inputs);
  /// Largest allowed |traced - original| (on top of the same relative tolerance). Default 1e-5.
  PARE_ARG(double, tolerance) = 1e-5;
  /// Rewrite batch sizes the forward read from `x.size(0)` (baked in by the tracer) into
  /// `aten::size(input, 0)`, so that the module serves any batch size. Default: on.
  PARE_ARG(bool, dynamic_batch) = true;
};

/// Calls a model's forward on a stack of inputs and returns its output.
using ForwardFunction = std::function<torch::jit::IValue(const std::vector<torch::jit::IValue>&)>;

/// Traces `forward` (which calls `model`) into a TorchScript module. The result
/// mirrors `model.named_children()` as submodules that hold `model`'s parameters
/// and buffers (the same tensors, as torch.jit.trace does) under their names, and
/// its `forward` reads them with prim::GetAttr. It is checked against `model` on
/// the example inputs and on a second input set; pare::Error says what differs.
torch::jit::Module trace(torch::nn::Module& model, const ForwardFunction& forward,
                         std::vector<torch::jit::IValue> example_inputs, TraceOptions options = {});

namespace detail {

template <class T>
T from_ivalue(const torch::jit::IValue& value) {
  return value.to<T>();
}

template <class Method>
struct ForwardSignature;
template <class C, class R, class... A>
struct ForwardSignature<R (C::*)(A...)> {
  static constexpr size_t arity = sizeof...(A);
  template <class M, size_t... I>
  static torch::jit::IValue call(M& model, R (C::*method)(A...), const std::vector<torch::jit::IValue>& in,
                                 std::index_sequence<I...>) {
    return torch::jit::IValue((model.*method)(from_ivalue<std::decay_t<A>>(in[I])...));
  }
};
template <class C, class R, class... A>
struct ForwardSignature<R (C::*)(A...) const> : ForwardSignature<R (C::*)(A...)> {};

void require_arity(size_t expected, size_t given);

template <class M>
ForwardFunction forward_of(M& model) {
  if constexpr (std::is_same_v<M, torch::nn::SequentialImpl>) {
    // Sequential's forward is a template; it takes the one tensor its first module does.
    return [&model](const std::vector<torch::jit::IValue>& in) {
      require_arity(1, in.size());
      return torch::jit::IValue(model.forward(in[0].toTensor()));
    };
  } else {
    using Signature = ForwardSignature<decltype(&M::forward)>;
    return [&model](const std::vector<torch::jit::IValue>& in) {
      require_arity(Signature::arity, in.size());
      return Signature::call(model, &M::forward, in, std::make_index_sequence<Signature::arity>{});
    };
  }
}

template <class T, class = void>
struct IsModuleHolder : std::false_type {};
template <class T>
struct IsModuleHolder<T, std::void_t<typename T::ContainedType>> : std::is_base_of<torch::nn::Module, typename T::ContainedType> {};

template <class T>
struct IsSharedPtr : std::false_type {};
template <class T>
struct IsSharedPtr<std::shared_ptr<T>> : std::true_type {};

}  // namespace detail

/// Traces any torch::nn module whose forward is a single (non-template) member
/// function, or a torch::nn::Sequential: a module (`NetImpl&`), a ModuleHolder
/// (`Net`, `torch::nn::Conv2d`) or a std::shared_ptr to one. Forward arguments are
/// taken from `example_inputs` in order (Tensor, int64_t, double, bool, tuples…);
/// a returned tuple or vector of tensors becomes a TorchScript tuple or list.
template <class M>
torch::jit::Module trace(M& model, std::vector<torch::jit::IValue> example_inputs, TraceOptions options = {}) {
  if constexpr (detail::IsModuleHolder<M>::value) {
    require(!model.is_empty(), "trace: the module holder is empty; expected a constructed module");
    return trace(*model, std::move(example_inputs), std::move(options));
  } else if constexpr (detail::IsSharedPtr<M>::value) {
    require(model != nullptr, "trace: the module pointer is null; expected a constructed module");
    return trace(*model, std::move(example_inputs), std::move(options));
  } else {
    static_assert(std::is_base_of_v<torch::nn::Module, M>, "pare::trace expects a torch::nn module");
    return trace(model, detail::forward_of(model), std::move(example_inputs), std::move(options));
  }
}

}  // namespace pare
