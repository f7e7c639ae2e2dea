#include "pare/quantize/observers.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "pare/core/error.hpp"
#include "core/enum_names.hpp"

namespace pare {
namespace {

using FloatArray = Eigen::Map<const Eigen::ArrayXf>;
constexpr double kMinScale = std::numeric_limits<float>::epsilon();

// Spreads `mass`, uniform over [l, r], onto the bins of `target` by overlap.
void deposit(double l, double r, double mass, RangeHistogram& target) {
  if (mass == 0) return;
  const int64_t bins = int64_t(target.counts.size());
  const double width = target.bin_width();
  if (r - l <= 0 || width <= 0) {  // a point mass
    const int64_t b = width <= 0 ? 0 : std::clamp<int64_t>(int64_t((l - target.lo) / width), 0, bins - 1);
    target.counts[b] += mass;
    return;
  }
  const int64_t first = std::clamp<int64_t>(int64_t((l - target.lo) / width), 0, bins - 1);
  const int64_t last = std::clamp<int64_t>(int64_t((r - target.lo) / width), 0, bins - 1);
  for (int64_t b = first; b <= last; ++b) {
    const double bl = target.lo + double(b) * width, br = bl + width;
    const double overlap = std::min(r, br) - std::max(l, bl);
    if (overlap > 0) target.counts[b] += mass * overlap / (r - l);
  }
}

// Mean of (x - c)^2 for x uniform on [l, r].
double mean_square_distance(double l, double r, double c) {
  const double a = l - c, b = r - c;
  return (a * a + a * b + b * b) / 3.0;
}

class MinMaxObserver : public Observer {
 public:
  std::pair<double, double> range() const override { require_data(); return {min_, max_}; }

 protected:
  void add(const float*, int64_t, float, float) override {}
};

class MovingAverageObserver : public Observer {
 public:
  explicit MovingAverageObserver(double c) : c_(c) {}
  std::pair<double, double> range() const override { require_data(); return {avg_min_, avg_max_}; }

 protected:
  void add(const float*, int64_t, float batch_min, float batch_max) override {
    if (batches_++ == 0) { avg_min_ = batch_min; avg_max_ = batch_max; return; }
    avg_min_ += c_ * (batch_min - avg_min_);
    avg_max_ += c_ * (batch_max - avg_max_);
  }

 private:
  double c_, avg_min_ = 0, avg_max_ = 0;
  int64_t batches_ = 0;
};

// Keeps a histogram over the range seen so far; subclasses pick the range from it.
class HistogramObserverBase : public Observer {
 public:
  explicit HistogramObserverBase(int64_t bins) : bins_(bins) {}

 protected:
  void add(const float* data, int64_t n, float batch_min, float batch_max) override {
    const double lo = std::min<double>(batch_min, hist_.counts.empty() ? batch_min : hist_.lo);
    double hi = std::max<double>(batch_max, hist_.counts.empty() ? batch_max : hist_.hi);
    if (hi <= lo) hi = lo + 1e-8 * std::max(1.0, std::abs(lo));  // a constant tensor so far
    if (hist_.counts.empty()) {
      hist_ = {lo, hi, std::vector<double>(size_t(bins_), 0.0)};
    } else if (lo < hist_.lo || hi > hist_.hi) {
      hist_ = rebin(hist_, lo, hi, bins_);
    }
    const double scale = double(bins_) / (hist_.hi - hist_.lo);
    for (int64_t i = 0; i < n; ++i) {
      const auto b = std::clamp<int64_t>(int64_t((double(data[i]) - hist_.lo) * scale), 0, bins_ - 1);
      hist_.counts[size_t(b)] += 1.0;
    }
  }
  int64_t bins_;
  RangeHistogram hist_;
};

class PercentileObserver : public HistogramObserverBase {
 public:
  PercentileObserver(int64_t bins, double p) : HistogramObserverBase(bins), p_(p) {}
  std::pair<double, double> range() const override {
    require_data();
    return {quantile(1.0 - p_ / 100.0), quantile(p_ / 100.0)};
  }

