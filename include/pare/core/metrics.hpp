#pragma once
// Prometheus text exposition helpers shared by the cache, the pool and the runner.
// Header-only and free of LibTorch.

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace pare {

/// The q-quantile (q in [0, 1]) of ascending `sorted` samples by the nearest
/// rank (no interpolation: the value a sample really had); 0 for no samples.
inline double nearest_rank(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto rank = size_t(q * double(sorted.size()));
  return sorted[rank < sorted.size() ? rank : sorted.size() - 1];
}

}  // namespace pare

namespace pare::prometheus {

/// A label set such as {{"model", "cnn"}}, written as {model="cnn"}.
using Labels = std::vector<std::pair<std::string, std::string>>;

inline std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.17g", value);
  return buffer;
}

inline std::string format_labels(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) out += ",";
    out += labels[i].first + "=\"";
    for (char c : labels[i].second) {  // escaping per the exposition format
      if (c == '\\' || c == '"') out += '\\';
      if (c == '\n') { out += "\\n"; continue; }
      out += c;
    }
    out += "\"";
  }
  return out + "}";
}

/// Writes the HELP and TYPE lines of a metric family ("counter", "gauge", "histogram").
inline void append_header(std::string& out, const std::string& name, const std::string& type,
                          const std::string& help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

/// Writes one sample line.
inline void append_sample(std::string& out, const std::string& name, double value,
                          const Labels& labels = {}) {
  out += name + format_labels(labels) + " " + format_value(value) + "\n";
}

/// A whole single-sample family: header and value.
inline void append_metric(std::string& out, const std::string& name, const std::string& type,
                          const std::string& help, double value, const Labels& labels = {}) {
  append_header(out, name, type, help);
  append_sample(out, name, value, labels);
}

}  // namespace pare::prometheus
