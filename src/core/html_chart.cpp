#include "core/html_chart.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace pare::html {
namespace {

// Layout in SVG user units (= CSS pixels at 100% zoom).
constexpr double kCharWidth = 7.6;  // a 12px monospace character, with some margin
constexpr int kBarHeight = 12;
constexpr int kRowGap = 6;
constexpr int kValueWidth = 96;  // room for the value printed after a bar
constexpr int kTop = 22;         // axis labels (and the legend, if any)

const char* const kStyle = R"(
.pare-report { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  max-width: 1140px; margin: 0 auto; padding: 16px; background: #fff; }
.pare-report h1 { font-size: 22px; margin: 0 0 12px; }
.pare-report h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.pare-report .cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0 16px; }
.pare-report .card { border: 1px solid #d0d7de; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.pare-report .card b { display: block; font-size: 20px; }
.pare-report .card span { color: #57606a; font-size: 12px; }
.pare-report table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
.pare-report th, .pare-report td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; }
.pare-report th { background: #f6f8fa; }
.pare-report figure { margin: 12px 0; }
.pare-report figcaption { font-weight: 600; margin-bottom: 4px; }
.pare-report .side-by-side { display: flex; flex-wrap: wrap; gap: 16px; }
.pare-report .side-by-side figure { flex: 1 1 520px; }
.pare-report svg { max-width: 100%; height: auto; }
.pare-report svg text { font: 12px monospace; fill: #1f2328; }
.pare-report svg .axis { stroke: #8c959f; stroke-width: 1; }
.pare-report svg .grid { stroke: #d0d7de; stroke-width: 1; stroke-dasharray: 3 3; }
.pare-report svg .s0 { fill: #4c78a8; }
.pare-report svg .s1 { fill: #f58518; }
.pare-report svg .s2 { fill: #54a24b; }
.pare-report svg .s3 { fill: #b279a2; }
.pare-report svg .island { fill: #fff3e0; stroke: #f58518; stroke-dasharray: 4 2; }
.pare-report svg text.island-note { fill: #b35c00; font-weight: bold; }
.pare-report svg .point { fill: #4c78a8; fill-opacity: 0.8; }
.pare-report svg .point.chosen { fill: #e45756; stroke: #1f2328; stroke-width: 1.5; fill-opacity: 1; }
.pare-report svg .target { stroke: #54a24b; stroke-width: 1.5; stroke-dasharray: 6 3; }
.pare-report details pre { font-size: 12px; overflow-x: auto; background: #f6f8fa; padding: 8px; }
.pare-report .note { color: #57606a; font-size: 13px; }
)";

std::string attr(const char* name, double value) {
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, " %s=\"%.1f\"", name, value);
  return buffer;
}

// Plain digits up to 9999, then SI suffixes: never "1.89e+03" on an axis.
std::string compact(double value, int digits) {
  if (std::fabs(value) >= 1e4) return si(value);
  const int integer_digits = std::fabs(value) >= 1 ? int(std::log10(std::fabs(value))) + 1 : 1;
  return number(value, std::max(digits, integer_digits));
}

std::string text(double x, double y, const std::string& content, const char* extra = "") {
  return "<text" + attr("x", x) + attr("y", y) + " " + extra + ">" + escape(content) + "</text>\n";
}

}  // namespace

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string number(double value, int digits) {
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
  return buffer;
}

std::string si(double value) {
  const char* suffixes[] = {"", " k", " M", " G", " T"};
  int i = 0;
  while (std::fabs(value) >= 1000 && i < 4) {
    value /= 1000;
    ++i;
  }
  return number(value, i == 0 ? 6 : 3) + suffixes[i];
}

std::string BarChart::to_svg() const {
  size_t longest = 0;
  for (const auto& label : labels) longest = std::max(longest, label.size());
  for (const auto& marker : markers) longest = std::max(longest, marker.label.size());
  const int label_width = std::min(int(double(longest) * kCharWidth) + 16, width / 2);
  const int bar_width = width - label_width - kValueWidth;
  const int bars_per_row = std::max<int>(1, int(series.size()));
  const int row_height = bars_per_row * kBarHeight + kRowGap;
  const int top = kTop + (series.size() > 1 ? 18 : 0);
  const int height = top + int(labels.size() + markers.size()) * row_height + 8;

  double axis_max = max_value;
  for (const auto& s : series)
    for (double v : s.values) axis_max = std::max(axis_max, std::isfinite(v) ? v : 0.0);
  if (axis_max <= 0) axis_max = 1;
  auto scaled = [&](double v) { return std::isfinite(v) ? std::max(0.0, v) / axis_max * bar_width : 0.0; };

  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\"" + attr("width", width) +
                    attr("height", height) + " viewBox=\"0 0 " + std::to_string(width) + " " +
                    std::to_string(height) + "\">\n<title>" + escape(title) + "</title>\n";
  if (series.size() > 1) {
    double x = label_width;
    for (size_t s = 0; s < series.size(); ++s) {
      svg += "<rect class=\"legend s" + std::to_string(s % 4) + "\"" + attr("x", x) + attr("y", 4) +
             attr("width", 12) + attr("height", 12) + "/>\n";
      svg += text(x + 16, 14, series[s].name);
      x += 16 + double(series[s].name.size() + 3) * kCharWidth;
    }
  }
  const int ticks = std::clamp(bar_width / 110, 2, 4);  // dashed grid lines, labels at least 110 px apart
  for (int tick = 0; tick <= ticks; ++tick) {
    const double x = label_width + double(bar_width) * tick / ticks;
    svg += "<line class=\"" + std::string(tick == 0 ? "axis" : "grid") + "\"" + attr("x1", x) + attr("y1", top - 4) +
           attr("x2", x) + attr("y2", height - 4) + "/>\n";
    svg += text(x, top - 8, compact(axis_max * tick / ticks, 3) + unit, "text-anchor=\"middle\"");
  }
  for (size_t row = 0; row < labels.size(); ++row) {
    const double y = top + double(row) * row_height;
    svg += text(label_width - 8, y + row_height / 2.0 + 4, labels[row], "text-anchor=\"end\"");
    for (size_t s = 0; s < series.size(); ++s) {
      const double value = row < series[s].values.size() ? series[s].values[row] : NAN;
      const double by = y + kRowGap / 2.0 + double(s) * kBarHeight, width = scaled(value);
      const std::string shown = compact(value, 4) + unit;
      svg += "<rect class=\"bar s" + std::to_string(s % 4) + "\"" + attr("x", label_width) + attr("y", by) +
             attr("width", width) + attr("height", kBarHeight - 1) + "><title>" + escape(labels[row]) + " — " +
             escape(series[s].name) + ": " + escape(shown) + "</title></rect>\n";
      svg += text(label_width + width + 4, by + kBarHeight - 2, shown);
    }
  }
  for (size_t m = 0; m < markers.size(); ++m) {
    const double y = top + double(labels.size() + m) * row_height;
    svg += text(label_width - 8, y + row_height / 2.0 + 4, markers[m].label, "text-anchor=\"end\"");
    svg += "<rect class=\"island\"" + attr("x", label_width) + attr("y", y + kRowGap / 2.0) +
           attr("width", bar_width) + attr("height", row_height - kRowGap) + "/>\n";
    svg += text(label_width + 8, y + row_height / 2.0 + 4, markers[m].text, "class=\"island-note\"");
  }
  return svg + "</svg>\n";
}

std::string figure(const BarChart& chart) {
  return "<figure>\n<figcaption>" + escape(chart.title) + "</figcaption>\n" + chart.to_svg() + "</figure>\n";
}

namespace {

// [low, high] of the values and the target, padded by 8% (a lone value gets +-1).
std::pair<double, double> axis_range(std::vector<double> values, double target) {
  if (std::isfinite(target)) values.push_back(target);
  double low = INFINITY, high = -INFINITY;
  for (double v : values)
    if (std::isfinite(v)) low = std::min(low, v), high = std::max(high, v);
  if (!std::isfinite(low)) return {0.0, 1.0};
  const double pad = high > low ? 0.08 * (high - low) : 1.0;
  return {low - pad, high + pad};
}

}  // namespace

std::string ScatterChart::to_svg() const {
  const double left = 64, right = 16, top = 16, bottom = 44;
  std::vector<double> xs, ys;
  for (const auto& p : points) xs.push_back(p.x), ys.push_back(p.y);
  const auto [x0, x1] = axis_range(xs, x_target);
  const auto [y0, y1] = axis_range(ys, y_target);
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  auto sx = [&, x0 = x0, x1 = x1](double x) { return left + (x - x0) / (x1 - x0) * plot_w; };
  auto sy = [&, y0 = y0, y1 = y1](double y) { return top + (1 - (y - y0) / (y1 - y0)) * plot_h; };
  std::string svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\"" + attr("width", width) +
                    attr("height", height) + " viewBox=\"0 0 " + std::to_string(width) + " " + std::to_string(height) +
                    "\">\n<title>" + escape(title) + "</title>\n";
  svg += "<line class=\"axis\"" + attr("x1", left) + attr("y1", top + plot_h) + attr("x2", left + plot_w) +
         attr("y2", top + plot_h) + "/>\n<line class=\"axis\"" + attr("x1", left) + attr("y1", top) + attr("x2", left) +
         attr("y2", top + plot_h) + "/>\n";
  for (int tick = 0; tick <= 4; ++tick) {
    const double xv = x0 + (x1 - x0) * tick / 4, yv = y0 + (y1 - y0) * tick / 4;
    svg += text(sx(xv), top + plot_h + 16, compact(xv, 3), "text-anchor=\"middle\"");
    svg += text(left - 6, sy(yv) + 4, compact(yv, 4), "text-anchor=\"end\"");
  }
  svg += text(left + plot_w / 2, height - 6.0, x_name, "text-anchor=\"middle\"");
  svg += text(14, top + plot_h / 2, y_name,
              ("text-anchor=\"middle\" transform=\"rotate(-90 14 " + number(top + plot_h / 2, 6) + ")\"").c_str());
  if (std::isfinite(x_target))
    svg += "<line class=\"target\"" + attr("x1", sx(x_target)) + attr("y1", top) + attr("x2", sx(x_target)) +
           attr("y2", top + plot_h) + "><title>" + escape(x_target_label) + "</title></line>\n" +
           text(sx(x_target) + 4, top + 12, x_target_label);
  if (std::isfinite(y_target))
    svg += "<line class=\"target\"" + attr("x1", left) + attr("y1", sy(y_target)) + attr("x2", left + plot_w) +
           attr("y2", sy(y_target)) + "><title>" + escape(y_target_label) + "</title></line>\n" +
           text(left + 4, sy(y_target) - 4, y_target_label);
  for (const auto& p : points)
    svg += "<circle class=\"point" + std::string(p.chosen ? " chosen" : "") + "\"" + attr("cx", sx(p.x)) +
           attr("cy", sy(p.y)) + attr("r", p.chosen ? 7 : 5) + "><title>" + escape(p.label) + "</title></circle>\n" +
           text(sx(p.x) + 9, sy(p.y) - 6, p.label.substr(0, p.label.find(':')));
  return svg + "</svg>\n";
}

std::string figure(const ScatterChart& chart) {
  return "<figure>\n<figcaption>" + escape(chart.title) + "</figcaption>\n" + chart.to_svg() + "</figure>\n";
}

std::string cards(const std::vector<Card>& items) {
  std::string out = "<div class=\"cards\">\n";
  for (const auto& item : items)
    out += "<div class=\"card\"><b>" + escape(item.value) + "</b><span>" + escape(item.label) + "</span></div>\n";
  return out + "</div>\n";
}

std::string table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::string out = "<table>\n<tr>";
  for (const auto& cell : header) out += "<th>" + escape(cell) + "</th>";
  out += "</tr>\n";
  for (const auto& row : rows) {
    out += "<tr>";
    for (const auto& cell : row) out += "<td>" + escape(cell) + "</td>";
    out += "</tr>\n";
  }
  return out + "</table>\n";
}

std::string page(const std::string& title, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + escape(title) +
         "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<div class=\"pare-report\">\n<h1>" +
         escape(title) + "</h1>\n" + body + "</div>\n</body>\n</html>\n";
}

}  // namespace pare::html
