// CompressTo: the search over channel widths (and int8, and Distill epochs)
// against one latency target and one accuracy budget, and its report.
//
// The search steers by measurement: each candidate's measured speedup tells
// how much further the widths must go (next latency target for the channels
// = this one x asked / measured), and a candidate over the accuracy budget
// bounds the channel target from above. It stops at the first candidate that
// meets both, after max_candidates(), or when the next target would repeat
// one already tried.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "compress/compress_internal.hpp"

namespace pare {
namespace {

void check_batches(const std::vector<Batch>& batches, const std::string& what) {
  require(!batches.empty(), "CompressTo: no " + what + " batches; expected a list of (inputs, labels) pairs");
  for (size_t b = 0; b < batches.size(); ++b) {
    const auto& [inputs, labels] = batches[b];
    const std::string at = "CompressTo: " + what + " batch " + std::to_string(b) + ": ";
    require(inputs.defined() && inputs.dim() >= 1 && inputs.is_floating_point(),
            at + "inputs must be a floating-point tensor, batch first");
    require(labels.defined() && labels.dim() == 1 && labels.scalar_type() == torch::kLong,
            at + "labels must be a 1-D int64 tensor of class indices");
    require(labels.size(0) == inputs.size(0), at + "inputs have " + std::to_string(inputs.size(0)) + " rows, labels " +
                                                  std::to_string(labels.size(0)) + "; expected one label per row");
  }
}

void check_options(const CompressToOptions& o) {
  require(std::isfinite(o.max_drop()) && o.max_drop() >= 0,
          "CompressTo: max_drop must be a finite number of points >= 0, got " + std::to_string(o.max_drop()));
  check_batches(o.train(), "train");
  check_batches(o.eval(), "eval");
  require(o.epochs() >= 0 && o.epochs() <= 1000,
          "CompressTo: epochs must be in [0, 1000], got " + std::to_string(o.epochs()));
  require(o.max_candidates() >= 1 && o.max_candidates() <= 100,
          "CompressTo: max_candidates must be in [1, 100], got " + std::to_string(o.max_candidates()));
  require(o.calibration_batches() >= 1,
          "CompressTo: calibration_batches must be at least 1, got " + std::to_string(o.calibration_batches()));
  require(std::isfinite(o.lr()) && o.lr() > 0,
          "CompressTo: lr must be a positive number, got " + std::to_string(o.lr()));
  const auto engines = available_quantized_engines();
  require(o.engine().empty() || std::find(engines.begin(), engines.end(), o.engine()) != engines.end(),
          "CompressTo: engine '" + o.engine() + "' is not available in this LibTorch");
  require(!o.int8() || !engines.empty(), "CompressTo: int8 was allowed but this LibTorch has no quantized engine");
  require(o.target().batch() >= 1 && o.target().threads() >= 1 && o.target().repeats() >= 1,
          "CompressTo: the target's batch, threads and repeats must be at least 1");
}

// A directory for the search's latency table when the target names none, removed afterwards.
struct ScratchCache {
  std::string path;
  bool owned = false;
  explicit ScratchCache(const std::string& given) : path(given) {
    if (!path.empty()) return;
    static std::atomic<int> counter{0};
    path = (std::filesystem::temp_directory_path() /
            ("pare_compress_to_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
               .string();
    owned = true;
  }
  ~ScratchCache() {
    std::error_code ignored;
    if (owned) std::filesystem::remove_all(path, ignored);
  }
};

std::string printed(const char* pattern, double a, double b = 0, double c = 0, double d = 0) {
  char text[256];
  std::snprintf(text, sizeof text, pattern, a, b, c, d);
  return text;
}

// The first candidate that meets both; else the fastest within the budget; else the most accurate.
int best_of(const std::vector<CompressCandidate>& candidates) {
  int best = -1;
  auto built = [&](size_t i) { return candidates[i].note.empty(); };
  for (size_t i = 0; i < candidates.size(); ++i)
    if (built(i) && candidates[i].meets_latency && candidates[i].meets_accuracy) return int(i);
  for (size_t i = 0; i < candidates.size(); ++i)
    if (built(i) && candidates[i].meets_accuracy &&
        (best < 0 || candidates[i].speedup() > candidates[size_t(best)].speedup()))
      best = int(i);
  if (best >= 0) return best;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (built(i) && (best < 0 || candidates[i].accuracy > candidates[size_t(best)].accuracy)) best = int(i);
  return best;
}

// The next channel target after candidate `c` (built at `p`), or NaN to stop.
// `low`: the largest target known within the budget; `high`: the smallest known over it or out of reach.
double next_target(const CompressCandidate& c, double p, double asked, double& low, double& high) {
  double next = 0;
  if (!c.note.empty() || !c.meets_accuracy) {
    high = std::min(high, p);
    const bool overshot = c.note.empty() && c.speedup() > asked * 1.05;
    next = overshot ? p * asked / c.speedup() * 1.02 : std::sqrt(low * p);  // just fast enough, else back off
  } else {
    low = std::max(low, p);
    next = p * asked / std::max(c.speedup(), 1e-9) * 1.05;  // the measured miss, with a margin
    if (next >= high) next = std::sqrt(low * high);
  }
  return next;
}

double target_speedup_of(const detail::CompressSearch& s) {
  const auto& target = s.options.target();
  if (target.kind() == Latency::Kind::Speedup) return target.factor();
  const double input = measure_seconds({s.input}, s.measure_shape, target).front();
  return input / (double(target.time().count()) * 1e-6);
}

std::string message_for(const CompressToResult& r, const CompressToOptions& o) {
  if (r.chosen < 0)
    return "target not met: " + printed("%.2fx within %.2f points asked, ", r.target_speedup, o.max_drop()) +
           "no candidate could be built, the input is returned as it was; the first refusal: " +
           r.candidates.front().note;
  const auto& c = r.candidates[size_t(r.chosen)];
  const std::string found = printed("candidate %.0f of %.0f runs %.2fx faster than the input (asked %.2fx) ",
                                    r.chosen + 1.0, double(r.candidates.size()), c.speedup(), r.target_speedup) +
                            printed(c.accuracy > r.input_accuracy ? "and gains %.2f points (may lose at most %.2f)"
                                                                  : "and loses %.2f points (at most %.2f)",
                                    std::abs(r.input_accuracy - c.accuracy), o.max_drop());
  if (r.met) return "target met: " + found + "; " + c.applied;
  std::string why = !c.meets_latency ? "too slow" : "over the accuracy budget";
  if (!c.meets_latency && !c.meets_accuracy) why = "too slow and over the accuracy budget";
  return "target not met after " + std::to_string(r.candidates.size()) + " candidates; the best found, " + found +
         ", is " + why + "; " + c.applied +
         (o.int8() ? "" : ". Allow int8, more epochs or a larger budget, or ask for less");
}

}  // namespace

CompressToResult compress_to(const torch::jit::Module& module, const CompressToOptions& options) {
  check_options(options);
  auto input = module.clone();
  input.eval();
  ScratchCache cache(options.target().cache_dir());
  detail::CompressSearch s{input, options, {}, {}, {}, cache.path, 0};
  s.shape = options.eval().front().first.sizes().vec();
  s.shape[0] = 1;
  s.measure_shape = s.shape;
  for (const auto& batch : options.train())
    if (int64_t(s.calibration.size()) < options.calibration_batches()) s.calibration.push_back({batch.first});
  CompressToResult r;
  r.input_accuracy = s.input_accuracy = top1_accuracy(input, options.eval());
  r.target_speedup = target_speedup_of(s);
  // int8 first alone: its measured speedup tells how much is left for the channels.
  double p = options.int8() ? 1.0 : std::max(r.target_speedup, 1.01);
  double low = 1.0, high = std::numeric_limits<double>::infinity();
  std::vector<torch::jit::Module> modules;
  std::vector<double> tried;
  while (int64_t(r.candidates.size()) < options.max_candidates()) {
    modules.push_back(input);
    r.candidates.push_back(detail::build_candidate(s, p, modules.back()));
    tried.push_back(p);
    const auto& c = r.candidates.back();
    if (c.meets_latency && c.meets_accuracy) break;
    const double next = std::max(1.0, next_target(c, p, r.target_speedup, low, high));
    const bool repeats =
        std::any_of(tried.begin(), tried.end(), [&](double t) { return std::abs(next / t - 1) < 0.03; });
    if (repeats || (!options.int8() && next < 1.02)) break;
    p = next;
  }
  r.chosen = best_of(r.candidates);
  r.module = r.chosen >= 0 ? modules[size_t(r.chosen)] : input;
  r.met =
      r.chosen >= 0 && r.candidates[size_t(r.chosen)].meets_latency && r.candidates[size_t(r.chosen)].meets_accuracy;
  r.message = message_for(r, options);
  return r;
}

CompressTo::CompressTo(CompressToOptions options) : options_(std::move(options)) { check_options(options_); }

void CompressTo::run(Result& state, PassReport& entry) const {
  const auto r = compress_to(state.module, options_);
  for (size_t i = 0; i < r.candidates.size(); ++i) {
    const auto& c = r.candidates[i];
    LayerReport row;
    row.name = "candidate " + std::to_string(i + 1);
    row.metrics = {{"speedup", c.speedup()},
                   {"latency_ms", c.seconds * 1e3},
                   {"accuracy", c.accuracy},
                   {"drop", r.input_accuracy - c.accuracy},
                   {"file_bytes", double(c.file_bytes)},
                   {"prune_speedup", c.prune_speedup},
                   {"epochs", double(c.epochs)},
                   {"int8", c.int8 ? 1.0 : 0.0},
                   {"meets_latency", c.meets_latency ? 1.0 : 0.0},
                   {"meets_accuracy", c.meets_accuracy ? 1.0 : 0.0}};
    row.labels = {{"applied", c.applied}, {"chosen", int(i) == r.chosen ? "yes" : "no"}};
    if (!c.note.empty()) row.labels["note"] = c.note;
    entry.layers.push_back(std::move(row));
  }
  entry.metrics = {{"target_speedup", r.target_speedup},        {"max_drop", options_.max_drop()},
                   {"input_accuracy", r.input_accuracy},        {"met", r.met ? 1.0 : 0.0},
                   {"candidates", double(r.candidates.size())}, {"batch", double(options_.target().batch())}};
  if (r.chosen >= 0) {
    const auto& c = r.candidates[size_t(r.chosen)];
    entry.metrics["accuracy"] = c.accuracy;
    entry.metrics["speedup"] = c.speedup();
    entry.metrics["file_bytes"] = double(c.file_bytes);
  }
  entry.labels = {{"message", r.message}, {"int8", options_.int8() ? "allowed" : "not allowed"}};
  state.module = r.module;
  state.masks.clear();  // channels were removed (or weights frozen): the masks no longer fit
}

}  // namespace pare
