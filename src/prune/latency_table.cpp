// The latency table: every conv/linear call of the forward pass timed alone
// at candidate channel widths of its groups, the whole network timed at full
// width, cached per architecture and host.

#include <ATen/Parallel.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/freeze_module.h>
#include <torch/csrc/jit/passes/frozen_graph_optimizations.h>
#include <torch/version.h>

#include <algorithm>
#include <malloc.h>
#include <time.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "core/atomic_file.hpp"
#include "pare/core/error.hpp"
#include "pare/prune/latency.hpp"
#include "prune/channel_groups.hpp"
#include "prune/latency_internal.hpp"

namespace pare {
namespace {

using detail::ChannelAnalysis;
using torch::jit::Node;
using torch::jit::Value;

// One conv or linear call: how to run it alone.
struct Call {
  std::string name;  // weight owner path
  bool conv = false;
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  std::vector<int64_t> input_shape, weight_shape;
  int64_t out_elements = 0;
};

// "layer1.0.conv1.weight" for a chain of GetAttr from the graph's self.
std::string weight_path_of(const Value* value) {
  std::vector<std::string> names;
  while (value->node()->kind() == c10::prim::GetAttr) {
    names.push_back(value->node()->s(c10::attr::name));
    value = value->node()->input(0);
  }
  std::string path;
  for (auto name = names.rbegin(); name != names.rend(); ++name) path += (path.empty() ? "" : ".") + *name;
  return path;
}

bool conv_arguments(const Node* node, Call& call) {
  const bool raw = node->kind() == c10::aten::_convolution;
  const auto stride = detail::constant_int_list(node->input(3)), padding = detail::constant_int_list(node->input(4)),
             dilation = detail::constant_int_list(node->input(5));
  const auto groups = detail::constant_int(node->input(raw ? 8 : 6));
  if (!stride || !padding || !dilation || !groups) return false;  // padding="same" and the like: left to the rest
  if (raw) {
    const auto transposed = torch::jit::toIValue(node->input(6));
    if (!transposed || !transposed->isBool() || transposed->toBool()) return false;
  }
  call.stride = *stride, call.padding = *padding, call.dilation = *dilation, call.groups = *groups;
  return true;
}

// Every top-level conv/linear call with a module weight, with its input shape
// and output size from one forward pass on zeros of `shape`.
std::vector<Call> find_calls(const torch::jit::Module& module, const std::vector<int64_t>& shape) {
  auto graph = detail::specialized_forward_graph(module);
  std::vector<Call> calls;
  std::vector<Value*> taps;
  for (auto* node : graph->nodes()) {
    const bool conv = detail::is_conv(node->kind());
    if (!conv && !detail::is_linear(node->kind())) continue;
    const auto weight = detail::attribute_tensor(module, node->input(1));
    Call call;
    call.conv = conv;
    if (!weight || (conv && !conv_arguments(node, call))) continue;
    const auto path = weight_path_of(node->input(1));
    call.name = path.size() > 7 ? path.substr(0, path.size() - 7) : "";  // minus ".weight"
    call.weight_shape = weight->sizes().vec();
    calls.push_back(std::move(call));
    taps.push_back(node->input(0));
    taps.push_back(node->output());
  }
  while (!graph->outputs().empty()) graph->eraseOutput(0);
  graph->registerOutput(graph->insertNode(graph->createList(c10::TensorType::get(), taps))->output());
  torch::jit::GraphFunction run("pare_latency_calls", graph, nullptr);
  torch::NoGradGuard no_grad;
  std::vector<c10::IValue> stack{module._ivalue(), torch::zeros(shape)};
  const auto values = run(stack).toTensorVector();
  for (size_t i = 0; i < calls.size(); ++i) {
    calls[i].input_shape = values[2 * i].sizes().vec();
    calls[i].out_elements = values[2 * i + 1].numel();
  }
  return calls;
}

// Seconds on the calling thread's CPU clock, or on the steady clock.
double clock_seconds(bool cpu) {
  if (!cpu) return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) * 1e-9;
}

// Median seconds of `repeats` calls of `fn` (after one warm-up call if `warm`).
template <class F>
double median_seconds(int repeats, bool cpu, F&& fn, bool warm = true) {
  if (warm) fn();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const double start = clock_seconds(cpu);
    fn();
    times.push_back(clock_seconds(cpu) - start);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

// One call alone with `in` input and `out` output channels (features for linear).
double time_call(const Call& call, int64_t in, int64_t out, bool depthwise, int repeats, bool cpu) {
  torch::NoGradGuard no_grad;
  auto input_shape = call.input_shape, weight_shape = call.weight_shape;
  if (call.conv) {
    input_shape[1] = in;
    weight_shape[0] = out;
    weight_shape[1] = depthwise ? 1 : in / call.groups;
  } else {
    input_shape.back() = in;
    weight_shape = {out, in};
  }
  const auto x = torch::randn(input_shape), w = torch::randn(weight_shape), b = torch::randn({out});
  if (!call.conv) return median_seconds(repeats, cpu, [&] { torch::linear(x, w, b); });
  const std::vector<int64_t> output_padding(call.stride.size(), 0);
  const int64_t groups = depthwise ? out : call.groups;
  return median_seconds(repeats, cpu, [&] {
    at::convolution(x, w, b, call.stride, call.padding, call.dilation, false, output_padding, groups);
  });
}

// Candidate widths of a group of `channels`: multiples of `snap` (at least
// `floor`), at most `count` of them spread over the range, and the full width.
std::vector<int64_t> candidate_widths(int64_t channels, int64_t snap, int count) {
  std::vector<int64_t> multiples;
  for (int64_t w = snap; w < channels; w += snap) multiples.push_back(w);
  std::vector<int64_t> widths;
  const int picks = std::min<int>(count - 1, int(multiples.size()));
  for (int i = 0; i < picks; ++i) {  // evenly over the multiples, the narrowest first
    const size_t at = picks == 1 ? 0 : size_t(i) * (multiples.size() - 1) / size_t(picks - 1);
    widths.push_back(multiples[at]);
  }
  widths.push_back(channels);
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  return widths;
}

std::vector<int64_t> scaled(const std::vector<int64_t>& widths, int64_t full, int64_t features) {
  std::vector<int64_t> out;
  for (auto w : widths) out.push_back(std::max<int64_t>(1, w * features / full));
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// Wider never runs faster in the table: each cell becomes the most of the cells
// no wider on both axes (noise, or a narrow width the kernels run badly, would
// otherwise make narrowing look like a slowdown; the full width stays as measured).
void make_monotone(LatencyLayer& layer) {
  const size_t n = layer.out_widths.size(), rows = layer.depthwise ? 1 : layer.in_widths.size();
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < n; ++j) {
      double& cell = layer.seconds[i * n + j];
      if (j > 0) cell = std::max(cell, layer.seconds[i * n + j - 1]);
      if (i > 0) cell = std::max(cell, layer.seconds[(i - 1) * n + j]);
    }
}

// The table's layer for `call`: its groups from the channel analysis, then its grid timed.
LatencyLayer table_layer(const Call& call, const ChannelAnalysis& analysis, const LatencyTable& table, const Latency& l) {
  const int repeats = l.repeats();
  const bool cpu = l.cpu_time() && l.threads() == 1;
  LatencyLayer layer;
  layer.name = call.name;
  layer.out_elements = call.out_elements;
  const std::string weight = call.name.empty() ? "weight" : call.name + ".weight";
  std::map<int, int64_t> inputs;
  for (const auto& cut : analysis.cuts) {
    if (cut.name() != weight || cut.slots.empty()) continue;
    if (cut.dim == 0) layer.out_group = cut.slots.front().group;
    if (cut.dim == 1)
      for (const auto& slot : cut.slots) inputs[slot.group] += cut.block;
  }
  layer.depthwise = std::find(analysis.depthwise.begin(), analysis.depthwise.end(), weight) != analysis.depthwise.end();
  const int64_t out_full = call.weight_shape[0];
  const int64_t in_full = call.conv ? call.input_shape[1] : call.input_shape.back();
  layer.out_widths = layer.out_group >= 0 ? table.groups[layer.out_group].widths : std::vector<int64_t>{out_full};
  if (layer.depthwise && layer.out_group >= 0) {
    layer.in_groups = {{layer.out_group, in_full}};
    layer.in_widths = layer.out_widths;
    for (auto w : layer.out_widths) layer.seconds.push_back(time_call(call, w, w, true, repeats, cpu));
    make_monotone(layer);
    return layer;
  }
  layer.depthwise = false;
  for (const auto& [g, features] : inputs) layer.in_groups.emplace_back(g, features);
  if (layer.in_groups.size() == 1) {
    const auto& group = table.groups[layer.in_groups[0].first];
    layer.in_widths = scaled(group.widths, group.channels, in_full);
  } else if (!layer.in_groups.empty()) {  // concatenated groups: a ladder over the total width
    layer.in_widths = scaled({1, 2, 3, 4}, 4, in_full);
  } else {
    layer.in_widths = {in_full};
  }
  if (call.groups > 1) {  // grouped convs stay whole
    layer.in_widths = {in_full}, layer.out_widths = {out_full};
    layer.in_groups.clear(), layer.out_group = -1;
  }
  for (auto in : layer.in_widths)
    for (auto out : layer.out_widths) layer.seconds.push_back(time_call(call, in, out, false, repeats, cpu));
  make_monotone(layer);
  return layer;
}

std::string hex64(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return text;
}

std::string host_description() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown CPU";
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  return model + ", " + std::to_string(std::thread::hardware_concurrency()) + " logical cores, LibTorch " +
         TORCH_VERSION;
}

// The architecture: the specialized forward graph and every tensor's name and shape; and the settings.
std::string architecture_fingerprint(const torch::jit::Module& module, const std::vector<int64_t>& shape,
                                     const Latency& latency) {
  std::string text = detail::specialized_forward_graph(module)->toString(false);
  for (const auto& p : module.named_parameters()) text += p.name + c10::str(p.value.sizes());
  for (const auto& b : module.named_buffers()) text += b.name + c10::str(b.value.sizes());
  text += c10::str(c10::IntArrayRef(shape)) + " threads " + std::to_string(latency.threads()) + " snap " +
          std::to_string(latency.snap()) + " widths " + std::to_string(latency.max_widths()) + " repeats " +
          std::to_string(latency.repeats()) + (latency.cpu_time() ? " cpu" : " wall");
  return hex64(XXH3_64bits(text.data(), text.size()));
}

std::string cache_path(const Latency& latency, const std::string& fingerprint, const std::string& host) {
  return (std::filesystem::path(latency.cache_dir()) /
          ("latency-" + fingerprint + "-" + hex64(XXH3_64bits(host.data(), host.size())).substr(0, 8) + ".json"))
      .string();
}

std::optional<LatencyTable> read_cached(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    auto table = LatencyTable::from_json(text);
    table.from_cache = true;
    table.measure_seconds = 0;
    return table;
  } catch (const Error&) {  // a damaged cache file is measured again and replaced
    return std::nullopt;
  }
}

}  // namespace

