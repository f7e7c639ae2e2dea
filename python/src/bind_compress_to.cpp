// Bindings for CompressTo: the search against a latency target and an accuracy budget.

#include "latency_args.hpp"

#include "pare/compress/compress_to.hpp"

namespace pare::python {
namespace {

std::vector<Batch> to_labelled(const py::handle& items, const char* what) {
  const auto tensor = py::module_::import("torch").attr("Tensor");
  if (!py::hasattr(items, "__iter__"))
    throw Error(std::string(what) + ": expected a list of (inputs, labels) pairs of tensors, got " +
                py::str(py::type::of(items)).cast<std::string>());
  std::vector<Batch> batches;
  for (const auto& item : items) {
    const bool pair = (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) && py::len(item) == 2;
    if (!pair || !py::isinstance(item[py::int_(0)], tensor) || !py::isinstance(item[py::int_(1)], tensor))
      throw Error(std::string(what) + ": expected (inputs, labels) pairs of tensors, got " +
                  py::str(py::type::of(item)).cast<std::string>());
    // Detached: the same storage without a link to the Python tensors, which C++ may drop without the GIL.
    batches.emplace_back(item[py::int_(0)].cast<torch::Tensor>().detach(),
                         item[py::int_(1)].cast<torch::Tensor>().detach());
  }
  return batches;
}

std::shared_ptr<CompressTo> make_compress_to(const py::handle& train, const py::handle& eval, double max_drop,
                                             std::optional<double> target_speedup, std::optional<double> target_seconds,
                                             int64_t batch, int threads, int repeats, const std::string& cache_dir,
                                             bool int8, int64_t epochs, int64_t max_candidates,
                                             int64_t calibration_batches, double lr, const std::string& engine) {
  const auto target =
      to_latency(target_speedup, target_seconds, batch, threads, repeats, cache_dir, "CompressTo", true);
  return std::make_shared<CompressTo>(CompressToOptions(*target, max_drop, to_labelled(train, "CompressTo(train=...)"),
                                                        to_labelled(eval, "CompressTo(eval=...)"))
                                          .int8(int8)
                                          .epochs(epochs)
                                          .max_candidates(max_candidates)
                                          .calibration_batches(calibration_batches)
                                          .lr(lr)
                                          .engine(engine));
}

}  // namespace

void bind_compress_to(py::module_& m) {
  const CompressToOptions defaults(Latency::speedup(2), 0, {}, {});
  const auto latency = Latency::speedup(2);
  py::class_<CompressTo, Pass, std::shared_ptr<CompressTo>>(m, "CompressTo")
      .def(py::init([](const py::object& train, const py::object& eval, double max_drop,
                       std::optional<double> target_speedup, std::optional<double> target_seconds, int64_t batch,
                       int threads, int repeats, const std::string& cache_dir, bool int8, int64_t epochs,
                       int64_t max_candidates, int64_t calibration_batches, double lr, const std::string& engine) {
             return make_compress_to(train, eval, max_drop, target_speedup, target_seconds, batch, threads, repeats,
                                     cache_dir, int8, epochs, max_candidates, calibration_batches, lr, engine);
           }),
           py::arg("train"), py::arg("eval"), py::kw_only(), py::arg("max_drop"),
           py::arg("target_speedup") = py::none(), py::arg("target_seconds") = py::none(),
           py::arg("batch") = latency.batch(), py::arg("threads") = latency.threads(),
           py::arg("repeats") = latency.repeats(), py::arg("cache_dir") = latency.cache_dir(),
           py::arg("int8") = defaults.int8(), py::arg("epochs") = defaults.epochs(),
           py::arg("max_candidates") = defaults.max_candidates(),
           py::arg("calibration_batches") = defaults.calibration_batches(), py::arg("lr") = defaults.lr(),
           py::arg("engine") = defaults.engine(),
           "Searches channel widths (a latency target for PruneChannels), re-estimates BatchNorm statistics, "
           "distills (at most `epochs` per candidate) and, with int8=True, quantizes under the budget left, "
           "measuring each candidate as an exported file against the input at `batch` rows, until one is "
           "target_speedup times faster (or takes at most target_seconds per call) and loses at most max_drop "
           "points of top-1 on `eval`; else keeps the best found. train/eval: lists of (inputs, labels) pairs. "
           "The report entry 'compress_to' has one row per candidate and the label 'message'.");
}

}  // namespace pare::python
