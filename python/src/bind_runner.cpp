// Bindings for the serving runner and the command line (python -m pare).

#include "bindings.hpp"

#include <iostream>

#include "pare/tools/cli.hpp"
#include "pare/serve/runner.hpp"

namespace pare::python {
namespace {

// pare.RunnerStats: C++'s RunnerStats field for field (batch_sizes as {size: count}).
void bind_runner_stats(py::module_& m) {
  py::class_<RunnerStats>(m, "RunnerStats", "A snapshot of a Runner's counters and latency percentiles.")
      .def_readonly("requests", &RunnerStats::requests)
      .def_readonly("failures", &RunnerStats::failures)
      .def_readonly("rejected", &RunnerStats::rejected)
      .def_readonly("timeouts", &RunnerStats::timeouts)
      .def_readonly("swaps", &RunnerStats::swaps)
      .def_readonly("batches", &RunnerStats::batches)
      .def_readonly("queue_depth", &RunnerStats::queue_depth)
      .def_readonly("model_copies", &RunnerStats::model_copies)
      .def_readonly("seconds", &RunnerStats::seconds)
      .def_readonly("p50_ms", &RunnerStats::p50_ms)
      .def_readonly("p95_ms", &RunnerStats::p95_ms)
      .def_readonly("p99_ms", &RunnerStats::p99_ms)
      .def_readonly("max_ms", &RunnerStats::max_ms)
      .def_readonly("caller_batches", &RunnerStats::caller_batches)
      .def_readonly("queue_seconds", &RunnerStats::queue_seconds)
      .def_readonly("assemble_seconds", &RunnerStats::assemble_seconds)
      .def_readonly("forward_seconds", &RunnerStats::forward_seconds)
      .def_readonly("max_batch", &RunnerStats::max_batch)
      .def_readonly("threads", &RunnerStats::threads)
      .def_readonly("concurrency", &RunnerStats::concurrency)
      .def_readonly("hint", &RunnerStats::hint)
      .def_readonly("batch_saving", &RunnerStats::batch_saving)
      .def_property_readonly("throughput", &RunnerStats::throughput)
      .def_property_readonly("batch_sizes", [](const RunnerStats& s) {
        py::dict sizes;
        for (size_t n = 1; n < s.batch_sizes.size(); ++n)
          if (s.batch_sizes[n]) sizes[py::int_(n)] = s.batch_sizes[n];
        return sizes;
      })
      .def("__repr__", [](const RunnerStats& s) {
        return "<RunnerStats requests=" + std::to_string(s.requests) + " batches=" + std::to_string(s.batches) +
               " failures=" + std::to_string(s.failures) + ">";
      });
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

constexpr double kMaxRunnerSeconds = 86400;

// max_batch, threads, batch_gap and concurrency are passed on only when given:
// the hint chooses those that are not (RunnerOptions::explicitly_set).
RunnerHolder make_runner(const py::object& module, const py::object& cache, const py::object& pool,
                         std::optional<int64_t> max_batch, double max_delay, std::optional<int> threads, int warmup,
                         const py::object& example_inputs, std::optional<double> batch_gap, size_t max_queue,
                         double timeout, std::vector<int64_t> preferred_batch_sizes, const py::object& cache_namespace,
                         const py::object& device, bool outputs_on_device, size_t model_copies,
                         std::optional<int> concurrency, std::optional<std::string> hint) {
  auto options = RunnerOptions().warmup(warmup).max_delay(
      from_seconds<std::chrono::microseconds>(max_delay, "Runner: max_delay", kMaxRunnerSeconds));
  if (max_batch) options.max_batch(*max_batch);
  if (threads) options.threads(*threads);
  if (concurrency) options.concurrency(*concurrency);
  if (hint) options.hint(parse_runner_hint(*hint));
  if (batch_gap)
    options.batch_gap(from_seconds<std::chrono::microseconds>(*batch_gap, "Runner: batch_gap", kMaxRunnerSeconds));
  options.max_queue(max_queue)
      .timeout(from_seconds<std::chrono::microseconds>(timeout, "Runner: timeout", kMaxRunnerSeconds))
      .preferred_batch_sizes(std::move(preferred_batch_sizes));
  if (!cache.is_none()) options.cache(cache.cast<std::shared_ptr<InferenceCache>>());
  if (!pool.is_none()) options.pool(pool.cast<std::shared_ptr<TensorPool>>());
  if (!example_inputs.is_none()) options.example_inputs(to_inputs(example_inputs, "Runner(example_inputs=...)"));
  if (!cache_namespace.is_none()) options.cache_namespace(cache_namespace.cast<std::string>());
  options.device(parse_device(device, "Runner(device=...)")).outputs_on_device(outputs_on_device);
  options.model_copies(model_copies);
  auto scripted = unwrap_module(module, "Runner");
  py::gil_scoped_release release;
  return RunnerHolder(new Runner(scripted, options));
}

// run(*inputs, timeout=None): the deadline is `timeout` seconds from now.
Runner::Deadline deadline_from(const py::kwargs& kwargs, const char* what) {
  Runner::Deadline deadline = Runner::Deadline::max();
  for (const auto& item : kwargs) {
    const auto key = py::str(item.first).cast<std::string>();
    require(key == "timeout", std::string(what) + ": unexpected keyword argument '" + key + "'; expected timeout=seconds");
    if (item.second.is_none()) continue;
    deadline = std::chrono::steady_clock::now() +
               from_seconds<std::chrono::steady_clock::duration>(item.second.cast<double>(), "Runner: timeout",
                                                                kMaxRunnerSeconds);
  }
  return deadline;
}

// The exception classes by error kind: pare.Overloaded, pare.Timeout (also a
// builtin TimeoutError), pare.Error, pare.InvalidArgument. Leaked references:
// they outlive the interpreter's teardown.
py::handle g_overloaded, g_timeout, g_error, g_invalid_argument;

py::object python_error(const RunOutcome& outcome) {
  py::handle type = g_error;
  if (outcome.kind == Error::Kind::Overloaded) type = g_overloaded;
  if (outcome.kind == Error::Kind::Timeout) type = g_timeout;
  if (outcome.kind == Error::Kind::InvalidArgument) type = g_invalid_argument;
  return type(*outcome.error);
}

// The asyncio side of run_async: a future of the running loop, resolved on the
// loop's own thread (call_soon_threadsafe) from the worker's callback.
struct AsyncCall {
  py::object loop, future, resolve;

  void deliver(RunOutcome outcome) {
    py::gil_scoped_acquire gil;
    try {
      py::object value = outcome.ok() ? torch::jit::toPyObject(outcome.output) : py::none();
      py::object error = outcome.ok() ? py::none() : python_error(outcome);
      loop.attr("call_soon_threadsafe")(resolve, future, value, error);
    } catch (py::error_already_set& e) {  // the loop closed before the answer came
      e.discard_as_unraisable("pare.Runner.run_async");
    }
    loop = future = resolve = py::object();  // dropped here, with the GIL held
  }
};

void resolve_future(const py::object& future, const py::object& value, const py::object& error) {
  if (future.attr("done")().cast<bool>()) return;  // cancelled by its awaiter
  if (error.is_none()) future.attr("set_result")(value);
  else future.attr("set_exception")(error);
}

py::object run_async(Runner& runner, const py::args& args, const py::kwargs& kwargs) {
  auto inputs = to_inputs(args, "Runner.run_async");
  const auto deadline = deadline_from(kwargs, "Runner.run_async");
  auto call = std::make_shared<AsyncCall>();
  call->loop = py::module_::import("asyncio").attr("get_running_loop")();
  call->future = call->loop.attr("create_future")();
  call->resolve = py::cpp_function(&resolve_future);
  py::object future = call->future;
  py::gil_scoped_release release;
  runner.run_async(std::move(inputs), [call](RunOutcome outcome) { call->deliver(std::move(outcome)); }, deadline);
  return future;
}

void bind_errors(py::module_& m) {
  g_error = py::object(m.attr("Error")).release();
  g_invalid_argument = py::object(m.attr("InvalidArgument")).release();
  g_overloaded = PyErr_NewException("pare._pare.Overloaded", g_error.ptr(), nullptr);
  py::object bases = py::make_tuple(g_error, py::handle(PyExc_TimeoutError));
  g_timeout = PyErr_NewException("pare._pare.Timeout", bases.ptr(), nullptr);
  if (!g_overloaded || !g_timeout) throw py::error_already_set();
  m.attr("Overloaded") = g_overloaded;
  m.attr("Timeout") = g_timeout;
  py::register_exception_translator([](std::exception_ptr p) {  // tried before the module's own translator
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      if (e.kind() == Error::Kind::Overloaded) return PyErr_SetString(g_overloaded.ptr(), e.what());
      if (e.kind() == Error::Kind::Timeout) return PyErr_SetString(g_timeout.ptr(), e.what());
      throw;
    }
  });
}

}  // namespace

void bind_runner(py::module_& m) {
  bind_errors(m);
  bind_runner_stats(m);
  py::class_<Runner, RunnerHolder>(m, "Runner", "Thread-safe serving of a ScriptModule with dynamic batching, a cache and a pool.")
      .def(py::init(&make_runner), py::arg("module"), py::arg("cache") = py::none(), py::arg("pool") = py::none(),
           py::arg("max_batch") = py::none(), py::arg("max_delay") = 1e-3, py::arg("threads") = py::none(),
           py::arg("warmup") = 0, py::arg("example_inputs") = py::none(), py::arg("batch_gap") = py::none(),
           py::arg("max_queue") = 0, py::arg("timeout") = 0.0,
           py::arg("preferred_batch_sizes") = std::vector<int64_t>{}, py::arg("cache_namespace") = py::none(),
           py::arg("device") = "cpu", py::arg("outputs_on_device") = false,
           py::arg("model_copies") = RunnerOptions().model_copies(), py::arg("concurrency") = py::none(),
           py::arg("hint") = py::none(),
           "max_batch (default 1), threads (1), batch_gap (seconds, 1e-4) and concurrency (0: no limit): None "
           "keeps the default, or the choice of hint ('throughput' or 'latency': tuned to the model and host at "
           "construction on example_inputs; see RunnerStats.hint and batch_saving).")
      .def("run",
           [](Runner& runner, py::args args, py::kwargs kwargs) {
             auto inputs = to_inputs(args, "Runner.run");
             const auto deadline = deadline_from(kwargs, "Runner.run");
             c10::IValue out;
             {
               py::gil_scoped_release release;
               out = runner.run(std::move(inputs), deadline);
             }
             return torch::jit::toPyObject(out);
           })
      .def("run_async", &run_async,
           "An asyncio future of the output (await it inside a running event loop); the loop never blocks.")
      .def("swap", [](Runner& runner, const py::object& module) {
             auto scripted = unwrap_module(module, "Runner.swap");
             py::gil_scoped_release release;
             runner.swap(scripted);
           }, py::arg("module"), "Serve `module` from now on; queued requests finish on the current one.")
      .def("__call__", [](py::object self, py::args args, py::kwargs kwargs) { return self.attr("run")(*args, **kwargs); })
      .def("stats", [](const Runner& r) {
             RunnerStats stats;
             {
               py::gil_scoped_release release;
               stats = r.stats();
             }
             return stats;
           })
      .def("to_prometheus", &Runner::to_prometheus, py::call_guard<py::gil_scoped_release>());

  m.def("cli_main", [](std::vector<std::string> args) {
    py::gil_scoped_release release;
    return cli_main(args, std::cout, std::cerr);
  }, py::arg("argv"), "Runs the pare command line (argv[0] is the program name); returns the exit code.");
  m.def("inspect_model", &inspect_model, py::arg("path"));
  m.def("inspect_report", &inspect_report, py::arg("path"),
        "The report embedded in a pare export (if any) plus the file's weights and size, as a Report.");
}

}  // namespace pare::python
