// Bindings for int8 quantization: QuantizeInt8, QuantizeInt8Dynamic and the engine helpers.

#include "batch_source.hpp"

#include "pare/quantize/quantize.hpp"

namespace pare::python {
namespace {

ObserverOptions observer_options(const std::string& observer, double percentile, int64_t bins) {
  return ObserverOptions(parse_observer_kind(observer)).percentile(percentile).bins(bins);
}

// Progress callbacks run while the pipeline has released the GIL.
CalibrationProgress wrap_progress(const py::object& progress) {
  if (progress.is_none()) return {};
  if (!PyCallable_Check(progress.ptr()))
    throw Error("QuantizeInt8: progress must be callable as progress(done, total)");
  auto shared = std::make_shared<py::object>(progress);
  return [shared](int64_t done, int64_t total) {
    py::gil_scoped_acquire gil;
    (*shared)(done, total);
  };
}

// evaluate=: a list of (inputs, labels) pairs, or a callable module -> accuracy in percent.
Evaluation to_evaluation(const py::object& evaluate) {
  if (evaluate.is_none()) return {};
  if (PyCallable_Check(evaluate.ptr())) {
    auto held = hold(evaluate);
    return Evaluation([held](torch::jit::Module& module) {
      py::gil_scoped_acquire gil;
      return (*held)(wrap_module(module)).cast<double>();
    });
  }
  if (!py::isinstance<py::list>(evaluate) && !py::isinstance<py::tuple>(evaluate))
    throw Error("QuantizeInt8(evaluate=...): expected a list of (inputs, labels) pairs or a callable module -> "
                "accuracy in percent; got " + type_name(evaluate));
  std::vector<LabelledBatch> batches;
  for (const auto& item : evaluate) {
    if (!py::isinstance<py::tuple>(item) || py::len(item) != 2)
      throw Error("QuantizeInt8(evaluate=...): each item must be an (inputs, labels) pair; got " + type_name(item));
    const auto pair = item.cast<py::tuple>();
    batches.emplace_back(to_inputs(pair[0], "QuantizeInt8(evaluate=...)"), pair[1].cast<torch::Tensor>());
  }
  return Evaluation(std::move(batches));
}

py::dict info_dict(const QuantizationInfo& info) {
  py::dict out;
  out["engine"] = info.engine;
  out["mode"] = info.mode;
  out["json"] = info.json;
  return out;
}

}  // namespace

void bind_quantize(py::module_& m) {
  const QuantizeInt8Options defaults{CalibrationData(std::vector<std::vector<torch::jit::IValue>>{})};
  const ObserverOptions observer_defaults;
  const QuantizeInt8DynamicOptions dynamic_defaults;
  py::class_<QuantizeInt8, Pass, std::shared_ptr<QuantizeInt8>>(m, "QuantizeInt8")
      .def(py::init([](const py::object& calibration, const std::string& observer, bool per_channel,
                       std::vector<std::string> skip, const std::string& engine, double percentile, int64_t bins,
                       const py::object& progress, bool never_slower, bool try_dynamic, bool fold_residual_adds,
                       std::vector<int64_t> batch_sizes, std::optional<double> max_drop, const py::object& evaluate) {
             auto options = QuantizeInt8Options(to_batch_source<std::vector<torch::jit::IValue>>(
                                                    calibration, to_inputs, "QuantizeInt8(calibration=...)"))
                                .observer(observer_options(observer, percentile, bins))
                                .per_channel(per_channel)
                                .skip(std::move(skip))
                                .engine(engine)
                                .progress(wrap_progress(progress))
                                .never_slower(never_slower)
                                .try_dynamic(try_dynamic)
                                .fold_residual_adds(fold_residual_adds)
                                .batch_sizes(std::move(batch_sizes))
                                .max_drop(max_drop)
                                .evaluate(to_evaluation(evaluate));
             return std::make_shared<QuantizeInt8>(std::move(options));
           }),
           py::arg("calibration"), py::kw_only(), py::arg("observer") = to_string(observer_defaults.kind()),
           py::arg("per_channel") = defaults.per_channel(), py::arg("skip") = defaults.skip(),
           py::arg("engine") = defaults.engine(), py::arg("percentile") = observer_defaults.percentile(),
           py::arg("bins") = observer_defaults.bins(), py::arg("progress") = py::none(),
           py::arg("never_slower") = defaults.never_slower(), py::arg("try_dynamic") = defaults.try_dynamic(),
           py::arg("fold_residual_adds") = defaults.fold_residual_adds(),
           py::arg("batch_sizes") = defaults.batch_sizes(), py::arg("max_drop") = py::none(),
           py::arg("evaluate") = py::none(),
           "Static int8 post-training quantization. calibration: a list of tensors or tuples (one model "
           "input each), an iterable of them (a DataLoader, a generator: read once) or a callable epoch -> "
           "iterable; with two or more batches the last is held out for SQNR. observer: one of observer_names() "
           "(percentile and bins tune the percentile and histogram observers). per_channel: one weight scale per "
           "output channel. skip: layers left in float (names or glob patterns). engine: quantized engine (\"\": "
           "the best available). progress: callable (done, total) after each calibration batch. "
           "never_slower: time each island of int8 ops against float on the held-out batch and keep float "
           "where int8 loses. try_dynamic: with never_slower, also time each island's Linears as dynamic int8 "
           "and keep the fastest of static, dynamic and float (report labels form and why per Linear). "
           "fold_residual_adds: fold residual adds into their conv (onednn, LibTorch 2.x; the "
           "file then needs torch.backends.quantized.engine = 'onednn'). batch_sizes: the batch sizes never_slower "
           "times at (default: the held-out batch's). max_drop: accuracy budget in points; evaluate: a list of "
           "(inputs, labels) pairs (top-1) or a callable module -> accuracy in percent; the most sensitive "
           "layers go back to float until the drop is within max_drop.");
  py::class_<QuantizeInt8Dynamic, Pass, std::shared_ptr<QuantizeInt8Dynamic>>(m, "QuantizeInt8Dynamic")
      .def(py::init([](bool per_channel, std::vector<std::string> skip, const std::string& engine) {
             return std::make_shared<QuantizeInt8Dynamic>(
                 QuantizeInt8DynamicOptions().per_channel(per_channel).skip(std::move(skip)).engine(engine));
           }),
           py::kw_only(), py::arg("per_channel") = dynamic_defaults.per_channel(),
           py::arg("skip") = dynamic_defaults.skip(), py::arg("engine") = dynamic_defaults.engine(),
           "Dynamic int8: Linear weights int8, activations quantized on the fly; no calibration. per_channel, skip "
           "and engine as for QuantizeInt8.");
  m.def("observer_names", &observer_kind_names, "The observers QuantizeInt8 and `pare compress --observer` accept.");
  m.def(
      "load_calibration_file",
      [](const std::string& path, int64_t batch_size) {
        py::list batches;
        for (const auto& batch : load_calibration_file(path, batch_size)) {
          py::list inputs;
          for (const auto& input : batch) inputs.append(torch::jit::toPyObject(input));
          batches.append(py::tuple(inputs));
        }
        return batches;
      },
      py::arg("path"), py::kw_only(), py::arg("batch_size") = 32,
      "Calibration batches (tuples of tensors) from a torch.save file, as `pare compress --calib` reads it.");
  m.def("available_quantized_engines", &available_quantized_engines,
        "The quantized engines this LibTorch supports (\"onednn\", \"qnnpack\", \"fbgemm\", \"x86\").");
  m.def("current_quantized_engine", &current_quantized_engine, "The process's quantized engine now.");
  m.def("set_quantized_engine", &set_quantized_engine, py::arg("engine"),
        "Sets the process's quantized engine (as torch.backends.quantized.engine = engine).");
  m.def("quantization_info", [](const std::string& path) -> py::object {
    const auto info = read_quantization_info(path);
    return info ? py::object(info_dict(*info)) : py::object(py::none());
  }, py::arg("path"), "The engine and mode a pare int8 export recorded; None for other files.");
  m.def(
      "_engine_mismatch_warning",
      [](const std::string& path) {
        const auto info = read_quantization_info(path);
        return info ? engine_mismatch_warning(*info) : std::string();
      },
      py::arg("path"), "The warning pare.load_quantized gives for the file at path; \"\" if none.");
}

}  // namespace pare::python
