// Bindings for the report, the pipeline and the pruning and export passes.

#include "bindings.hpp"

#include "pare/convert/export.hpp"
#include "pare/prune/prune.hpp"

namespace pare::python {
namespace {

Scope parse_scope_for(const std::string& who, const std::string& scope) {
  try {
    return parse_scope(scope);
  } catch (const Error& e) {
    throw Error(who + ": " + e.what());
  }
}

// A pare.Pass written in Python: run(state, entry) is the Python method; the
// name is the subclass's `name` (a str attribute, a property or a method) or,
// without one, the class name.
class PyPass : public Pass {
 public:
  std::string name() const override {
    py::gil_scoped_acquire gil;
    const auto* base = py::detail::get_type_info(typeid(Pass));
    py::handle self = py::detail::get_object_handle(static_cast<const Pass*>(this), base);
    if (!self) return "python_pass";
    const py::handle type = py::type::handle_of(self);
    for (const auto& cls : type.attr("__mro__")) {
      if (cls.is(py::handle(reinterpret_cast<PyObject*>(base->type)))) break;
      if (!cls.attr("__dict__").contains("name")) continue;
      py::object value = self.attr("name");
      if (PyCallable_Check(value.ptr())) value = value();
      require(py::isinstance<py::str>(value), type.attr("__name__").cast<std::string>() +
                                                  ".name: expected a str, got " + type_name(value));
      return value.cast<std::string>();
    }
    return type.attr("__name__").cast<std::string>();
  }
  // By pointer: pybind11 would hand Python copies of references, and the
  // pass must change the pipeline's own state and report entry.
  void run(Result& state, PassReport& entry) const override {
    PYBIND11_OVERRIDE_PURE(void, Pass, run, &state, &entry);
  }