 private:
  double quantile(double q) const {
    const double target = q * hist_.total();
    double seen = 0;
    for (size_t b = 0; b < hist_.counts.size(); ++b) {
      const double c = hist_.counts[b];
      if (c > 0 && seen + c >= target) return hist_.lo + hist_.bin_width() * (double(b) + (target - seen) / c);
      seen += c;
    }
    return hist_.hi;
  }
  double p_;
};

class HistogramErrorObserver : public HistogramObserverBase {
 public:
  using HistogramObserverBase::HistogramObserverBase;
  std::pair<double, double> range() const override { require_data(); return histogram_error_range(hist_); }
};

class EntropyObserver : public HistogramObserverBase {
 public:
  using HistogramObserverBase::HistogramObserverBase;
  std::pair<double, double> range() const override {
    require_data();
    // Non-negative data (after ReLU) spends all 256 levels on [0, t]; signed data is symmetric.
    const bool signed_data = hist_.lo < 0;
    const double top = std::max(std::abs(hist_.lo), std::abs(hist_.hi));
    RangeHistogram magnitudes{0.0, top, std::vector<double>(size_t(bins_), 0.0)};
    const double w = hist_.bin_width();
    for (size_t b = 0; b < hist_.counts.size(); ++b) {
      const double l = hist_.lo + double(b) * w, r = l + w, m = hist_.counts[b];
      if (l >= 0) { deposit(l, r, m, magnitudes); continue; }
      if (r <= 0) { deposit(-r, -l, m, magnitudes); continue; }
      deposit(0, -l, m * (-l) / w, magnitudes);
      deposit(0, r, m * r / w, magnitudes);
    }
    const double t = entropy_threshold(magnitudes, signed_data ? 128 : 256);
    return signed_data ? std::make_pair(-t, t) : std::make_pair(std::max(0.0, hist_.lo), t);
  }
};

}  // namespace

QuantParams choose_qparams(double min, double max, QuantRange range, bool symmetric) {
  require(std::isfinite(min) && std::isfinite(max) && min <= max,
          "choose_qparams: expected finite min <= max, got [" + std::to_string(min) + ", " +
              std::to_string(max) + "]");
  require(range.qmin < range.qmax, "choose_qparams: expected qmin < qmax");
  min = std::min(min, 0.0);
  max = std::max(max, 0.0);
  const double levels = double(range.qmax - range.qmin);
  QuantParams out;
  if (symmetric) {
    out.scale = std::max(std::max(-min, max) / (levels / 2.0), kMinScale);
    out.zero_point = range.qmin < 0 ? 0 : (range.qmin + range.qmax + 1) / 2;
    return out;
  }
  out.scale = std::max((max - min) / levels, kMinScale);
  const double zero = double(range.qmin) - std::nearbyint(min / out.scale);
  out.zero_point = std::clamp<int64_t>(int64_t(zero), range.qmin, range.qmax);
  return out;
}

namespace {
// The one table of observer names: the library, the Python bindings and the
// `pare` command line all read it.
constexpr std::pair<ObserverKind, const char*> kObserverNames[] = {
    {ObserverKind::MinMax, "minmax"},         {ObserverKind::MovingAverageMinMax, "moving_average_minmax"},
    {ObserverKind::Percentile, "percentile"}, {ObserverKind::Histogram, "histogram"},
    {ObserverKind::Entropy, "entropy"},
};
}  // namespace

std::vector<std::string> observer_kind_names() { return detail::names_of(kObserverNames); }

std::string to_string(ObserverKind kind) { return detail::name_of(kObserverNames, kind); }

ObserverKind parse_observer_kind(const std::string& name) {
  return detail::parse_name(kObserverNames, name, "observer");
}

void ObserverOptions::validate() const {
  require(percentile_ > 50.0 && percentile_ <= 100.0,
          "ObserverOptions: percentile " + std::to_string(percentile_) + " is outside (50, 100]");
  require(averaging_constant_ > 0.0 && averaging_constant_ <= 1.0,
          "ObserverOptions: averaging_constant " + std::to_string(averaging_constant_) + " is outside (0, 1]");
  require(bins_ >= 256 && bins_ <= (1 << 20),
          "ObserverOptions: bins " + std::to_string(bins_) + " is outside [256, 1048576]");
}

void Observer::observe(const float* data, int64_t n) {
  require(n >= 0 && (n == 0 || data != nullptr), "Observer::observe: expected n >= 0 values");
  if (n == 0) return;
  const FloatArray values(data, n);
  require(values.isFinite().all(), "observed values contain NaN or Inf", Error::Kind::Runtime);
  const float batch_min = values.minCoeff(), batch_max = values.maxCoeff();
  min_ = count_ == 0 ? batch_min : std::min<double>(min_, batch_min);
  max_ = count_ == 0 ? batch_max : std::max<double>(max_, batch_max);
  count_ += n;
  add(data, n, batch_min, batch_max);
}

QuantParams Observer::qparams(QuantRange r) const {
  const auto [lo, hi] = range();
  return choose_qparams(lo, hi, r, false);
}

void Observer::require_data() const {
  require(count_ > 0, "Observer: no values were observed; run calibration data through it first",
          Error::Kind::Runtime);
}

std::unique_ptr<Observer> make_observer(const ObserverOptions& options) {
  options.validate();
  switch (options.kind()) {
    case ObserverKind::MinMax: return std::make_unique<MinMaxObserver>();
    case ObserverKind::MovingAverageMinMax:
      return std::make_unique<MovingAverageObserver>(options.averaging_constant());
    case ObserverKind::Percentile:
      return std::make_unique<PercentileObserver>(options.bins(), options.percentile());
    case ObserverKind::Histogram: return std::make_unique<HistogramErrorObserver>(options.bins());
    case ObserverKind::Entropy: return std::make_unique<EntropyObserver>(options.bins());
  }
  throw Error("make_observer: unknown observer kind");
}

double RangeHistogram::total() const {
  return Eigen::Map<const Eigen::ArrayXd>(counts.data(), Eigen::Index(counts.size())).sum();
}

RangeHistogram rebin(const RangeHistogram& h, double lo, double hi, int64_t bins) {
  require(bins > 0 && hi > lo && lo <= h.lo && hi >= h.hi,
          "rebin: the new range must contain the old one and hold at least one bin");
  RangeHistogram out{lo, hi, std::vector<double>(size_t(bins), 0.0)};
  const double w = h.bin_width();
  for (size_t b = 0; b < h.counts.size(); ++b)
    deposit(h.lo + double(b) * w, h.lo + double(b + 1) * w, h.counts[b], out);
  return out;
}

double quantization_error(const RangeHistogram& h, double a, double b, int64_t levels) {
  const double delta = (b - a) / double(levels - 1);
  const double rounding = delta * delta / 12.0;
  const double w = h.bin_width();
  double error = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    const double m = h.counts[i];
    if (m == 0) continue;
    const double l = h.lo + double(i) * w, r = l + w;
    // Split the bin into its parts below a, inside [a, b] and above b.
    const double below_r = std::min(r, a), above_l = std::max(l, b);
    const double inside = std::max(0.0, std::min(r, b) - std::max(l, a));
    if (below_r > l) error += m * (below_r - l) / w * mean_square_distance(l, below_r, a);
    if (above_l < r) error += m * (r - above_l) / w * mean_square_distance(above_l, r, b);
    error += m * inside / w * rounding;
  }
  return error;
}

