#include "pare/core/report.hpp"

#include <cstdio>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "pare/core/error.hpp"

namespace pare {
namespace {

using nlohmann::json;

json layer_to_json(const LayerReport& layer) {
  json out{{"name", layer.name},
           {"parameters", layer.parameters},
           {"nonzeros", layer.nonzeros},
           {"sparsity", layer.sparsity()},
           {"metrics", layer.metrics},
           {"labels", layer.labels}};
  if (layer.channels_before) out["channels_before"] = *layer.channels_before;
  if (layer.channels_after) out["channels_after"] = *layer.channels_after;
  return out;
}

std::optional<std::int64_t> optional_count(const json& object, const char* key) {
  if (!object.contains(key)) return std::nullopt;
  return object[key].get<std::int64_t>();
}

json pass_to_json(const PassReport& pass) {
  json layers = json::array();
  for (const auto& layer : pass.layers) layers.push_back(layer_to_json(layer));
  json out{{"pass", pass.pass},
           {"seconds", pass.seconds},
           {"layers", layers},
           {"metrics", pass.metrics},
           {"labels", pass.labels},
           {"total_parameters", pass.total_parameters()},
           {"total_nonzeros", pass.total_nonzeros()},
           {"total_sparsity", pass.total_sparsity()}};
  if (!pass.series.empty()) out["series"] = {{"name", pass.series_name}, {"values", pass.series}};
  return out;
}

// A layer's count from untrusted JSON: an integer in [0, 2^53] (what a double
// holds exactly); floats and out-of-range values would be undefined to convert.
std::int64_t count_field(const json& layer, const char* key) {
  const auto& value = layer.at(key);
  constexpr std::int64_t kLargest = std::int64_t(1) << 53;
  const bool valid = (value.is_number_unsigned() && value.get<std::uint64_t>() <= std::uint64_t(kLargest)) ||
                     (value.is_number_integer() && !value.is_number_unsigned() && value.get<std::int64_t>() >= 0);
  if (!valid)
    throw Error(std::string("report JSON is malformed: layer field '") + key + "' is " + value.dump() +
                "; expected an integer in [0, 2^53]");
  return value.get<std::int64_t>();
}

// Totals saturate instead of overflowing on absurd (hand-written) reports.
std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  std::int64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? std::numeric_limits<std::int64_t>::max() : sum;
}

std::string format(const char* fmt, double a) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, fmt, a);
  return buffer;
}

}  // namespace

std::int64_t PassReport::total_parameters() const {
  std::int64_t total = 0;
  for (const auto& layer : layers) total = saturating_add(total, layer.parameters);
  return total;
}

std::int64_t PassReport::total_nonzeros() const {
  std::int64_t total = 0;
  for (const auto& layer : layers) total = saturating_add(total, layer.nonzeros);
  return total;
}

double PassReport::total_sparsity() const {
  const auto params = total_parameters();
  return params == 0 ? 0.0 : 1.0 - double(total_nonzeros()) / double(params);
}

PassReport& Report::add(std::string pass_name) {
  passes.emplace_back();
  passes.back().pass = std::move(pass_name);
  return passes.back();
}

bool Report::has(const std::string& pass_name) const {
  for (const auto& pass : passes)
    if (pass.pass == pass_name) return true;
  return false;
}

const PassReport& Report::at(const std::string& pass_name) const {
  for (auto it = passes.rbegin(); it != passes.rend(); ++it)
    if (it->pass == pass_name) return *it;
  throw Error("report has no entry for pass '" + pass_name + "'; passes that ran: " +
              std::to_string(passes.size()));
}

std::string Report::to_json(int indent) const {
  json passes_json = json::array();
  for (const auto& pass : passes) passes_json.push_back(pass_to_json(pass));
  return json{{"format", "pare.report/1"}, {"passes", passes_json}}.dump(indent);
}

Report Report::from_json(const std::string& text) {
  Report report;
  try {
    const json doc = json::parse(text);
    for (const auto& p : doc.at("passes")) {
      PassReport& pass = report.add(p.at("pass").get<std::string>());
      pass.seconds = p.at("seconds").get<double>();
      pass.metrics = p.value("metrics", std::map<std::string, double>{});
      pass.labels = p.value("labels", std::map<std::string, std::string>{});
      if (p.contains("series")) {
        pass.series_name = p["series"].at("name").get<std::string>();
        pass.series = p["series"].at("values").get<std::vector<double>>();
      }
      for (const auto& l : p.at("layers")) {
        LayerReport layer;
        layer.name = l.at("name").get<std::string>();
        layer.parameters = count_field(l, "parameters");
        layer.nonzeros = count_field(l, "nonzeros");
        layer.metrics = l.value("metrics", std::map<std::string, double>{});
        layer.labels = l.value("labels", std::map<std::string, std::string>{});
        layer.channels_before = optional_count(l, "channels_before");
        layer.channels_after = optional_count(l, "channels_after");
        pass.layers.push_back(std::move(layer));
      }
    }
  } catch (const json::exception& e) {
    throw Error(std::string("report JSON is malformed: ") + e.what() +
                "; expected the output of pare::Report::to_json()");
  }
  return report;
}

std::string Report::to_string() const {
  std::ostringstream out;
  char line[256];
  for (const auto& pass : passes) {
    out << "== " << pass.pass << " (" << format("%.3f", pass.seconds) << " s)\n";
    for (const auto& [key, value] : pass.labels) out << "   " << key << ": " << value << "\n";
    for (const auto& [key, value] : pass.metrics) out << "   " << key << ": " << format("%g", value) << "\n";
    if (!pass.series.empty()) {
      out << "   " << pass.series_name << ":";
      for (double v : pass.series) out << " " << format("%.4g", v);
      out << "\n";
    }
    if (pass.layers.empty()) continue;
    std::snprintf(line, sizeof line, "   %-32s %12s %12s %9s  %s\n", "layer", "params", "nonzeros",
                  "sparsity", "details");
    out << line;
    for (const auto& layer : pass.layers) {
      std::string details;
      if (layer.channels_before && layer.channels_after)
        details += "channels=" + std::to_string(*layer.channels_before) + "->" + std::to_string(*layer.channels_after) + " ";
      for (const auto& [key, value] : layer.labels) details += key + "=" + value + " ";
      for (const auto& [key, value] : layer.metrics) details += key + "=" + format("%.4g", value) + " ";
      // The details after the buffer: a long list (a search's candidates) is never cut, nor its line break.
      std::snprintf(line, sizeof line, "   %-32s %12lld %12lld %8.2f%%  ", layer.name.c_str(),
                    (long long)layer.parameters, (long long)layer.nonzeros, 100.0 * layer.sparsity());
      out << line << details << "\n";
    }
    std::snprintf(line, sizeof line, "   %-32s %12lld %12lld %8.2f%%\n", "total",
                  (long long)pass.total_parameters(), (long long)pass.total_nonzeros(),
                  100.0 * pass.total_sparsity());
    out << line;
  }
  return out.str();
}

}  // namespace pare
