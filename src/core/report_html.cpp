// Report::to_html: the report as one page a person can look at. A table says
// what each layer holds; a chart shows at a glance where the sparsity sits and
// which layers lose precision, which matters once a model has 100+ layers.

#include <cmath>
#include <optional>
#include <utility>

#include "core/html_chart.hpp"
#include "pare/core/report.hpp"

namespace pare {
namespace {

using Counts = std::pair<std::int64_t, std::int64_t>;

// Channels before/after: the typed fields, or metrics of the same names from
// passes that record them as figures.
std::optional<Counts> channels_of(const LayerReport& layer) {
  if (layer.channels_before && layer.channels_after) return Counts{*layer.channels_before, *layer.channels_after};
  const auto before = layer.metrics.find("channels_before"), after = layer.metrics.find("channels_after");
  if (before == layer.metrics.end() || after == layer.metrics.end()) return std::nullopt;
  return Counts{std::int64_t(before->second), std::int64_t(after->second)};
}

bool is_float_island(const LayerReport& layer) {
  const auto status = layer.labels.find("status");
  return status != layer.labels.end() && status->second == "float";
}

std::string percent(double fraction) { return html::number(100.0 * fraction, 4) + "%"; }

// The same counts as a chart already drawn: a later pass that did not change
// the weights (quantization, export) repeats the pruning's figures, perhaps
// under other names ("conv1" for "conv1.weight").
std::string sparsity_signature(const PassReport& pass) {
  std::string signature;
  for (const auto& layer : pass.layers)
    if (layer.parameters > 0) signature += std::to_string(layer.parameters) + ":" + std::to_string(layer.nonzeros) + ";";
  return signature;
}

std::optional<html::BarChart> sparsity_chart(const PassReport& pass) {
  html::BarChart chart{"Sparsity per layer (" + pass.pass + ")", "%"};
  html::Series series{"sparsity", {}};
  bool any = false;
  for (const auto& layer : pass.layers) {
    if (layer.parameters == 0) continue;
    chart.labels.push_back(layer.name);
    series.values.push_back(100.0 * layer.sparsity());
    any = any || layer.sparsity() > 0;
  }
  if (!any) return std::nullopt;
  chart.series.push_back(std::move(series));
  chart.max_value = 100;
  return chart;
}

std::optional<html::BarChart> sqnr_chart(const PassReport& pass) {
  html::BarChart chart{"Int8 SQNR per layer, dB (" + pass.pass + "; higher is closer to float)", " dB"};
  html::Series series{"SQNR", {}};
  for (const auto& layer : pass.layers) {
    const auto sqnr = layer.metrics.find("sqnr_db");
    if (is_float_island(layer)) {
      const auto reason = layer.labels.find("reason");
      chart.markers.push_back({layer.name, "float island" + (reason == layer.labels.end() ? std::string()
                                                                                          : ": " + reason->second)});
    } else if (sqnr != layer.metrics.end()) {
      chart.labels.push_back(layer.name);
      series.values.push_back(sqnr->second);
    }
  }
  if (chart.labels.empty() && chart.markers.empty()) return std::nullopt;
  chart.series.push_back(std::move(series));
  return chart;
}

std::optional<html::BarChart> channels_chart(const PassReport& pass) {
  html::BarChart chart{"Channels before and after (" + pass.pass + ")", ""};
  html::Series before{"before", {}}, after{"after", {}};
  for (const auto& layer : pass.layers) {
    const auto counts = channels_of(layer);
    if (!counts) continue;
    chart.labels.push_back(layer.name);
    before.values.push_back(double(counts->first));
    after.values.push_back(double(counts->second));
  }
  if (chart.labels.empty()) return std::nullopt;
  chart.series = {std::move(before), std::move(after)};
  return chart;
}

std::optional<html::BarChart> series_chart(const PassReport& pass) {
  if (pass.series.empty()) return std::nullopt;
  const std::string name = pass.series_name.empty() ? "value" : pass.series_name;
  html::BarChart chart{name + " (" + pass.pass + ")", ""};
  for (size_t i = 0; i < pass.series.size(); ++i) chart.labels.push_back(name + " " + std::to_string(i + 1));
  chart.series.push_back({name, pass.series});
  return chart;
}

// Rows that are candidates of a search (CompressTo: metrics speedup and
// accuracy, label chosen) as a latency–accuracy chart, the target marked: the
// speedup asked (metric target_speedup) and the least accuracy allowed
// (input_accuracy - max_drop).
std::optional<html::ScatterChart> candidates_chart(const PassReport& pass) {
  html::ScatterChart chart{"Latency and accuracy of every candidate (" + pass.pass + ")",
                           "speedup over the input (measured, higher is faster)", "top-1 accuracy, %"};
  for (const auto& row : pass.layers) {
    const auto speedup = row.metrics.find("speedup"), accuracy = row.metrics.find("accuracy");
    const auto chosen = row.labels.find("chosen");
    if (speedup == row.metrics.end() || accuracy == row.metrics.end() || chosen == row.labels.end()) continue;
    if (speedup->second <= 0) continue;  // not built (e.g. a width search refused)
    const auto applied = row.labels.find("applied");
    chart.points.push_back({speedup->second, accuracy->second,
                            row.name + ": " + html::number(speedup->second, 3) + "x, " +
                                html::number(accuracy->second, 4) + "%" +
                                (applied == row.labels.end() ? "" : ", " + applied->second),
                            chosen->second == "yes"});
  }
  if (chart.points.empty()) return std::nullopt;
  const auto metric = [&](const char* key) {
    const auto it = pass.metrics.find(key);
    return it == pass.metrics.end() ? NAN : it->second;
  };
  chart.x_target = metric("target_speedup");
  chart.x_target_label = "target " + html::number(chart.x_target, 3) + "x";
  chart.y_target = metric("input_accuracy") - metric("max_drop");
  chart.y_target_label = "budget: at least " + html::number(chart.y_target, 4) + "%";
  return chart;
}

std::string joined(const std::map<std::string, double>& metrics, const std::map<std::string, std::string>& labels) {
  std::string out;
  for (const auto& [key, value] : labels) out += key + "=" + value + "  ";
  for (const auto& [key, value] : metrics) out += key + "=" + html::number(value, 6) + "  ";
  return out;
}

std::vector<html::Card> summary_cards(const Report& report) {
  double seconds = 0;
  const PassReport* first_counted = nullptr;
  const PassReport* last_counted = nullptr;
  std::vector<html::Card> macs, file;
  for (const auto& pass : report.passes) {
    seconds += pass.seconds;
    if (pass.total_parameters() > 0) {
      if (!first_counted) first_counted = &pass;
      last_counted = &pass;
    }
    for (const auto& [key, value] : pass.metrics) {
      if (key.find("macs") != std::string::npos) macs.push_back({key + " (" + pass.pass + ")", html::si(value)});
      if (key == "file_bytes") file = {{"file size (" + pass.pass + ")", html::si(value) + "B"}};
    }
  }
  std::vector<html::Card> cards{{"passes", std::to_string(report.passes.size())},
                                {"total time", html::number(seconds, 3) + " s"}};
  if (first_counted) cards.push_back({"parameters", html::si(double(first_counted->total_parameters()))});
  if (last_counted) {
    cards.push_back({"nonzeros (" + last_counted->pass + ")", html::si(double(last_counted->total_nonzeros()))});
    cards.push_back({"sparsity (" + last_counted->pass + ")", percent(last_counted->total_sparsity())});
  }
  cards.insert(cards.end(), macs.begin(), macs.end());
  cards.insert(cards.end(), file.begin(), file.end());
  return cards;
}

std::string summary_table(const Report& report) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& pass : report.passes)
    rows.push_back({pass.pass, html::number(pass.seconds, 4), std::to_string(pass.total_parameters()),
                    std::to_string(pass.total_nonzeros()), percent(pass.total_sparsity()),
                    joined(pass.metrics, pass.labels)});
  return html::table({"pass", "seconds", "parameters", "nonzeros", "sparsity", "details"}, rows);
}