std::pair<double, double> histogram_error_range(const RangeHistogram& h, int64_t levels) {
  const int64_t bins = int64_t(h.counts.size());
  std::vector<double> cumulative(h.counts.size());
  double running = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) cumulative[i] = (running += h.counts[i]);
  const double total = running, w = h.bin_width();
  if (total == 0) return {h.lo, h.hi};
  const double step = 1e-5;
  double alpha = 0, beta = 1, best = std::numeric_limits<double>::infinity();
  int64_t start = 0, end = bins - 1;
  while (alpha < beta) {
    const double next_alpha = alpha + step, next_beta = beta - step;
    // First bin whose cumulative mass reaches next_alpha; last one at or below next_beta.
    int64_t l = std::lower_bound(cumulative.begin() + start, cumulative.begin() + end, next_alpha * total) -
                cumulative.begin();
    int64_t r = std::upper_bound(cumulative.begin() + start + 1, cumulative.begin() + end + 1, next_beta * total) -
                cumulative.begin() - 1;
    r = std::max(r, start);
    int64_t next_start = start, next_end = end;
    if (l - start > end - r) { next_start = l; alpha = next_alpha; }
    else { next_end = r; beta = next_beta; }
    if (next_start == start && next_end == end) continue;
    const double norm = quantization_error(h, h.lo + w * double(next_start), h.lo + w * double(next_end + 1), levels);
    if (norm > best) break;
    best = norm;
    start = next_start;
    end = next_end;
  }
  return {h.lo + w * double(start), h.lo + w * double(end + 1)};
}

