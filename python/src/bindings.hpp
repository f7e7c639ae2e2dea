#pragma once
// Shared by the binding sources: each component binds itself into the module.

#include <torch/csrc/jit/python/pybind_utils.h>  // casters for torch.Tensor, IValue, ScriptModule
#include <torch/extension.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <initializer_list>
#include <string>

#include "pare/core/error.hpp"

namespace pare::python {

namespace py = pybind11;

void bind_passes(py::module_& m);
void bind_quantize(py::module_& m);
void bind_runner(py::module_& m);
void bind_distill(py::module_& m);
void bind_pool(py::module_& m);
void bind_cache(py::module_& m);
void bind_prune_channels(py::module_& m);
void bind_precision(py::module_& m);
void bind_bench(py::module_& m);
void bind_compress_to(py::module_& m);

/// A new exception class `pare.<name>` with these bases, set as m.<name>.
py::object new_exception(py::module_& m, const char* name, std::initializer_list<py::handle> bases, const char* doc);
/// Records the classes error_class() answers (module.cpp, bind_runner.cpp).
void set_error_classes(py::handle invalid_argument, py::handle runtime_failure);
void set_runner_error_classes(py::handle overloaded, py::handle timeout);
/// The Python class of a pare::Error kind: InvalidArgument -> pare.InvalidArgument,
/// Runtime -> pare.RuntimeFailure, Overloaded -> pare.Overloaded, Timeout -> pare.Timeout.
py::handle error_class(Error::Kind kind);

/// A C++ module as a Python torch.jit.ScriptModule.
py::object wrap_module(const torch::jit::Module& module);
/// The C++ module inside a Python torch.jit.ScriptModule; pare.Error (ValueError) otherwise.
torch::jit::Module unwrap_module(const py::handle& scripted, const char* what);

/// `value` with every tensor replaced by a detached alias: same storage, but no
/// link to a Python object. A C++ thread that drops the last reference to a
/// Python-linked tensor must take the GIL; unlinked tensors never need it.
c10::IValue unlinked(const c10::IValue& value);

/// One model input list from a Python value: a tensor becomes (tensor,), a
/// tuple/list becomes its elements (tensors or other TorchScript values), unlinked.
std::vector<torch::jit::IValue> to_inputs(const py::handle& value, const char* what);
/// A device from "cpu", "cuda", "cuda:1" or a torch.device; pare.Error (ValueError) otherwise.
c10::Device parse_device(const py::handle& value, const char* what);

/// Python's float seconds as a std::chrono duration (rounded to its unit);
/// pare.Error (ValueError) naming `what` unless finite and in [0, max_seconds]
/// (in (0, max_seconds] when zero is not allowed).
template <typename Duration>
Duration from_seconds(double seconds, const std::string& what, double max_seconds, bool zero_allowed = true) {
  const bool low_ok = zero_allowed ? seconds >= 0 : seconds > 0;
  require(std::isfinite(seconds) && low_ok && seconds <= max_seconds,
          what + " must be in " + (zero_allowed ? "[0, " : "(0, ") + std::to_string(int64_t(max_seconds)) +
              "] seconds, got " + std::to_string(seconds));
  return std::chrono::round<Duration>(std::chrono::duration<double>(seconds));
}

/// A list of input lists from any Python iterable of tensors or tuples.
std::vector<std::vector<torch::jit::IValue>> to_input_batches(const py::handle& iterable, const char* what);

}  // namespace pare::python
