// Bindings for channel pruning: the PruneChannels pass, prune_channels, count_macs and RecalibrateBatchNorm.

#include "bindings.hpp"

#include "pare/prune/recalibrate_batchnorm.hpp"

#include "pare/prune/prune_channels.hpp"

namespace pare::python {
namespace {

// `parse()`, its pare::Error prefixed with `who` ("PruneChannels: norm 'x' is not known; ...").
template <class F>
auto with_context(const std::string& who, F parse) {
  try {
    return parse();
  } catch (const Error& e) {
    throw Error(who + ": " + e.what());
  }
}

PruneChannelsOptions make_options(double amount, const std::string& scope, const std::string& norm,
                                  int64_t min_channels, int64_t round_to, std::vector<std::string> include,
                                  std::vector<std::string> exclude, std::vector<int64_t> input_shape) {
  return PruneChannelsOptions(amount)
      .scope(with_context("PruneChannels", [&] { return parse_scope(scope); }))
      .norm(with_context("PruneChannels", [&] { return parse_norm(norm); }))
      .min_channels(min_channels)
      .round_to(round_to)
      .include(std::move(include))
      .exclude(std::move(exclude))
      .input_shape(std::move(input_shape));
}

// The keyword arguments every entry point shares, after `amount`.
#define PARE_CHANNEL_ARGS                                                                         \
  py::arg("amount"), py::arg("scope") = "local", py::arg("norm") = "l1", py::arg("min_channels") = 1, \
      py::arg("round_to") = 1, py::arg("include") = std::vector<std::string>{},                   \
      py::arg("exclude") = std::vector<std::string>{}, py::arg("input_shape") = std::vector<int64_t>{}

}  // namespace

void bind_prune_channels(py::module_& m) {
  py::class_<ChannelGroupReport>(m, "ChannelGroupReport")
      .def_readonly("name", &ChannelGroupReport::name)
      .def_readonly("members", &ChannelGroupReport::members)
      .def_readonly("channels_before", &ChannelGroupReport::channels_before)
      .def_readonly("channels_after", &ChannelGroupReport::channels_after)
      .def_readonly("blocked_by", &ChannelGroupReport::blocked_by)
      .def("__repr__", [](const ChannelGroupReport& g) {
        return "<ChannelGroupReport " + g.name + " " + std::to_string(g.channels_before) + " -> " +
               std::to_string(g.channels_after) + (g.blocked_by.empty() ? "" : " blocked by " + g.blocked_by) + ">";
      });
  py::class_<ChannelPruneResult>(m, "ChannelPruneStats")
      .def_readonly("groups", &ChannelPruneResult::groups)
      .def_readonly("input_shape", &ChannelPruneResult::input_shape)
      .def_readonly("params_before", &ChannelPruneResult::params_before)
      .def_readonly("params_after", &ChannelPruneResult::params_after)
      .def_readonly("macs_before", &ChannelPruneResult::macs_before)
      .def_readonly("macs_after", &ChannelPruneResult::macs_after)
      .def_readonly("file_bytes_before", &ChannelPruneResult::file_bytes_before)
      .def_readonly("file_bytes_after", &ChannelPruneResult::file_bytes_after);
  py::class_<PruneChannels, Pass, std::shared_ptr<PruneChannels>>(m, "PruneChannels")
      .def(py::init([](double amount, const std::string& scope, const std::string& norm, int64_t min_channels,
                       int64_t round_to, std::vector<std::string> include, std::vector<std::string> exclude,
                       std::vector<int64_t> input_shape) {
             return std::make_shared<PruneChannels>(make_options(amount, scope, norm, min_channels, round_to,
                                                                 std::move(include), std::move(exclude),
                                                                 std::move(input_shape)));
           }),
           PARE_CHANNEL_ARGS,
           "Structured pruning that removes channels: every coupled tensor shrinks, the model gets smaller and faster.");
  py::class_<RecalibrateBatchNorm, Pass, std::shared_ptr<RecalibrateBatchNorm>>(m, "RecalibrateBatchNorm")
      .def(py::init([](const py::object& batches, int64_t max_batches) {
             return std::make_shared<RecalibrateBatchNorm>(
                 RecalibrateBatchNormOptions(to_input_batches(batches, "RecalibrateBatchNorm(batches=...)"))
                     .max_batches(max_batches));
           }),
           py::arg("batches"), py::kw_only(), py::arg("max_batches") = RecalibrateBatchNormOptions({}).max_batches(),
           "BatchNorm running statistics re-estimated on `batches` (tensors or input tuples), scripted or traced, "
           "as a train-mode forward with a cumulative average would; parameters unchanged.");
  m.def(
      "prune_channels",
      [](const py::object& scripted, double amount, const std::string& scope, const std::string& norm,
         int64_t min_channels, int64_t round_to, std::vector<std::string> include, std::vector<std::string> exclude,
         std::vector<int64_t> input_shape) {
        const auto options = make_options(amount, scope, norm, min_channels, round_to, std::move(include),
                                          std::move(exclude), std::move(input_shape));
        const auto module = unwrap_module(scripted, "prune_channels");
        PrunedChannels pruned;
        {
          py::gil_scoped_release release;
          pruned = prune_channels(module, options);
        }
        return py::make_tuple(wrap_module(pruned.module), pruned.stats);
      },
      py::arg("module"), PARE_CHANNEL_ARGS,
      "Returns (smaller torch.jit.ScriptModule, ChannelPruneStats); the input module is not modified.");
  m.def(
      "count_macs",
      [](const py::object& scripted, std::vector<int64_t> input_shape) {
        return count_macs(unwrap_module(scripted, "count_macs"), input_shape);
      },
      py::arg("module"), py::arg("input_shape"), "Multiply-accumulates of conv and linear layers for one forward pass.");
}

}  // namespace pare::python