double entropy_threshold(const RangeHistogram& magnitudes, int64_t levels) {
  // As NVIDIA's calibrator: the spike of exact zeros (ReLU outputs, padding)
  // would dominate P and make clipping the tail look free, so bin 0 counts as bin 1.
  auto hist = magnitudes.counts;
  if (hist.size() > 1) hist[0] = hist[1];
  const int64_t bins = int64_t(hist.size());
  require(levels >= 2 && bins >= levels, "entropy_threshold: expected at least `levels` bins");
  double best_kl = std::numeric_limits<double>::infinity();
  int64_t best_i = bins;
  double outliers = 0;
  for (int64_t b = levels; b < bins; ++b) outliers += hist[size_t(b)];
  std::vector<double> p, q;
  for (int64_t i = levels; i <= bins; ++i) {
    if (i > levels) outliers -= hist[size_t(i - 1)];
    p.assign(hist.begin(), hist.begin() + i);
    p.back() += outliers;  // clipped values pile up in the last kept bin
    q.assign(size_t(i), 0.0);
    const double merged = double(i) / double(levels);
    for (int64_t j = 0; j < levels; ++j) {
      const auto from = int64_t(std::floor(double(j) * merged)), to = int64_t(std::floor(double(j + 1) * merged));
      double sum = 0;
      int64_t nonzero = 0;
      for (int64_t k = from; k < to; ++k) { sum += hist[size_t(k)]; nonzero += hist[size_t(k)] > 0; }
      for (int64_t k = from; k < to; ++k)
        if (hist[size_t(k)] > 0) q[size_t(k)] = sum / double(nonzero);
    }
    const double p_total = std::accumulate(p.begin(), p.end(), 0.0), q_total = std::accumulate(q.begin(), q.end(), 0.0);
    if (p_total == 0 || q_total == 0) continue;
    double kl = 0;
    for (int64_t k = 0; k < i; ++k) {
      if (p[size_t(k)] == 0) continue;
      const double pk = p[size_t(k)] / p_total, qk = std::max(q[size_t(k)] / q_total, 1e-12);
      kl += pk * std::log(pk / qk);
    }
    if (kl < best_kl) { best_kl = kl; best_i = i; }
  }
  return std::min(magnitudes.hi, (double(best_i) + 0.5) * magnitudes.bin_width());
}

std::vector<QuantParams> symmetric_weight_qparams(const float* weights, int64_t rows, int64_t cols,
                                                  bool per_channel) {
  require(rows > 0 && cols > 0 && weights != nullptr, "symmetric_weight_qparams: expected a non-empty matrix");
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Eigen::Map<const Matrix> w(weights, rows, cols);
  require(w.allFinite(), "weights contain NaN or Inf; expected finite weights", Error::Kind::Runtime);
  const Eigen::VectorXf max_abs = w.cwiseAbs().rowwise().maxCoeff();
  std::vector<QuantParams> out;
  if (!per_channel) {
    out.push_back(choose_qparams(-max_abs.maxCoeff(), max_abs.maxCoeff(), QuantRange::qint8(), true));
    return out;
  }
  for (int64_t r = 0; r < rows; ++r)
    out.push_back(choose_qparams(-max_abs[r], max_abs[r], QuantRange::qint8(), true));
  return out;
}

double sqnr_db(const float* reference, const float* approx, int64_t n) {
  const FloatArray ref(reference, n), app(approx, n);
  const double signal = ref.cast<double>().square().sum();
  const double noise = (ref.cast<double>() - app.cast<double>()).square().sum();
  if (noise == 0) return 200.0;
  if (signal == 0) return -200.0;
  return std::min(200.0, 10.0 * std::log10(signal / noise));
}

}  // namespace pare
