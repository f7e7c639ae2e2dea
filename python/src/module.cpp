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

namespace {
// The Python classes by error kind; references held for the interpreter's life.
py::handle g_invalid_argument, g_runtime_failure, g_overloaded, g_timeout;
}  // namespace

py::object new_exception(py::module_& m, const char* name, std::initializer_list<py::handle> bases, const char* doc) {
  py::tuple base_tuple(bases.size());
  size_t i = 0;
  for (const auto& base : bases) base_tuple[i++] = py::reinterpret_borrow<py::object>(base);
  const std::string qualified = "pare." + std::string(name);
  auto type = py::reinterpret_steal<py::object>(
      PyErr_NewExceptionWithDoc(qualified.c_str(), doc, base_tuple.ptr(), nullptr));
  if (!type) throw py::error_already_set();
  m.attr(name) = type;
  return type;
}

void set_error_classes(py::handle invalid_argument, py::handle runtime_failure) {
  g_invalid_argument = invalid_argument;
  g_runtime_failure = runtime_failure;
}

void set_runner_error_classes(py::handle overloaded, py::handle timeout) {
  g_overloaded = overloaded;
  g_timeout = timeout;
}

py::handle error_class(Error::Kind kind) {
  switch (kind) {
    case Error::Kind::InvalidArgument: return g_invalid_argument;
    case Error::Kind::Overloaded: return g_overloaded ? g_overloaded : g_runtime_failure;
    case Error::Kind::Timeout: return g_timeout ? g_timeout : g_runtime_failure;
    case Error::Kind::Runtime: break;
  }
  return g_runtime_failure;
}

}  // namespace pare::python

PYBIND11_MODULE(_pare, m) {
  namespace py = pybind11;
  using namespace pare::python;
  m.doc() = "pare: compress and serve TorchScript models (C++ core)";
  m.attr("__version__") = pare::version;

  // One tree: pare.Error (an Exception) is the base; pare.InvalidArgument adds
  // ValueError and pare.RuntimeFailure adds RuntimeError, and no class is both,
  // so `except RuntimeError` never swallows a bad argument. bind_runner adds
  // pare.Overloaded and pare.Timeout under pare.RuntimeFailure.
  static py::exception<pare::Error> error(m, "Error", PyExc_Exception);
  error.attr("__doc__") = "Base of every exception pare raises; catch it to catch them all.";
  error.attr("__module__") = "pare";
  static py::object invalid_argument = new_exception(m, "InvalidArgument", {error, PyExc_ValueError},
      "A bad argument: the message says what was wrong and what is expected (a pare.Error and a ValueError).");
  static py::object runtime_failure = new_exception(m, "RuntimeFailure", {error, PyExc_RuntimeError},
      "A failure while running valid arguments: a model that fails, an unwritable file (a pare.Error and a "
      "RuntimeError).");
  set_error_classes(invalid_argument, runtime_failure);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const pare::Error& e) {
      PyErr_SetString(error_class(e.kind()).ptr(), e.what());
    }
  });

  // A LibTorch error that some path still lets through surfaces as
  // pare.RuntimeFailure with LibTorch's message minus its C++ backtrace. Local
  // to this extension: torch's own functions keep their translation.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::Error& e) {
      PyErr_SetString(runtime_failure.ptr(), e.what_without_backtrace());
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
  bind_compress_to(m);
}
