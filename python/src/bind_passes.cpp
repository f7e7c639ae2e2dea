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

void bind_report(py::module_& m) {
  py::class_<LayerReport>(m, "LayerReport")
      .def_readonly("name", &LayerReport::name)
      .def_readonly("parameters", &LayerReport::parameters)
      .def_readonly("nonzeros", &LayerReport::nonzeros)
      .def_property_readonly("sparsity", &LayerReport::sparsity)
      .def_readonly("metrics", &LayerReport::metrics)
      .def_readonly("labels", &LayerReport::labels)
      .def_readonly("channels_before", &LayerReport::channels_before)
      .def_readonly("channels_after", &LayerReport::channels_after)
      .def("__repr__", [](const LayerReport& l) {
        return "<LayerReport " + l.name + " params=" + std::to_string(l.parameters) +
               " nonzeros=" + std::to_string(l.nonzeros) + ">";
      });
  py::class_<PassReport>(m, "PassReport")
      .def_readonly("pass_", &PassReport::pass)  // C++'s `pass`, a keyword in Python
      .def_readonly("seconds", &PassReport::seconds)
      .def_readonly("layers", &PassReport::layers)
      .def_readonly("metrics", &PassReport::metrics)
      .def_readonly("labels", &PassReport::labels)
      .def_readonly("series", &PassReport::series)
      .def_readonly("series_name", &PassReport::series_name)
      .def_property_readonly("total_parameters", &PassReport::total_parameters)
      .def_property_readonly("total_nonzeros", &PassReport::total_nonzeros)
      .def_property_readonly("total_sparsity", &PassReport::total_sparsity);
  py::class_<Report>(m, "Report")
      .def(py::init<>())
      .def_readonly("passes", &Report::passes)
      .def("__getitem__", &Report::at, py::arg("pass_name"))
      .def("__contains__", &Report::has)
      .def("to_json", &Report::to_json, py::arg("indent") = 2)
      .def_static("from_json", &Report::from_json)
      .def("to_string", &Report::to_string)
      .def("__str__", &Report::to_string)
      .def("to_html", &Report::to_html, py::arg("title") = "pare report",
           "One self-contained HTML page: summary, per-pass tables, per-layer SVG charts.")
      .def("_repr_html_", [](const Report& r) { return r.to_html(); });
}

void bind_pruning(py::module_& m) {
  py::class_<Pass, std::shared_ptr<Pass>>(m, "Pass").def_property_readonly("name", &Pass::name);
  py::class_<L1Prune, Pass, std::shared_ptr<L1Prune>>(m, "L1Prune")
      .def(py::init([](double amount, const std::string& scope, std::optional<int64_t> structured,
                       std::vector<std::string> include, std::vector<std::string> exclude) {
             auto options = L1PruneOptions(amount).scope(parse_scope_for("L1Prune", scope));
             if (structured) options.structured(*structured);
             return std::make_shared<L1Prune>(options.include(std::move(include)).exclude(std::move(exclude)));
           }),
           py::arg("amount") = 0.5, py::arg("scope") = to_string(L1PruneOptions(0.5).scope()), py::arg("structured") = py::none(),
           py::arg("include") = std::vector<std::string>{}, py::arg("exclude") = std::vector<std::string>{},
           "L1 magnitude pruning. structured=dim prunes whole slices along dim (0: output channels).");
  m.def("prune_count", &prune_count, py::arg("amount"), py::arg("n"));
  m.def("scope_names", &scope_names, "The pruning scopes L1Prune and `pare compress --scope` accept.");
}

void bind_export(py::module_& m) {
  py::class_<ExportTorchScript, Pass, std::shared_ptr<ExportTorchScript>>(m, "ExportTorchScript")
      .def(py::init([](const std::string& path, bool freeze, const py::object& verify_with, double tolerance,
                       bool channels_last) {
             return std::make_shared<ExportTorchScript>(
                 ExportTorchScriptOptions(path).freeze(freeze).tolerance(tolerance).channels_last(channels_last).verify_with(
                     to_input_batches(verify_with, "ExportTorchScript(verify_with=...)")));
           }),
           py::arg("path"), py::arg("freeze") = false, py::arg("verify_with") = py::none(),
           py::arg("tolerance") = 1e-5, py::arg("channels_last") = false);
  m.def("read_embedded_report", &read_embedded_report, py::arg("path"));
}

void bind_pipeline(py::module_& m) {
  // Returns (torch.jit.ScriptModule, Report, masks); pare/__init__.py shapes it for users.
  m.def("_run_pipeline", [](const std::vector<std::shared_ptr<Pass>>& passes, const py::object& scripted) {
    Pipeline pipeline;
    for (const auto& pass : passes) pipeline.add(pass);
    auto input = unwrap_module(scripted, "Pipeline.run");
    Result result;
    {
      py::gil_scoped_release release;
      result = pipeline.run(input);
    }
    return py::make_tuple(wrap_module(result.module), result.report, result.masks);
  });
}

}  // namespace

void bind_passes(py::module_& m) {
  bind_report(m);
  bind_pruning(m);
  bind_export(m);
  bind_pipeline(m);
}

}  // namespace pare::python