namespace detail {

void prepare_to_measure(const Latency& latency) {
  static std::once_flag once;
  if (latency.keep_freed_memory())
    std::call_once(once, [] {
      mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest
      mallopt(M_TRIM_THRESHOLD, 1 << 30);
    });
}

ThreadScope::ThreadScope(int threads) : saved_(at::get_num_threads()) { at::set_num_threads(threads); }
ThreadScope::~ThreadScope() { at::set_num_threads(saved_); }

torch::jit::Module frozen_for_timing(const torch::jit::Module& module) {
  auto copy = module.clone();
  copy.eval();
  try {
    return torch::jit::freeze(copy);
  } catch (const std::exception&) {  // a module freezing rejects runs as it is
    return copy;
  }
}

}  // namespace detail

std::vector<double> measure_seconds(const std::vector<torch::jit::Module>& modules, std::vector<int64_t> input_shape,
                                    const Latency& settings) {
  detail::validate_latency(settings, "measure_seconds");
  require(!input_shape.empty(), "measure_seconds: the input shape is empty; expected batch first, e.g. {1, 3, 64, 64}");
  input_shape[0] = settings.batch();
  detail::prepare_to_measure(settings);
  const bool cpu = settings.cpu_time() && settings.threads() == 1;
  detail::ThreadScope scope(settings.threads());
  torch::NoGradGuard no_grad;
  std::vector<torch::jit::Module> frozen;
  for (const auto& m : modules) frozen.push_back(detail::frozen_for_timing(m));
  const auto x = torch::randn(input_shape);
  for (auto& m : frozen) m.forward({x}), m.forward({x});  // warm-up: plans, allocations
  std::vector<std::vector<double>> rounds_of(frozen.size());
  for (int r = 0; r < settings.repeats(); ++r)
    for (size_t i = 0; i < frozen.size(); ++i)
      rounds_of[i].push_back(median_seconds(3, cpu, [&] { frozen[i].forward({x}); }, false));
  std::vector<double> out;
  for (auto& times : rounds_of) {
    std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
    out.push_back(times[times.size() / 2]);
  }
  return out;
}

