#pragma once
// Self-contained HTML pages with inline SVG bar charts, shared by the report
// (Report::to_html) and the benchmark (bench_html). No LibTorch, no JavaScript,
// nothing fetched from the network: the page renders from the file alone.

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace pare::html {

/// Text safe inside HTML/SVG elements and attribute values.
std::string escape(const std::string& text);
/// A number for people: "%.*g" with `digits` significant digits.
std::string number(double value, int digits = 4);
/// 1234567 -> "1.23 M", 2048 -> "2.05 k".
std::string si(double value);

/// One coloured series of a bar chart (one bar per label).
struct Series {
  std::string name;
  std::vector<double> values;
};

/// A row drawn instead of bars: e.g. a layer that stayed float in an int8 chart.
struct Marker {
  std::string label;
  std::string text;
};

/// A horizontal bar chart: one row per label, one bar per series in each row,
/// markers as extra rows with a note. Bars are `<rect class="bar sN">`, each
/// with a `<title>` tooltip; every label is an SVG `<text>`.
struct BarChart {
  BarChart(std::string title, std::string unit) : title(std::move(title)), unit(std::move(unit)) {}
  std::string title;
  std::string unit;                 ///< appended to each value, e.g. "%", " dB"
  std::vector<std::string> labels;  ///< one per row
  std::vector<Series> series;       ///< each with labels.size() values
  std::vector<Marker> markers;
  double max_value = 0;             ///< the axis' end; 0: the largest value
  int width = 1100;                 ///< in CSS pixels; the page scales it down on narrow screens

  std::string to_svg() const;
};

/// The chart with its title as a captioned `<figure>`.
std::string figure(const BarChart& chart);

/// One point of a scatter chart; `chosen` draws it larger, in another colour.
struct Point {
  double x = 0, y = 0;
  std::string label;
  bool chosen = false;
};

/// Points on two linear axes (e.g. each CompressTo candidate's speedup and
/// accuracy), with optional target lines: a vertical one at `x_target` and a
/// horizontal one at `y_target` (NaN: none). Points are `<circle class="point">`
/// (`class="point chosen"` for the chosen one), each with a `<title>` tooltip.
struct ScatterChart {
  ScatterChart(std::string title, std::string x_name, std::string y_name)
      : title(std::move(title)), x_name(std::move(x_name)), y_name(std::move(y_name)) {}
  std::string title, x_name, y_name;
  std::vector<Point> points;
  double x_target = NAN, y_target = NAN;
  std::string x_target_label, y_target_label;
  int width = 720, height = 360;

  std::string to_svg() const;
};

/// The scatter chart with its title as a captioned `<figure>`.
std::string figure(const ScatterChart& chart);

/// Summary figures drawn as cards above the charts.
struct Card {
  std::string label;
  std::string value;
};

std::string cards(const std::vector<Card>& items);
/// A table with a header row; cells are escaped.
std::string table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);
/// The whole page: doctype, inline CSS scoped to `.pare-report`, `body` inside.
std::string page(const std::string& title, const std::string& body);

}  // namespace pare::html
