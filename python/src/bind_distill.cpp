// Bindings for knowledge distillation: the loss (autograd flows across the
// boundary: the tensors are torch's own), the Distill pass and apply_masks.

#include "batch_source.hpp"

#include "pare/distill/distill.hpp"

namespace pare::python {
namespace {

Batch to_batch(const py::handle& item, const char* what) {
  const bool pair = (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) && py::len(item) == 2;
  const auto tensor = py::module_::import("torch").attr("Tensor");
  if (!pair || !py::isinstance(item[py::int_(0)], tensor) || !py::isinstance(item[py::int_(1)], tensor))
    throw Error(std::string(what) + ": expected (input, target) pairs of tensors, got " + type_name(item));
  // Detached: the same storage without a link to the Python tensors, which C++ may drop without the GIL.
  return {item[py::int_(0)].cast<torch::Tensor>().detach(), item[py::int_(1)].cast<torch::Tensor>().detach()};
}

std::vector<Batch> to_batches(const py::handle& items, const char* what) {
  std::vector<Batch> batches;
  for (const auto& item : items) batches.push_back(to_batch(item, what));
  return batches;
}

OptimizerKind parse_optimizer(const std::string& name) {
  try {
    return parse_optimizer_kind(name);
  } catch (const Error& e) {
    throw Error(std::string("Distill: ") + e.what());
  }
}

// distributed="env" (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or a dict
// {"rank", "world_size", "master_addr", "master_port", "timeout" (s), "store_file"}.
DistributedOptions parse_distributed(const py::object& value) {
  const std::string who = "Distill(distributed=...)";
  if (py::isinstance<py::str>(value)) {
    if (value.cast<std::string>() != "env")
      throw Error(who + ": expected \"env\" or a dict, got '" + value.cast<std::string>() + "'");
    return DistributedOptions::from_env();
  }
  if (!py::isinstance<py::dict>(value)) throw Error(who + ": expected \"env\" or a dict, got " + type_name(value));
  const auto d = value.cast<py::dict>();
  for (const auto& item : d) {
    const auto k = item.first.cast<std::string>();
    if (k != "rank" && k != "world_size" && k != "master_addr" && k != "master_port" && k != "timeout" &&
        k != "store_file")
      throw Error(who + ": unknown key '" + k +
                  "'; expected rank, world_size, master_addr, master_port, timeout, store_file");
  }
  if (!d.contains("rank") || !d.contains("world_size")) throw Error(who + ": the dict needs 'rank' and 'world_size'");
  DistributedOptions options(d["rank"].cast<int64_t>(), d["world_size"].cast<int64_t>());
  if (d.contains("master_addr")) options.master_addr(d["master_addr"].cast<std::string>());
  if (d.contains("master_port")) options.master_port(d["master_port"].cast<int64_t>());
  if (d.contains("store_file")) options.store_file(d["store_file"].cast<std::string>());
  if (d.contains("timeout"))
    options.timeout(std::chrono::milliseconds(std::llround(d["timeout"].cast<double>() * 1000)));
  return options;
}

// One match=[...] item: "name", (teacher, student[, loss[, weight]]) or a pare.DistillMatch.
DistillMatch to_match(const py::handle& item) {
  const std::string who = "Distill(match=...)";
  if (py::isinstance<DistillMatch>(item)) return item.cast<DistillMatch>();
  if (py::isinstance<py::str>(item)) return DistillMatch(item.cast<std::string>());
  const bool sequence = py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item);
  if (!sequence || py::len(item) < 2 || py::len(item) > 4)
    throw Error(who +
                ": expected a submodule name, a (teacher, student[, loss[, weight]]) tuple or a "
                "pare.DistillMatch, got " +
                type_name(item));
  const auto parts = py::reinterpret_borrow<py::sequence>(item);
  if (!py::isinstance<py::str>(parts[0]) || !py::isinstance<py::str>(parts[1]))
    throw Error(who + ": a pair's teacher and student must be submodule names (str), got " + type_name(item));
  DistillMatch match(parts[0].cast<std::string>(), parts[1].cast<std::string>());
  if (py::len(item) > 2) match.loss(parse_match_loss(parts[2].cast<std::string>()));
  if (py::len(item) > 3) match.weight(parts[3].cast<double>());
  return match;
}

std::vector<DistillMatch> to_matches(const py::object& items) {
  std::vector<DistillMatch> out;
  if (items.is_none()) return out;
  if (py::isinstance<py::str>(items)) return {DistillMatch(items.cast<std::string>())};
  for (const auto& item : items) out.push_back(to_match(item));
  return out;
}

void bind_match(py::module_& m) {
  const DistillMatch defaults("");
  py::class_<DistillMatch>(m, "DistillMatch",
                           "A (teacher submodule, student submodule) pair whose outputs Distill pulls together.")
      .def(py::init([](const std::string& teacher, const std::optional<std::string>& student, const std::string& loss,
                       double weight) {
             return DistillMatch(teacher, student.value_or(teacher)).loss(parse_match_loss(loss)).weight(weight);
           }),
           py::arg("teacher"), py::arg("student") = py::none(), py::kw_only(),
           py::arg("loss") = to_string(defaults.loss()), py::arg("weight") = defaults.weight(),
           "teacher, student: dotted submodule names (student defaults to teacher). loss: \"mse\" or \"cosine\". "
           "weight: the term's weight beside the logits term's 1.")
      .def_property_readonly(
          "teacher", [](const DistillMatch& d) { return d.teacher(); }, "The teacher's submodule.")
      .def_property_readonly(
          "student", [](const DistillMatch& d) { return d.student(); }, "The student's submodule.")
      .def_property_readonly(
          "loss", [](const DistillMatch& d) { return to_string(d.loss()); }, "\"mse\" or \"cosine\".")
      .def_property_readonly(
          "weight", [](const DistillMatch& d) { return d.weight(); }, "The term's weight.")
      .def("__repr__",
           [](const DistillMatch& d) {
             return "DistillMatch('" + d.teacher() + "', '" + d.student() + "', loss='" + to_string(d.loss()) +
                    "', weight=" + std::to_string(d.weight()) + ")";
           })
      .def_static(
          "layers",
          [](const std::string& teacher_prefix, int64_t teacher_layers, const std::string& student_prefix,
             int64_t student_layers, const std::string& loss, double weight) {
            return DistillMatch::layers(teacher_prefix, teacher_layers, student_prefix, student_layers,
                                        parse_match_loss(loss), weight);
          },
          py::arg("teacher_prefix"), py::arg("teacher_layers"), py::arg("student_prefix"), py::arg("student_layers"),
          py::kw_only(), py::arg("loss") = to_string(defaults.loss()), py::arg("weight") = defaults.weight(),
          "Uniform depth mapping: student block j learns from teacher block (j + 1) * teacher_layers // "
          "student_layers - 1 (last to last); paths are prefix + '.' + index.");

  m.def(
      "submodule_outputs",
      [](const py::object& scripted, const py::object& inputs, const std::vector<std::string>& names) {
        const auto module = unwrap_module(scripted, "submodule_outputs");
        const auto values = to_inputs(inputs, "submodule_outputs(inputs=...)");
        py::gil_scoped_release release;
        return submodule_outputs(module, values, names);
      },
      py::arg("module"), py::arg("inputs"), py::arg("names"),
      "Runs the module's forward once on `inputs` (a tensor or a tuple) and returns the outputs of the submodules "
      "`names` (dotted paths), in order, without changing the module. Raises pare.InvalidArgument for a missing "
      "submodule (listing those that exist) or one that forward does not call exactly once.");
  m.def(
      "match_loss",
      [](const torch::Tensor& student, const torch::Tensor& teacher, const std::string& loss) {
        return match_loss(student, teacher, parse_match_loss(loss));
      },
      py::arg("student"), py::arg("teacher"), py::arg("loss") = "mse",
      "The loss between a student output and a teacher output of one shape: \"mse\", or \"cosine\" (1 - cosine "
      "similarity along the last dimension, averaged). The teacher's is detached.");
}

std::shared_ptr<Distill> make_distill(const py::object& teacher, const py::object& data, int64_t epochs, double lr,
                                      const std::string& optimizer, double momentum, double weight_decay,
                                      double temperature, double alpha, const py::object& eval_data, bool shuffle,
                                      uint64_t seed, const py::object& progress, const py::object& device,
                                      const py::object& distributed, const py::object& checkpoint,
                                      const py::object& match) {
  auto options = DistillOptions(unwrap_module(teacher, "Distill(teacher=...)"),
                                to_batch_source<Batch>(data, to_batch, "Distill(data=...)"))
                     .epochs(epochs)
                     .optimizer(parse_optimizer(optimizer))
                     .lr(lr)
                     .momentum(momentum)
                     .weight_decay(weight_decay)
                     .temperature(temperature)
                     .alpha(alpha)
                     .shuffle(shuffle)
                     .seed(seed)
                     .match(to_matches(match));
  if (!device.is_none()) options.device(parse_device(device, "Distill(device=...)"));
  if (!distributed.is_none()) options.distributed(parse_distributed(distributed));
  if (!checkpoint.is_none()) options.checkpoint(checkpoint.cast<std::string>());
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
  bind_match(m);
  const DistillLossOptions loss_defaults;
  const DistillOptions defaults(torch::jit::Module("default"), TrainingData(std::vector<Batch>{}));
  m.def(
      "distillation_loss",
      [](const torch::Tensor& student, const torch::Tensor& teacher, const std::optional<torch::Tensor>& targets,
         double temperature, double alpha) {
        return distillation_loss(student, teacher, targets ? *targets : torch::Tensor(),
                                 DistillLossOptions().temperature(temperature).alpha(alpha));
      },
      py::arg("student_logits"), py::arg("teacher_logits"), py::arg("targets") = py::none(), py::kw_only(),
      py::arg("temperature") = loss_defaults.temperature(), py::arg("alpha") = loss_defaults.alpha(),
      "alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) (batchmean) + (1 - alpha) * "
      "cross_entropy(student, targets). Differentiable w.r.t. the student; the teacher is detached.");

  py::class_<Distill, Pass, std::shared_ptr<Distill>>(m, "Distill")
      .def(py::init(&make_distill), py::arg("teacher"), py::arg("data"), py::kw_only(),
           py::arg("epochs") = defaults.epochs(), py::arg("lr") = defaults.lr(),
           py::arg("optimizer") = to_string(defaults.optimizer()), py::arg("momentum") = defaults.momentum(),
           py::arg("weight_decay") = defaults.weight_decay(), py::arg("temperature") = loss_defaults.temperature(),
           py::arg("alpha") = loss_defaults.alpha(), py::arg("eval_data") = py::none(),
           py::arg("shuffle") = defaults.shuffle(), py::arg("seed") = defaults.seed(), py::arg("progress") = py::none(),
           py::arg("device") = py::none(), py::arg("distributed") = py::none(), py::arg("checkpoint") = py::none(),
           py::arg("match") = py::none(),
           "Fine-tunes the pipeline's module against `teacher`, keeping pruning masks. `data`: a list of "
           "(input, target) pairs (shuffled every epoch unless shuffle=False), an iterable such as a DataLoader "
           "(iterated every epoch), or a callable epoch -> iterable. "
           "optimizer: \"adam\" or \"sgd\" (with momentum) at lr and weight_decay. temperature and alpha: as "
           "distillation_loss. eval_data: (input, target) pairs scored after each epoch. progress: callable "
           "(step, steps, loss). device: where training runs (\"cuda\"; default: where the module is). distributed: "
           "\"env\" (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or a dict {rank, world_size, master_addr, "
           "master_port, timeout, store_file}: train as one rank of a data-parallel job (docs/scaling.md). "
           "checkpoint: a path saved after every epoch and resumed from. match: intermediate outputs to distill "
           "besides the logits, each a submodule name (the same in both models), a (teacher, student[, loss[, "
           "weight]]) tuple or a pare.DistillMatch (loss \"mse\" or \"cosine\"); see DistillMatch.layers for "
           "depths that differ.");

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