LatencyTable measure_latency_table(const torch::jit::Module& module, std::vector<int64_t> input_shape,
                                   const Latency& latency) {
  detail::validate_latency(latency, "measure_latency_table");
  require(!input_shape.empty(), "measure_latency_table: the input shape is empty; expected batch first, e.g. {1, 3, 64, 64}");
  input_shape[0] = latency.batch();
  const auto start = std::chrono::steady_clock::now();
  auto model = module.clone();
  model.eval();
  LatencyTable table;
  table.input_shape = input_shape;
  table.threads = latency.threads();
  table.host = host_description();
  table.fingerprint = architecture_fingerprint(model, input_shape, latency);
  const auto path = latency.cache_dir().empty() ? "" : cache_path(latency, table.fingerprint, table.host);
  if (!path.empty())
    if (auto cached = read_cached(path); cached && cached->fingerprint == table.fingerprint) return *cached;

  detail::prepare_to_measure(latency);
  const auto analysis = detail::analyze_channels(model);
  for (const auto& group : analysis.groups)
    table.groups.push_back({group.producers.empty() ? "(unnamed)" : group.producers.front(), group.channels,
                            group.blocked_by.empty() ? candidate_widths(group.channels, latency.snap(), latency.max_widths())
                                                     : std::vector<int64_t>{group.channels}});
  {
    detail::ThreadScope scope(latency.threads());
    for (const auto& call : find_calls(model, input_shape))
      table.layers.push_back(table_layer(call, analysis, table, latency));
  }
  table.network_seconds = measure_seconds({model}, input_shape, latency).front();
  table.measure_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!path.empty()) {
    std::filesystem::create_directories(latency.cache_dir());
    detail::write_file_atomically(path, table.to_json(), "latency table");
  }
  return table;
}

}  // namespace pare
