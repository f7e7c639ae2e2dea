#pragma once
// pare::Latency — a latency target for channel removal, and the measurements
// behind it: a table of every conv/linear layer's time at candidate channel
// widths, measured on this host, and a LatencyModel that predicts a whole
// network's latency from it.
//
//   auto options = pare::PruneChannelsOptions(0).input_shape({1, 3, 64, 64})
//                      .target(pare::Latency::speedup(2.0).batch(8).cache_dir("latency_cache"));
//   auto pruned = pare::prune_channels(model, options);   // measured >= 2x faster, or pare::Error
//   std::cout << pruned.stats.latency->speedup() << "\n";

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/script.h>

#include "pare/core/arg.hpp"

namespace pare {

/// What a latency-targeted allocation must reach, and how latency is measured
/// (fp32, the module as torch::jit::freeze leaves it, `threads` intra-op threads).
class Latency {
 public:
  enum class Kind { Speedup, AtMost };

  /// At least `factor` times faster than the input module (> 1), measured at batch().
  static Latency speedup(double factor);
  /// At most `time` per call at batch size `batch` (both > 0).
  static Latency at_most(std::chrono::microseconds time, int64_t batch);

  Kind kind() const { return kind_; }
  /// The speedup asked for (Kind::Speedup), else 0.
  double factor() const { return factor_; }
  /// The time asked for (Kind::AtMost), else 0.
  std::chrono::microseconds time() const { return time_; }

  /// Batch size of the measurements (replaces the input shape's first dim). Default 1.
  PARE_ARG(int64_t, batch) = 1;
  /// Intra-op threads while measuring (restored afterwards). Default 1.
  PARE_ARG(int, threads) = 1;
  /// Candidate widths are multiples of this (the kernels' vector width runs best: 8 or 16), plus the full width.
  PARE_ARG(int64_t, snap) = 8;
  /// At most this many candidate widths per group (the full width included; >= 2).
  PARE_ARG(int, max_widths) = 6;
  /// Timed calls per measurement (medians; the pruned and input modules are interleaved).
  PARE_ARG(int, repeats) = 7;
  /// Allocations tried (each measured) before giving up on the target (>= 1).
  PARE_ARG(int, attempts) = 4;
  /// With threads(1): time the calling thread's CPU time instead of wall time, so that other
  /// processes' load does not inflate or scatter the figures (on an idle host the two agree).
  /// With more threads, wall time is measured either way.
  PARE_ARG(bool, cpu_time) = true;
  /// Before measuring, raise glibc's mmap and trim thresholds (mallopt; process-wide, for
  /// good) so that freed activations stay in the heap as in a long-running server. Without
  /// it, blocks returned to the system fault in again on some calls and not others, and the
  /// same module measures several times slower or faster depending on what ran before.
  PARE_ARG(bool, keep_freed_memory) = true;
  /// Directory for the latency table cache (one JSON file per model and host); empty: no cache.
  PARE_ARG(std::string, cache_dir);

 private:
  Latency(Kind kind, double factor, std::chrono::microseconds time) : kind_(kind), factor_(factor), time_(time) {}
  Kind kind_;
  double factor_;
  std::chrono::microseconds time_;
};

/// One conv or linear call of the forward pass, timed alone on inputs of its
/// real shape with its channel counts changed: seconds[i * out_widths.size() + j]
/// is the time at in_widths[i] input and out_widths[j] output channels.
struct LatencyLayer {
  std::string name;  ///< its weight's owner, "layer1.0.conv1"
  /// The groups (index into LatencyTable::groups) feeding its input, and how
  /// many input features each gives at full width; empty: the input is fixed.
  std::vector<std::pair<int, int64_t>> in_groups;
  int out_group = -1;      ///< the group it produces; -1: its output width is fixed
  bool depthwise = false;  ///< input width == output width (one grid axis)
  int64_t out_elements = 0;  ///< elements of its output per call at full width
  std::vector<int64_t> in_widths, out_widths;  ///< ascending; the last is the full width
  std::vector<double> seconds;
};

/// One channel group: the widths its layers were timed at.
struct LatencyGroup {
  std::string name;  ///< the first producer, as in ChannelGroupReport
  int64_t channels = 0;
  std::vector<int64_t> widths;  ///< ascending candidates; the last is `channels` (the only one if blocked)
};

/// Per-layer latency at candidate widths, measured on one host for one model
/// architecture and batch size; cached as JSON, kept in PruneChannels' report.
struct LatencyTable {
  std::string fingerprint;  ///< of the architecture (graph, tensor shapes), the input shape and the settings
  std::string host;         ///< CPU model, logical cores, LibTorch version
  std::vector<int64_t> input_shape;  ///< batch first
  int threads = 1;
  double network_seconds = 0;  ///< the whole (frozen) network at full widths, median
  double measure_seconds = 0;  ///< what building the table cost (0 when read from the cache)
  bool from_cache = false;
  std::vector<LatencyGroup> groups;
  std::vector<LatencyLayer> layers;

  std::string to_json() const;
  /// pare::Error when `text` is not a table to_json wrote.
  static LatencyTable from_json(const std::string& text);
};

/// Measures (or reads from latency.cache_dir()) the table of `module` at
/// `input_shape` with its batch replaced by latency.batch(). Costs seconds:
/// every layer alone at every pair of candidate widths of its groups.
LatencyTable measure_latency_table(const torch::jit::Module& module, std::vector<int64_t> input_shape,
                                   const Latency& latency);

/// Predicts the network's latency for any channel widths: the layers' times
/// interpolated in the table, plus the rest of the network (the measured full
/// network minus its layers alone) scaled by the layers' output elements; the
/// sum is scaled so that full widths predict the measured network.
class LatencyModel {
 public:
  explicit LatencyModel(LatencyTable table);
  /// Seconds per call; `widths` has one entry per table group (pare::Error otherwise).
  double predict(const std::vector<int64_t>& widths) const;
  /// The full widths of every group.
  std::vector<int64_t> full_widths() const;
  const LatencyTable& table() const { return table_; }

 private:
  LatencyTable table_;
  double layers_full_ = 0, elements_full_ = 0, rest_ = 0, scale_ = 1;
};

/// Seconds per call of each module on the same input of `input_shape` (its
/// batch replaced by settings.batch()), each module frozen (eval mode) as
/// shipped: settings.repeats() rounds of 3 calls, the modules interleaved, the
/// median of the rounds' medians, with settings.threads() intra-op threads and
/// settings.cpu_time()'s clock.
std::vector<double> measure_seconds(const std::vector<torch::jit::Module>& modules, std::vector<int64_t> input_shape,
                                    const Latency& settings);

/// One allocation that PruneChannels measured.
struct LatencyAttempt {
  std::vector<int64_t> widths;  ///< per table group
  double predicted_seconds = 0, measured_seconds = 0, input_seconds = 0;
};

/// What a latency target did: the table, the allocations tried, the one kept.
struct LatencyResult {
  LatencyTable table;
  double target_seconds = 0;     ///< the latency asked for (for a speedup: the input's measured / factor)
  double input_seconds = 0;      ///< the input module, measured beside the result
  double measured_seconds = 0;   ///< the result
  double predicted_seconds = 0;  ///< the LatencyModel's prediction for the result
  std::vector<LatencyAttempt> attempts;
  double speedup() const { return measured_seconds > 0 ? input_seconds / measured_seconds : 0; }
  /// (predicted - measured) / measured.
  double prediction_error() const { return measured_seconds > 0 ? predicted_seconds / measured_seconds - 1 : 0; }
};

}  // namespace pare
