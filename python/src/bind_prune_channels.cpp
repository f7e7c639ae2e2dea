// Bindings for channel pruning: the PruneChannels pass, prune_channels, count_macs and RecalibrateBatchNorm.

#include "bindings.hpp"
#include "latency_args.hpp"

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
                                  std::vector<std::string> exclude, std::vector<int64_t> input_shape,
                                  std::optional<double> target_speedup, std::optional<double> target_seconds,
                                  int64_t target_batch, const py::object& example_inputs, double heads,
                                  const std::string& heads_scope) {
  const Latency defaults = Latency::speedup(2);
  std::vector<c10::IValue> inputs;
  if (!example_inputs.is_none()) inputs = to_inputs(example_inputs, "PruneChannels(example_inputs=...)");
  return PruneChannelsOptions(amount)
      .target(to_latency(target_speedup, target_seconds, target_batch, defaults.threads(), defaults.repeats(),
                         defaults.cache_dir(), "PruneChannels"))
      .scope(with_context("PruneChannels", [&] { return parse_scope(scope); }))
      .norm(with_context("PruneChannels", [&] { return parse_norm(norm); }))
      .min_channels(min_channels)
      .round_to(round_to)
      .include(std::move(include))
      .exclude(std::move(exclude))
      .input_shape(std::move(input_shape))
      .example_inputs(std::move(inputs))
      .heads(heads)
      .heads_scope(with_context("PruneChannels: heads_scope", [&] { return parse_scope(heads_scope); }));
}

std::string norm_name(Norm norm) { return to_string(norm); }

// The keyword arguments every entry point shares, after `amount`; defaults from
// PruneChannelsOptions (`channel_defaults` in scope).
#define PARE_CHANNEL_ARGS                                                                                           \
  py::arg("amount"), py::kw_only(),                                                                                 \
      py::arg("scope") = to_string(channel_defaults.scope()), py::arg("norm") = norm_name(channel_defaults.norm()), \
      py::arg("min_channels") = channel_defaults.min_channels(), py::arg("round_to") = channel_defaults.round_to(), \
      py::arg("include") = channel_defaults.include(), py::arg("exclude") = channel_defaults.exclude(),             \
      py::arg("input_shape") = channel_defaults.input_shape(), py::arg("target_speedup") = py::none(),              \
      py::arg("target_seconds") = py::none(), py::arg("target_batch") = Latency::speedup(2).batch(),                \
      py::arg("example_inputs") = py::none(), py::arg("heads") = channel_defaults.heads(),                          \
      py::arg("heads_scope") = to_string(channel_defaults.heads_scope())

#define PARE_CHANNEL_DOC                                                                                     \
  "amount: fraction of channels to remove, in [0, 1]. scope: \"local\" (each group loses amount) or "        \
  "\"global\" (one ranking across groups). norm: \"l1\" or \"l2\", ranks channels. min_channels: no group "  \
  "keeps fewer. round_to: kept counts rounded up to a multiple of it. include/exclude: glob patterns on "    \
  "producer weight names. input_shape: example input shape (batch first) for MACs and the check run; "       \
  "empty: inferred. target_speedup (times faster than the input) or target_seconds (per call at "            \
  "target_batch rows): a latency target measured on this host; each group's width is then chosen from a "    \
  "latency table, amount/scope/round_to are unused, and the result is returned only if measured to meet "    \
  "it (pare.InvalidArgument/RuntimeFailure otherwise). example_inputs: one value per forward input, batch "  \
  "first (a tensor, or a tuple such as (ids, mask)); the model runs on them to count MACs, follow channels " \
  "through attention and check the result; required for several inputs, none of which is pruned. heads: "    \
  "fraction of attention heads to remove, each whole (its q/k/v rows and output-projection columns). "       \
  "heads_scope: \"local\" (every attention layer loses heads) or \"global\" (one ranking across layers)."

}  // namespace

