#pragma once
// pare::Report — what each pass did, per layer, as a table or as JSON.
// Free of LibTorch so host code can read reports cheaply.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pare {

/// One layer (one weight tensor) as a pass left it.
struct LayerReport {
  std::string name;          ///< parameter name, e.g. "features.0.weight"
  std::int64_t parameters = 0;
  std::int64_t nonzeros = 0;
  double sparsity() const {
    return parameters == 0 ? 0.0 : 1.0 - double(nonzeros) / double(parameters);
  }
  /// Pass-specific figures, e.g. {"scale", 0.02}, {"sqnr_db", 41.3}.
  std::map<std::string, double> metrics;
  /// Pass-specific labels, e.g. {"observer", "histogram"}, {"status", "float"}.
  std::map<std::string, std::string> labels;
  /// Channels before and after a pass that removes channels (per layer or per
  /// group of coupled layers); empty for passes that keep every channel.
  std::optional<std::int64_t> channels_before, channels_after;
};

/// One pass's entry.
struct PassReport {
  std::string pass;
  double seconds = 0.0;  ///< wall time of the pass
  std::vector<LayerReport> layers;
  std::map<std::string, double> metrics;       ///< e.g. {"file_bytes", 1.2e6}
  std::map<std::string, std::string> labels;   ///< e.g. {"path", "m.pt"}
  std::vector<double> series;                  ///< e.g. loss per epoch
  std::string series_name;                     ///< what `series` holds

  std::int64_t total_parameters() const;
  std::int64_t total_nonzeros() const;
  double total_sparsity() const;
};

/// The entries of every pass that ran, in order.
class Report {
 public:
  std::vector<PassReport> passes;

  PassReport& add(std::string pass_name);
  /// The last entry of the pass with this name; pare::Error if none ran.
  const PassReport& at(const std::string& pass_name) const;
  bool has(const std::string& pass_name) const;

  /// Pretty-printed JSON (stable keys: "passes", "pass", "seconds", "layers", ...).
  std::string to_json(int indent = 2) const;
  /// Parses what to_json() wrote; pare::Error on malformed text.
  static Report from_json(const std::string& text);
  /// A readable fixed-width table, one block per pass.
  std::string to_string() const;
  /// One self-contained HTML page (inline CSS and SVG, no scripts, nothing
  /// fetched): summary cards, a table per pass and per-layer bar charts of
  /// sparsity, int8 SQNR (float layers marked), channels before/after.
  std::string to_html(const std::string& title = "pare report") const;
};

}  // namespace pare
