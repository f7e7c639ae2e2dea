// Differences between the LibTorch lines the extension builds against.

#include "bindings.hpp"

#include "../../src/core/compat.hpp"
#include "pare/core/error.hpp"

namespace pare::python {

c10::Device parse_device(const py::handle& value, const char* what) {
  const auto text = py::str(value).cast<std::string>();
  try {
    return c10::Device(text);
  } catch (const std::exception&) {
    throw Error(std::string(what) + ": '" + text + "' is not a device; expected \"cpu\", \"cuda\" or \"cuda:N\"");
  }
}

}  // namespace pare::python

#if PARE_TORCH_AT_LEAST(2, 0)
namespace torch::jit::detail {

// pybind_utils.h's type inference calls this hook, which pip's PyTorch defines
// in its own extension module (torch._C) and does not export to others. The
// hook only recognises torch.distributed's ProcessGroup, which pare never
// passes to a model; weak, so a LibTorch that does export it wins.
__attribute__((weak)) std::optional<InferredType> _tryToInferTypeImpl(py::handle /*input*/) {
  return std::nullopt;
}

}  // namespace torch::jit::detail
#endif