 private:
  static std::string type_name(const py::handle& value) { return py::str(py::type::of(value)).cast<std::string>(); }
};

void bind_layer_report(py::module_& m) {
  py::class_<LayerReport>(m, "LayerReport", "One layer (one weight tensor) as a pass left it.")
      .def_readonly("name", &LayerReport::name, "Parameter name, e.g. \"features.0.weight\".")
      .def_readonly("parameters", &LayerReport::parameters, "Number of weights.")
      .def_readonly("nonzeros", &LayerReport::nonzeros, "Weights that are not zero.")
      .def_property_readonly("sparsity", &LayerReport::sparsity, "1 - nonzeros / parameters.")
      .def_readonly("metrics", &LayerReport::metrics, "Pass-specific figures, e.g. {\"scale\": 0.02}.")
      .def_readonly("labels", &LayerReport::labels, "Pass-specific labels, e.g. {\"observer\": \"histogram\"}.")
      .def_readonly("channels_before", &LayerReport::channels_before,
                    "Channels before a pass that removes channels; None for other passes.")
      .def_readonly("channels_after", &LayerReport::channels_after,
                    "Channels after a pass that removes channels; None for other passes.")
      .def("__repr__", [](const LayerReport& l) {
        return "<LayerReport " + l.name + " params=" + std::to_string(l.parameters) +
               " nonzeros=" + std::to_string(l.nonzeros) + ">";
      });
}

void bind_report(py::module_& m) {
  bind_layer_report(m);
  py::class_<PassReport>(m, "PassReport",
                         "One pass's entry in a Report. A Python pass fills its own: the dict and list attributes "
                         "return copies, so assign them whole (entry.metrics = {...}).")
      .def_readonly("pass_", &PassReport::pass, "The pass's name (C++'s `pass`, a keyword in Python).")
      .def_readonly("seconds", &PassReport::seconds, "Wall time of the pass, seconds.")
      .def_readwrite("layers", &PassReport::layers, "The layers as the pass left them (list of LayerReport).")
      .def_readwrite("metrics", &PassReport::metrics, "Pass-level figures, e.g. {\"file_bytes\": 1.2e6}.")
      .def_readwrite("labels", &PassReport::labels, "Pass-level labels, e.g. {\"path\": \"m.pt\"}.")
      .def_readwrite("series", &PassReport::series, "A series of figures, e.g. the loss per epoch.")
      .def_readwrite("series_name", &PassReport::series_name, "What `series` holds.")
      .def_property_readonly("total_parameters", &PassReport::total_parameters, "Weights over every layer.")
      .def_property_readonly("total_nonzeros", &PassReport::total_nonzeros, "Non-zero weights over every layer.")
      .def_property_readonly("total_sparsity", &PassReport::total_sparsity, "1 - total_nonzeros / total_parameters.")
      .def("__repr__", [](const PassReport& p) {
        return "<PassReport " + p.pass + " layers=" + std::to_string(p.layers.size()) + ">";
      });
  py::class_<Report>(m, "Report", "What each pass did, per layer: a table (str()), JSON or HTML.")
      .def(py::init<>(), "An empty report.")
      .def_readonly("passes", &Report::passes, "The entries of every pass that ran, in order (list of PassReport).")
      .def("__getitem__", &Report::at, py::arg("pass_name"),
           "The last entry of the pass with this name; pare.InvalidArgument if none ran.")
      .def("__contains__", &Report::has, py::arg("pass_name"), "Whether a pass of this name ran.")
      .def("to_json", &Report::to_json, py::arg("indent") = 2,
           "Pretty-printed JSON (stable keys: \"passes\", \"pass\", \"seconds\", \"layers\", ...).")
      .def_static("from_json", &Report::from_json, py::arg("text"),
                  "Parses what to_json() wrote; pare.InvalidArgument on malformed text.")
      .def("to_string", &Report::to_string, "A readable fixed-width table, one block per pass.")
      .def("__str__", &Report::to_string, "Same as to_string().")
      .def("to_html", &Report::to_html, py::arg("title") = "pare report",
           "One self-contained HTML page: summary, per-pass tables, per-layer SVG charts.")
      .def("_repr_html_", [](const Report& r) { return r.to_html(); }, "Jupyter's rich display: to_html().");
}

void bind_result(py::module_& m) {
  py::class_<Result>(m, "Result",
                     "What Pipeline.run returns, and the state its passes share while it runs: module, report and "
                     "masks. Unpacks as (module, report): `out, report = pipeline.run(scripted)`.")
      .def_property(
          "module", [](const Result& r) { return wrap_module(r.module); },
          [](Result& r, const py::object& module) { r.module = unwrap_module(module, "Result.module"); },
          "The transformed copy (a torch.jit.ScriptModule); the pipeline's input is never modified.")
      .def_readwrite("report", &Result::report, "One entry per pass (pare.Report).")
      .def_readwrite("masks", &Result::masks,
                     "Pruning masks by parameter name (bool tensors, True = kept); a copy, assign it whole.")
      .def("__iter__", [](const Result& r) { return py::iter(py::make_tuple(wrap_module(r.module), r.report)); },
           "Iterates (module, report), so the result unpacks like a pair.")
      .def("__repr__", [](const Result& r) {
        return "<Result passes=" + std::to_string(r.report.passes.size()) +
               " masks=" + std::to_string(r.masks.size()) + ">";
      });
}

void bind_pruning(py::module_& m) {
  py::class_<Pass, PyPass, std::shared_ptr<Pass>>(
      m, "Pass",
      "A step of a Pipeline. Subclass it in Python: define run(self, state: pare.Result, entry: pare.PassReport) "
      "-> None, which changes state.module (in place, or assigns a new one), and optionally a `name`; call "
      "super().__init__() in __init__.")
      .def(py::init<>(), "For subclasses: call super().__init__().")
      .def_property_readonly("name", &Pass::name, "The pass's name in reports, e.g. \"l1_prune\".");
  const L1PruneOptions defaults(0.0);  // amount is required, as in C++
  py::class_<L1Prune, Pass, std::shared_ptr<L1Prune>>(m, "L1Prune")
      .def(py::init([](double amount, const std::string& scope, std::optional<int64_t> structured,
                       std::vector<std::string> include, std::vector<std::string> exclude) {
             auto options = L1PruneOptions(amount).scope(parse_scope_for("L1Prune", scope));
             options.structured(structured);
             return std::make_shared<L1Prune>(options.include(std::move(include)).exclude(std::move(exclude)));
           }),
           py::arg("amount"), py::kw_only(), py::arg("scope") = to_string(defaults.scope()),
           py::arg("structured") = defaults.structured(), py::arg("include") = defaults.include(),
           py::arg("exclude") = defaults.exclude(),
           "L1 magnitude pruning: zeroes the `amount` fraction of smallest |w| in every selected Linear/Conv weight "
           "(scope \"local\") or across them all (\"global\"). structured=dim prunes whole slices along dim "
           "(0: output channels). include/exclude: glob patterns over parameter names.");
  m.def("prune_count", &prune_count, py::arg("amount"), py::arg("n"),
        "How many of n weights L1Prune zeroes for `amount`: round(amount * n), half to even.");
  m.def("scope_names", &scope_names, "The pruning scopes L1Prune and `pare compress --scope` accept.");
}

void bind_export(py::module_& m) {
  const ExportTorchScriptOptions defaults("");
  py::class_<ExportTorchScript, Pass, std::shared_ptr<ExportTorchScript>>(m, "ExportTorchScript")
      .def(py::init([](const std::string& path, bool freeze, const py::object& verify_with, double tolerance,
                       bool channels_last) {
             return std::make_shared<ExportTorchScript>(
                 ExportTorchScriptOptions(path).freeze(freeze).tolerance(tolerance).channels_last(channels_last).verify_with(
                     to_input_batches(verify_with, "ExportTorchScript(verify_with=...)")));
           }),
           py::arg("path"), py::kw_only(), py::arg("freeze") = defaults.freeze(), py::arg("verify_with") = py::none(),
           py::arg("tolerance") = defaults.tolerance(), py::arg("channels_last") = defaults.channels_last(),
           "Writes the module to `path` atomically, with the report embedded. freeze: torch.jit.freeze it first. "
           "verify_with: inputs (tensors or tuples) on which the reloaded file must match the module within "
           "`tolerance`. channels_last: NHWC conv weights (needs freeze and verify_with).");
  m.def("read_embedded_report", &read_embedded_report, py::arg("path"),
        "The report JSON a pare export embedded in the file at `path` (Report.from_json reads it); \"\" if none.");
}

void bind_pipeline(py::module_& m) {
  m.def("_run_pipeline", [](const std::vector<std::shared_ptr<Pass>>& passes, const py::object& scripted) {
    Pipeline pipeline;
    for (const auto& pass : passes) pipeline.add(pass);
    auto input = unwrap_module(scripted, "Pipeline.run");
    Result result;
    {
      py::gil_scoped_release release;
      result = pipeline.run(input);
    }
    return result;
  }, py::arg("passes"), py::arg("module"), "Runs the passes in order on a copy of module; pare.Pipeline calls it.");
}

}  // namespace

void bind_passes(py::module_& m) {
  bind_report(m);
  bind_result(m);
  bind_pruning(m);
  bind_export(m);
  bind_pipeline(m);
}

}  // namespace pare::python
