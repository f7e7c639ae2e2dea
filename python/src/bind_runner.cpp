// Bindings for the serving runner and the command line (python -m pare).

#include "bindings.hpp"

#include <iostream>

#include "pare/cli.hpp"
#include "pare/runner.hpp"

namespace pare::python {
namespace {

py::dict stats_dict(const RunnerStats& s) {
  py::dict d;
  d["requests"] = s.requests;
  d["failures"] = s.failures;
  d["forward_passes"] = s.batches;
  d["seconds"] = s.seconds;
  d["throughput"] = s.throughput();
  d["p50_ms"] = s.p50_ms;
  d["p95_ms"] = s.p95_ms;
  d["p99_ms"] = s.p99_ms;
  d["max_ms"] = s.max_ms;
  py::dict sizes;
  for (size_t n = 1; n < s.batch_sizes.size(); ++n)
    if (s.batch_sizes[n]) sizes[py::int_(n)] = s.batch_sizes[n];
  d["batch_sizes"] = sizes;
  return d;
}

// The runner's destructor joins its workers; it must not hold the GIL while a
// worker might need it (to drop a Python-linked tensor, say).
struct DestroyWithoutGil {
  void operator()(Runner* runner) const {
    py::gil_scoped_release release;
    delete runner;
  }
};
using RunnerHolder = std::unique_ptr<Runner, DestroyWithoutGil>;

RunnerHolder make_runner(const py::object& module, const py::object& cache, const py::object& pool,
                                    int64_t max_batch, double max_delay_ms, int threads, int warmup,
                                    const py::object& example_inputs, const py::object& cache_namespace,
                                    const py::object& device, bool outputs_on_device) {
  auto options = RunnerOptions().max_batch(max_batch).threads(threads).warmup(warmup).max_delay(
      std::chrono::microseconds(int64_t(max_delay_ms * 1000)));
  if (!cache.is_none()) options.cache(cache.cast<std::shared_ptr<InferenceCache>>());
  if (!pool.is_none()) options.pool(pool.cast<TensorPool>());
  if (!example_inputs.is_none()) options.example_inputs(to_inputs(example_inputs, "Runner(example_inputs=...)"));
  if (!cache_namespace.is_none()) options.cache_namespace(cache_namespace.cast<std::string>());
  options.device(parse_device(device, "Runner(device=...)")).outputs_on_device(outputs_on_device);
  auto scripted = unwrap_module(module, "Runner");
  py::gil_scoped_release release;
  return RunnerHolder(new Runner(scripted, options));
}

}  // namespace

void bind_runner(py::module_& m) {
  py::class_<Runner, RunnerHolder>(m, "Runner", "Thread-safe serving of a ScriptModule with dynamic batching, a cache and a pool.")
      .def(py::init(&make_runner), py::arg("module"), py::arg("cache") = py::none(), py::arg("pool") = py::none(),
           py::arg("max_batch") = 1, py::arg("max_delay_ms") = 1.0, py::arg("threads") = 1, py::arg("warmup") = 0,
           py::arg("example_inputs") = py::none(), py::arg("cache_namespace") = py::none(), py::arg("device") = "cpu",
           py::arg("outputs_on_device") = false)
      .def("run",
           [](Runner& runner, py::args args) {
             auto inputs = to_inputs(args, "Runner.run");
             c10::IValue out;
             {
               py::gil_scoped_release release;
               out = runner.run(std::move(inputs));
             }
             return torch::jit::toPyObject(out);
           })
      .def("__call__", [](py::object self, py::args args) { return self.attr("run")(*args); })
      .def("stats", [](const Runner& r) {
             RunnerStats stats;
             {
               py::gil_scoped_release release;
               stats = r.stats();
             }
             return stats_dict(stats);
           })
      .def("metrics_text", &Runner::metrics_text, py::call_guard<py::gil_scoped_release>());

  m.def("cli_main", [](std::vector<std::string> args) {
    py::gil_scoped_release release;
    return cli_main(args, std::cout, std::cerr);
  }, py::arg("argv"), "Runs the pare command line (argv[0] is the program name); returns the exit code.");
  m.def("inspect_model", &inspect_model, py::arg("path"));
  m.def("inspect_report", &inspect_report, py::arg("path"),
        "The report embedded in a pare export (if any) plus the file's weights and size, as a Report.");
}

}  // namespace pare::python
