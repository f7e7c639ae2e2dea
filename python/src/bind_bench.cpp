// Bindings for the benchmark harness: benchmark_models, its rows, and their table, JSON and HTML.

#include "bindings.hpp"

#include "pare/tools/bench.hpp"

namespace pare::python {
namespace {

// (name, module) pairs from a dict {name: ScriptModule} or an iterable of (name, ScriptModule).
std::vector<std::pair<std::string, torch::jit::Module>> named_models(const py::handle& models) {
  std::vector<std::pair<std::string, torch::jit::Module>> named;
  const py::object pairs =
      py::isinstance<py::dict>(models) ? models.attr("items")() : py::reinterpret_borrow<py::object>(models);
  for (const auto& item : pairs) {
    const auto pair = py::reinterpret_borrow<py::object>(item);
    require(py::isinstance<py::tuple>(pair) && py::len(pair) == 2 && py::isinstance<py::str>(pair[py::int_(0)]),
            "benchmark_models: models must be a dict {name: ScriptModule} or a list of (name, ScriptModule) pairs");
    named.emplace_back(pair[py::int_(0)].cast<std::string>(), unwrap_module(pair[py::int_(1)], "benchmark_models"));
  }
  return named;
}

}  // namespace

void bind_bench(py::module_& m) {
  py::class_<BenchRow>(m, "BenchRow", "One cell of benchmark_models: a model at a batch size and thread count.")
      .def_readonly("model", &BenchRow::model, "The model's name.")
      .def_readonly("batch", &BenchRow::batch, "Batch size.")
      .def_readonly("threads", &BenchRow::threads, "Intra-op threads.")
      .def_readonly("calls", &BenchRow::calls, "Forward passes measured.")
      .def_property_readonly("p50_seconds", [](const BenchRow& r) { return r.p50_ms / 1e3; }, "Median latency, seconds.")
      .def_property_readonly("p95_seconds", [](const BenchRow& r) { return r.p95_ms / 1e3; }, "95th percentile latency, seconds.")
      .def_property_readonly("p99_seconds", [](const BenchRow& r) { return r.p99_ms / 1e3; }, "99th percentile latency, seconds.")
      .def_readonly("p50_ms", &BenchRow::p50_ms, "p50_seconds in milliseconds (deprecated: use p50_seconds).")
      .def_readonly("p95_ms", &BenchRow::p95_ms, "p95_seconds in milliseconds (deprecated: use p95_seconds).")
      .def_readonly("p99_ms", &BenchRow::p99_ms, "p99_seconds in milliseconds (deprecated: use p99_seconds).")
      .def_readonly("samples_per_second", &BenchRow::samples_per_second, "Throughput, rows per second.")
      .def_readonly("p50_ratio", &BenchRow::p50_ratio, "p50 against the first model's at the same cell.")
      .def_readonly("throughput_ratio", &BenchRow::throughput_ratio,
                    "Throughput against the first model's at the same cell.")
      .def("__repr__", [](const BenchRow& r) {
        return "<BenchRow " + r.model + " batch " + std::to_string(r.batch) + " threads " + std::to_string(r.threads) +
               " p50 " + std::to_string(r.p50_ms) + " ms>";
      });
  const BenchOptions defaults;
  m.def(
      "benchmark_models",
      [](const py::object& models, std::vector<std::vector<int64_t>> inputs, std::vector<int64_t> batches,
         std::vector<int64_t> threads, double duration, int64_t warmup, int64_t rounds) {
        auto named = named_models(models);
        const auto seconds = from_seconds<std::chrono::milliseconds>(duration, "benchmark_models: duration", 3600, false);
        const auto options = BenchOptions()
                                 .inputs(std::move(inputs))
                                 .batches(std::move(batches))
                                 .threads(std::move(threads))
                                 .duration(seconds)
                                 .warmup(warmup)
                                 .rounds(rounds);
        py::gil_scoped_release release;
        return benchmark_models(std::move(named), options);
      },
      py::arg("models"), py::kw_only(), py::arg("inputs") = defaults.inputs(), py::arg("batches") = defaults.batches(),
      py::arg("threads") = defaults.threads(),
      py::arg("duration") = std::chrono::duration<double>(defaults.duration()).count(),
      py::arg("warmup") = defaults.warmup(), py::arg("rounds") = defaults.rounds(),
      "Latency and throughput of every model at every batch size and thread count, side by side: a list of "
      "BenchRow with ratios against the first model. duration: measuring seconds per cell, split into `rounds` "
      "slices run in turn across the models.");
  m.def("bench_table", &bench_table, py::arg("rows"), "The rows as a fixed-width table with ratios.");
  m.def("bench_json", &bench_json, py::arg("rows"), "The rows as a JSON array.");
  m.def("bench_html", &bench_html, py::arg("rows"), py::arg("title") = "pare bench",
        "One self-contained HTML page: latency percentiles and throughput of every cell as bar charts, and the table.");
}

}  // namespace pare::python
