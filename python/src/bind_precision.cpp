// Bindings for the ConvertPrecision pass.

#include "bindings.hpp"

#include <torch/csrc/Dtype.h>

#include "pare/convert/precision.hpp"

namespace pare::python {

void bind_precision(py::module_& m) {
  const ConvertPrecisionOptions defaults(at::kHalf);
  py::class_<ConvertPrecision, Pass, std::shared_ptr<ConvertPrecision>>(m, "ConvertPrecision")
      .def(py::init([](const py::object& dtype, std::vector<std::string> keep_fp32, bool channels_last) {
             if (!THPDtype_Check(dtype.ptr()))
               throw Error("ConvertPrecision: dtype must be torch.float16 or torch.bfloat16, got " +
                           py::str(dtype).cast<std::string>());
             const auto scalar_type = reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type;
             return std::make_shared<ConvertPrecision>(
                 ConvertPrecisionOptions(scalar_type).keep_fp32(std::move(keep_fp32)).channels_last(channels_last));
           }),
           py::arg("dtype"), py::kw_only(), py::arg("keep_fp32") = std::vector<std::string>{},
           py::arg("channels_last") = defaults.channels_last(),
           "Weights to fp16/bf16 (torch.float16 / torch.bfloat16) except the submodules matching keep_fp32 "
           "(glob patterns over module names); each layer casts its inputs to its own dtype. channels_last=True "
           "stores Conv2d weights NHWC, the layout cuDNN's fp16/bf16 kernels prefer.");
}

}  // namespace pare::python
