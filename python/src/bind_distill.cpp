// Bindings for knowledge distillation: the loss (autograd flows across the
// boundary: the tensors are torch's own), the Distill pass and apply_masks.

#include "bindings.hpp"

#include "pare/distill.hpp"

namespace pare::python {
namespace {

// A Python object held by C++ callbacks that run while the pipeline has
// released the GIL: copies share one reference, and the last owner drops it
// under the GIL.
std::shared_ptr<py::object> hold(py::object object) {
  return std::shared_ptr<py::object>(new py::object(std::move(object)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

std::string type_name(const py::handle& value) { return py::str(py::type::of(value)).cast<std::string>(); }

Batch to_batch(const py::handle& item, const char* what) {
  const bool pair = (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) && py::len(item) == 2;
  const auto tensor = py::module_::import("torch").attr("Tensor");
  if (!pair || !py::isinstance(item[py::int_(0)], tensor) || !py::isinstance(item[py::int_(1)], tensor))
    throw Error(std::string(what) + ": expected (input, target) pairs of tensors, got " + type_name(item));
  return {item[py::int_(0)].cast<torch::Tensor>(), item[py::int_(1)].cast<torch::Tensor>()};
}

std::vector<Batch> to_batches(const py::handle& items, const char* what) {
  std::vector<Batch> batches;
  for (const auto& item : items) batches.push_back(to_batch(item, what));
  return batches;
}

// Iterates a Python iterable (or what a callable returns for the epoch) each
// epoch, holding the GIL only while Python runs; the training step runs without it.
BatchStream python_stream(py::object source, bool call_with_epoch) {
  auto held = hold(std::move(source));
  return [held, call_with_epoch](int64_t epoch, const std::function<void(const Batch&)>& step) {
    py::gil_scoped_acquire gil;
    py::object iterable = call_with_epoch ? (*held)(epoch) : *held;
    for (const auto& item : py::iter(iterable)) {
      const Batch batch = to_batch(item, "Distill(data=...)");
      py::gil_scoped_release release;
      step(batch);
    }
  };
}

void set_data(DistillOptions& options, const py::object& data) {
  if (py::isinstance<py::list>(data) || py::isinstance<py::tuple>(data)) {
    options.data(to_batches(data, "Distill(data=...)"));  // plain lists become C++ tensors now
  } else if (PyCallable_Check(data.ptr())) {
    options.data(python_stream(data, true));
  } else if (py::hasattr(data, "__iter__")) {
    const int64_t length = py::hasattr(data, "__len__") ? int64_t(py::len(data)) : 0;
    options.data(python_stream(data, false), length);  // e.g. a torch DataLoader, iterated every epoch
  } else {
    throw Error("Distill: data must be a list of (input, target) tensor pairs, an iterable of them (a DataLoader), "
                "or a callable epoch -> iterable; got " + type_name(data));
  }
}

OptimizerKind parse_optimizer(const std::string& name) {
  if (name == "adam") return OptimizerKind::Adam;
  if (name == "sgd") return OptimizerKind::SGD;
  throw Error("Distill: optimizer '" + name + "' is not known; expected \"adam\" or \"sgd\"");
}

std::shared_ptr<Distill> make_distill(const py::object& teacher, const py::object& data, int64_t epochs, double lr,
                                      const std::string& optimizer, double momentum, double weight_decay,
                                      double temperature, double alpha, const py::object& eval_data, bool shuffle,
                                      uint64_t seed, const py::object& progress, const py::object& device) {
  auto options = DistillOptions()
                     .teacher(unwrap_module(teacher, "Distill(teacher=...)"))
                     .epochs(epochs)
                     .optimizer(parse_optimizer(optimizer))
                     .lr(lr)
                     .momentum(momentum)
                     .weight_decay(weight_decay)
                     .temperature(temperature)
                     .alpha(alpha)
                     .shuffle(shuffle)
                     .seed(seed);
  set_data(options, data);
  if (!device.is_none()) options.device(parse_device(device, "Distill(device=...)"));
  if (!eval_data.is_none()) options.evaluate_on(to_batches(eval_data, "Distill(eval_data=...)"));
  if (!progress.is_none()) {
    if (!PyCallable_Check(progress.ptr()))
      throw Error("Distill: progress must be a callable (step, steps, loss), got " + type_name(progress));
    auto held = hold(progress);
    options.progress([held](int64_t step, int64_t steps, double loss) {
      py::gil_scoped_acquire gil;
      (*held)(step, steps, loss);
    });
  }
  return std::make_shared<Distill>(std::move(options));
}

}  // namespace

void bind_distill(py::module_& m) {
  m.def(
      "distillation_loss",
      [](const torch::Tensor& student, const torch::Tensor& teacher, const std::optional<torch::Tensor>& targets,
         double temperature, double alpha) {
        return distillation_loss(student, teacher, targets ? *targets : torch::Tensor(),
                                 DistillLossOptions().temperature(temperature).alpha(alpha));
      },
      py::arg("student_logits"), py::arg("teacher_logits"), py::arg("targets") = py::none(),
      py::arg("temperature") = 4.0, py::arg("alpha") = 0.7,
      "alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (batchmean) + (1 - alpha) * "
      "cross_entropy(student, targets). Differentiable w.r.t. the student; the teacher is detached.");

  py::class_<Distill, Pass, std::shared_ptr<Distill>>(m, "Distill")
      .def(py::init(&make_distill), py::arg("teacher"), py::arg("data"), py::arg("epochs") = 1,
           py::arg("lr") = 1e-3, py::arg("optimizer") = "adam", py::arg("momentum") = 0.9,
           py::arg("weight_decay") = 0.0, py::arg("temperature") = 4.0, py::arg("alpha") = 0.7,
           py::arg("eval_data") = py::none(), py::arg("shuffle") = true, py::arg("seed") = 0,
           py::arg("progress") = py::none(), py::arg("device") = py::none(),
           "Fine-tunes the pipeline's module against `teacher`, keeping pruning masks. `data`: a list of "
           "(input, target) pairs, an iterable such as a DataLoader, or a callable epoch -> iterable. "
           "device: where training runs (\"cuda\"; default: where the module is).");

  m.def(
      "apply_masks",
      [](const py::object& scripted, const Masks& masks) {
        auto module = unwrap_module(scripted, "apply_masks");
        apply_masks(module, masks);
      },
      py::arg("module"), py::arg("masks"),
      "Zeroes, in place, every weight whose mask (parameter name -> bool tensor) is False.");
}

}  // namespace pare::python
