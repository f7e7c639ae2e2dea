// Latency targets, the latency table's JSON form and the LatencyModel.

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "pare/core/error.hpp"
#include "pare/prune/latency.hpp"
#include "prune/latency_internal.hpp"

namespace pare {
namespace {

using nlohmann::json;

// y at x on the polyline (xs ascending, ys their values); proportional beyond its ends.
double interpolate(const std::vector<int64_t>& xs, const std::vector<double>& ys, double x) {
  if (xs.size() == 1 || x <= double(xs.front())) return ys.front() * x / double(xs.front());
  if (x >= double(xs.back())) return ys.back() * x / double(xs.back());
  size_t i = 1;
  while (double(xs[i]) < x) ++i;
  const double t = (x - double(xs[i - 1])) / double(xs[i] - xs[i - 1]);
  return ys[i - 1] + t * (ys[i] - ys[i - 1]);
}

void check_layer(const LatencyLayer& layer, size_t groups) {
  const size_t cells = layer.depthwise ? layer.out_widths.size() : layer.in_widths.size() * layer.out_widths.size();
  bool ok = !layer.in_widths.empty() && !layer.out_widths.empty() && layer.seconds.size() == cells &&
            layer.out_group < int(groups) && layer.out_elements >= 0;
  for (const auto& [g, features] : layer.in_groups) ok = ok && g >= 0 && g < int(groups) && features > 0;
  for (auto w : layer.in_widths) ok = ok && w > 0;
  for (auto w : layer.out_widths) ok = ok && w > 0;
  require(ok, "LatencyModel: layer '" + layer.name + "' of the latency table is inconsistent (grid sizes, widths or "
                                                     "group indices); rebuild the table with measure_latency_table");
}

}  // namespace

Latency Latency::speedup(double factor) {
  require(std::isfinite(factor) && factor > 1.0, "Latency::speedup: factor " + std::to_string(factor) +
                                                     " is not above 1; expected e.g. 2.0 for twice as fast as the input");
  return Latency(Kind::Speedup, factor, std::chrono::microseconds(0));
}

Latency Latency::at_most(std::chrono::microseconds time, int64_t batch) {
  require(time.count() > 0, "Latency::at_most: time " + std::to_string(time.count()) +
                                " us is not positive; expected the longest a call at batch " + std::to_string(batch) +
                                " may take, e.g. std::chrono::milliseconds(5)");
  require(batch >= 1, "Latency::at_most: batch " + std::to_string(batch) + " is below 1; expected a batch size");
  return Latency(Kind::AtMost, 0.0, time).batch(batch);
}

namespace detail {

void validate_latency(const Latency& l, const std::string& what) {
  const auto check = [&](bool ok, const std::string& name, int64_t value, const std::string& expected) {
    require(ok, what + ": Latency " + name + " " + std::to_string(value) + " is out of range; expected " + expected);
  };
  check(l.batch() >= 1, "batch", l.batch(), ">= 1");
  check(l.threads() >= 1, "threads", l.threads(), ">= 1");
  check(l.snap() >= 1, "snap", l.snap(), ">= 1 (e.g. 8 or 16)");
  check(l.max_widths() >= 2, "max_widths", l.max_widths(), ">= 2 (the full width and at least one narrower)");
  check(l.repeats() >= 1, "repeats", l.repeats(), ">= 1");
  check(l.attempts() >= 1, "attempts", l.attempts(), ">= 1");
}

std::string describe(const Latency& latency) {
  char text[96];
  if (latency.kind() == Latency::Kind::Speedup)
    std::snprintf(text, sizeof text, "%.2fx faster", latency.factor());
  else
    std::snprintf(text, sizeof text, "at most %lld us", static_cast<long long>(latency.time().count()));
  return std::string(text) + " at batch " + std::to_string(latency.batch()) + ", " +
         std::to_string(latency.threads()) + " thread" + (latency.threads() == 1 ? "" : "s");
}

}  // namespace detail

std::string LatencyTable::to_json() const {
  json layers_json = json::array(), groups_json = json::array();
  for (const auto& g : groups) groups_json.push_back({{"name", g.name}, {"channels", g.channels}, {"widths", g.widths}});
  for (const auto& l : layers) {
    json in = json::array();
    for (const auto& [g, features] : l.in_groups) in.push_back({g, features});
    layers_json.push_back({{"name", l.name}, {"in_groups", in}, {"out_group", l.out_group}, {"depthwise", l.depthwise},
                           {"out_elements", l.out_elements}, {"in_widths", l.in_widths}, {"out_widths", l.out_widths},
                           {"seconds", l.seconds}});
  }
  const json out = {{"format", "pare latency table 1"}, {"fingerprint", fingerprint}, {"host", host},
                    {"input_shape", input_shape}, {"threads", threads}, {"network_seconds", network_seconds},
                    {"measure_seconds", measure_seconds}, {"groups", groups_json}, {"layers", layers_json}};
  return out.dump(1);
}

LatencyTable LatencyTable::from_json(const std::string& text) {
  LatencyTable t;
  try {
    const auto j = json::parse(text);
    require(j.at("format") == "pare latency table 1", "unknown format");
    j.at("fingerprint").get_to(t.fingerprint);
    j.at("host").get_to(t.host);
    j.at("input_shape").get_to(t.input_shape);
    j.at("threads").get_to(t.threads);
    j.at("network_seconds").get_to(t.network_seconds);
    j.at("measure_seconds").get_to(t.measure_seconds);
    for (const auto& g : j.at("groups")) t.groups.push_back({g.at("name"), g.at("channels"), g.at("widths")});
    for (const auto& l : j.at("layers")) {
      LatencyLayer layer{l.at("name"), {}, l.at("out_group"), l.at("depthwise"), l.at("out_elements"),
                         l.at("in_widths"), l.at("out_widths"), l.at("seconds")};
      for (const auto& in : l.at("in_groups")) layer.in_groups.emplace_back(in.at(0), in.at(1));
      t.layers.push_back(std::move(layer));
    }
  } catch (const std::exception& e) {
    throw Error(std::string("LatencyTable::from_json: not a latency table written by to_json: ") + e.what());
  }
  return t;
}

LatencyModel::LatencyModel(LatencyTable table) : table_(std::move(table)) {
  require(table_.network_seconds > 0, "LatencyModel: the table's network_seconds is not positive; measure it first");
  for (const auto& g : table_.groups)
    require(!g.widths.empty() && g.widths.back() == g.channels,
            "LatencyModel: group '" + g.name + "' has no widths or its last width is not its channel count");
  for (const auto& layer : table_.layers) check_layer(layer, table_.groups.size());
  const auto full = full_widths();
  for (const auto& layer : table_.layers) elements_full_ += double(layer.out_elements);
  rest_ = 0;
  layers_full_ = predict(full) / scale_;  // with rest_ 0 and scale_ 1: the layers alone
  rest_ = std::max(0.0, table_.network_seconds - layers_full_);
  scale_ = table_.network_seconds / (layers_full_ + rest_);
}

std::vector<int64_t> LatencyModel::full_widths() const {
  std::vector<int64_t> widths;
  for (const auto& g : table_.groups) widths.push_back(g.channels);
  return widths;
}

double LatencyModel::predict(const std::vector<int64_t>& widths) const {
  require(widths.size() == table_.groups.size(), "LatencyModel::predict: " + std::to_string(widths.size()) +
                                                     " widths for " + std::to_string(table_.groups.size()) +
                                                     " groups; expected one width per table group");
  double seconds = 0, elements = 0;
  for (const auto& layer : table_.layers) {
    double in = double(layer.in_widths.back());
    if (!layer.in_groups.empty()) {
      in = 0;
      for (const auto& [g, features] : layer.in_groups)
        in += double(features) * double(widths[g]) / double(table_.groups[g].channels);
    }
    const double out = layer.out_group >= 0 ? double(widths[layer.out_group]) : double(layer.out_widths.back());
    elements += double(layer.out_elements) * out / double(layer.out_widths.back());
    if (layer.depthwise) {
      seconds += interpolate(layer.out_widths, layer.seconds, out);
      continue;
    }
    std::vector<double> rows;  // each timed input width, interpolated at `out`
    const size_t n = layer.out_widths.size();
    for (size_t i = 0; i < layer.in_widths.size(); ++i)
      rows.push_back(interpolate(layer.out_widths, {layer.seconds.begin() + long(i * n), layer.seconds.begin() + long((i + 1) * n)}, out));
    seconds += interpolate(layer.in_widths, rows, in);
  }
  const double rest = elements_full_ > 0 ? rest_ * elements / elements_full_ : rest_;
  return scale_ * (seconds + rest);
}

}  // namespace pare
