// The pare._pare extension: exception mapping and the component bindings.

#include "bindings.hpp"
#include "pare/version.hpp"

#include "pare/core/error.hpp"
#include "../../src/core/ivalue_walk.hpp"  // internal, header-only

namespace pare::python {

py::object wrap_module(const torch::jit::Module& module) {
  return py::module_::import("torch.jit._recursive").attr("wrap_cpp_module")(module);
}

torch::jit::Module unwrap_module(const py::handle& scripted, const char* what) {
  const auto script_module = py::module_::import("torch.jit").attr("ScriptModule");
  if (!py::isinstance(scripted, script_module))
    throw Error(std::string(what) + ": expected a torch.jit.ScriptModule (torch.jit.script(model)), got " +
                py::str(py::type::of(scripted)).cast<std::string>());
  return scripted.attr("_c").cast<torch::jit::Module>();
}

c10::IValue unlinked(const c10::IValue& value) {
  return detail::map_tensors(value, [](const at::Tensor& t) { return t.detach(); });
}

std::vector<torch::jit::IValue> to_inputs(const py::handle& value, const char* what) {
  std::vector<torch::jit::IValue> inputs;
  auto convert = [&](const py::handle& item) {
    try {
      inputs.push_back(unlinked(torch::jit::toTypeInferredIValue(item)));
    } catch (const std::exception& e) {
      throw Error(std::string(what) + ": cannot pass a " + py::str(py::type::of(item)).cast<std::string>() +
                  " to a TorchScript model; expected tensors or tuples of tensors");
    }
  };
  if (py::isinstance<py::tuple>(value) || py::isinstance<py::list>(value)) {
    for (const auto& item : value) convert(item);
  } else {
    convert(value);
  }
  return inputs;
}

std::vector<std::vector<torch::jit::IValue>> to_input_batches(const py::handle& iterable, const char* what) {
  std::vector<std::vector<torch::jit::IValue>> batches;
  if (iterable.is_none()) return batches;
  if (!py::hasattr(iterable, "__iter__"))
    throw Error(std::string(what) + ": expected a list or iterable of tensors or tuples, got " +
                py::str(py::type::of(iterable)).cast<std::string>());
  for (const auto& item : iterable) batches.push_back(to_inputs(item, what));
  return batches;
}

}  // namespace pare::python

PYBIND11_MODULE(_pare, m) {
  namespace py = pybind11;
  using namespace pare::python;
  m.doc() = "pare: compress and serve TorchScript models (C++ core)";
  m.attr("__version__") = pare::version;

  // pare.Error derives from RuntimeError; pare.InvalidArgument from both
  // pare.Error and ValueError, so `except ValueError` catches bad arguments.
  static py::exception<pare::Error> error(m, "Error", PyExc_RuntimeError);
  static py::object invalid_argument = [&] {
    py::object bases = py::make_tuple(error, py::handle(PyExc_ValueError));
    return py::reinterpret_steal<py::object>(
        PyErr_NewException("pare._pare.InvalidArgument", bases.ptr(), nullptr));
  }();
  m.attr("InvalidArgument") = invalid_argument;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pare::Error& e) {
      PyErr_SetString(e.kind() == pare::Error::Kind::InvalidArgument ? invalid_argument.ptr() : error.ptr(),
                      e.what());
    }
  });

  // A LibTorch error that some path still lets through surfaces as pare.Error
  // (a RuntimeError) with LibTorch's message minus its C++ backtrace. Local to
  // this extension: torch's own functions keep their translation.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {
      PyErr_SetString(error.ptr(), e.what_without_backtrace());
    }
  });

  bind_passes(m);
  bind_quantize(m);
  bind_runner(m);
  bind_distill(m);
  bind_pool(m);
  bind_cache(m);
  bind_prune_channels(m);
  bind_precision(m);
  bind_bench(m);
}