std::string time_chart(const Report& report) {
  html::BarChart chart{"Time per pass", " s"};
  html::Series seconds{"seconds", {}};
  for (const auto& pass : report.passes) {
    chart.labels.push_back(pass.pass);
    seconds.values.push_back(pass.seconds);
  }
  chart.series.push_back(std::move(seconds));
  return html::figure(chart);
}

std::string pass_section(const PassReport& pass, std::string& last_sparsity) {
  std::string out = "<h2>" + html::escape(pass.pass) + "</h2>\n<p class=\"note\">" +
                    html::escape(html::number(pass.seconds, 4) + " s   " + joined(pass.metrics, pass.labels)) +
                    "</p>\n";
  int charts = 0;
  if (const auto chart = sparsity_chart(pass)) {
    const auto signature = sparsity_signature(pass);
    if (signature == last_sparsity) {
      out += "<p class=\"note\">Layer sparsity as in the chart above.</p>\n";
    } else {
      out += html::figure(*chart);
      last_sparsity = signature;
    }
    ++charts;
  }
  for (const auto& chart : {sqnr_chart(pass), channels_chart(pass), series_chart(pass)}) {
    if (!chart) continue;
    out += html::figure(*chart);
    ++charts;
  }
  if (const auto chart = candidates_chart(pass)) {
    out += html::figure(*chart);
    ++charts;
  }
  if (charts == 0) out += "<p class=\"note\">No per-layer figures.</p>\n";
  return out;
}

}  // namespace

std::string Report::to_html(const std::string& title) const {
  std::string body = html::cards(summary_cards(*this)) + summary_table(*this);
  if (!passes.empty()) body += time_chart(*this);
  std::string last_sparsity;
  for (const auto& pass : passes) body += pass_section(pass, last_sparsity);
  body += "<details><summary>Report as text</summary><pre>" + html::escape(to_string()) + "</pre></details>\n";
  return html::page(title, body);
}

}  // namespace pare