void bind_prune_channels(py::module_& m) {
  const PruneChannelsOptions channel_defaults(0.5);
  py::class_<ChannelGroupReport>(m, "ChannelGroupReport", "One dependency group: channels removed together.")
      .def_readonly("name", &ChannelGroupReport::name, "The group's name (its first producer).")
      .def_readonly("members", &ChannelGroupReport::members, "The weights whose channels are coupled.")
      .def_readonly("channels_before", &ChannelGroupReport::channels_before, "Channels before pruning.")
      .def_readonly("channels_after", &ChannelGroupReport::channels_after, "Channels after pruning.")
      .def_readonly("blocked_by", &ChannelGroupReport::blocked_by,
                    "Why the group was left whole (\"\" when it was pruned or could be).")
      .def_readonly("head_size", &ChannelGroupReport::head_size,
                    "Attention heads: channels per head (heads = channels / head_size); 0 for other groups.")
      .def("__repr__", [](const ChannelGroupReport& g) {
        return "<ChannelGroupReport " + g.name + " " + std::to_string(g.channels_before) + " -> " +
               std::to_string(g.channels_after) + (g.blocked_by.empty() ? "" : " blocked by " + g.blocked_by) + ">";
      });
  py::class_<ChannelPruneResult>(m, "ChannelPruneStats",
                                 "What prune_channels did: groups, parameters, MACs, file size.")
      .def_readonly("groups", &ChannelPruneResult::groups, "Every dependency group (list of ChannelGroupReport).")
      .def_readonly("input_shape", &ChannelPruneResult::input_shape, "The example input shape used.")
      .def_readonly("params_before", &ChannelPruneResult::params_before, "Parameters before.")
      .def_readonly("params_after", &ChannelPruneResult::params_after, "Parameters after.")
      .def_readonly("macs_before", &ChannelPruneResult::macs_before, "Multiply-accumulates per forward before.")
      .def_readonly("macs_after", &ChannelPruneResult::macs_after, "Multiply-accumulates per forward after.")
      .def_readonly("file_bytes_before", &ChannelPruneResult::file_bytes_before, "Saved file size before.")
      .def_readonly("file_bytes_after", &ChannelPruneResult::file_bytes_after, "Saved file size after.");
  py::class_<PruneChannels, Pass, std::shared_ptr<PruneChannels>>(m, "PruneChannels")
      .def(py::init([](double amount, const std::string& scope, const std::string& norm, int64_t min_channels,
                       int64_t round_to, std::vector<std::string> include, std::vector<std::string> exclude,
                       std::vector<int64_t> input_shape, std::optional<double> target_speedup,
                       std::optional<double> target_seconds, int64_t target_batch, const py::object& example_inputs,
                       double heads, const std::string& heads_scope) {
             return std::make_shared<PruneChannels>(make_options(amount, scope, norm, min_channels, round_to,
                                                                 std::move(include), std::move(exclude),
                                                                 std::move(input_shape), target_speedup, target_seconds,
                                                                 target_batch, example_inputs, heads, heads_scope));
           }),
           PARE_CHANNEL_ARGS,
           "Structured pruning that removes channels: every coupled tensor shrinks, the model gets smaller and "
           "faster. " PARE_CHANNEL_DOC);
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
         std::vector<int64_t> input_shape, std::optional<double> target_speedup, std::optional<double> target_seconds,
         int64_t target_batch, const py::object& example_inputs, double heads, const std::string& heads_scope) {
        const auto options = make_options(amount, scope, norm, min_channels, round_to, std::move(include),
                                          std::move(exclude), std::move(input_shape), target_speedup, target_seconds,
                                          target_batch, example_inputs, heads, heads_scope);
        const auto module = unwrap_module(scripted, "prune_channels");
        PrunedChannels pruned;
        {
          py::gil_scoped_release release;
          pruned = prune_channels(module, options);
        }
        return py::make_tuple(wrap_module(pruned.module), pruned.stats);
      },
      py::arg("module"), PARE_CHANNEL_ARGS,
      "Returns (smaller torch.jit.ScriptModule, ChannelPruneStats); the input module is not "
      "modified. " PARE_CHANNEL_DOC);
  m.def(
      "count_macs",
      [](const py::object& scripted, std::vector<int64_t> input_shape) {
        return count_macs(unwrap_module(scripted, "count_macs"), input_shape);
      },
      py::arg("module"), py::arg("input_shape"),
      "Multiply-accumulates of conv and linear layers for one forward pass.");
}

}  // namespace pare::python
