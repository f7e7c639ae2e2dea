#pragma once
// Range observers and the int8 quantization math behind pare::QuantizeInt8.
// Plain C++ (Eigen inside, no LibTorch) so the math is testable on its own.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pare/core/arg.hpp"

namespace pare {

/// Affine quantization parameters: q = clamp(round(x / scale) + zero_point, qmin, qmax).
struct QuantParams {
  double scale = 1.0;
  int64_t zero_point = 0;
};

/// The integer range of a quantized type.
struct QuantRange {
  int64_t qmin = 0, qmax = 255;  ///< quint8 by default
  static QuantRange quint8() { return {0, 255}; }
  static QuantRange qint8() { return {-128, 127}; }
};

/// PyTorch's rule (torch.ao.quantization observers): the range is widened to
/// contain 0 so that zero is exact; symmetric ranges centre the zero point
/// (0 for qint8, 128 for quint8) and use max(|min|, max) / ((qmax - qmin) / 2).
/// pare::Error if min > max or either is not finite.
QuantParams choose_qparams(double min, double max, QuantRange range = QuantRange::quint8(),
                           bool symmetric = false);

/// What an activation observer does with the values it sees.
enum class ObserverKind {
  MinMax,               ///< running min and max
  MovingAverageMinMax,  ///< exponential moving average of each batch's min and max
  Percentile,           ///< the p-th and (100-p)-th percentiles of all values
  Histogram,            ///< range that minimizes L2 quantization error (PyTorch's HistogramObserver)
  Entropy,              ///< threshold that minimizes KL divergence (TensorRT's entropy calibrator)
};

/// "minmax", "moving_average_minmax", "percentile", "histogram", "entropy".
std::string to_string(ObserverKind kind);
/// The inverse of to_string; pare::Error naming the known kinds otherwise.
ObserverKind parse_observer_kind(const std::string& name);
/// Every observer name, in ObserverKind order (what the CLI and Python accept).
std::vector<std::string> observer_kind_names();

class ObserverOptions {
 public:
  ObserverOptions(ObserverKind kind = ObserverKind::Histogram) : kind_(kind) {}  // NOLINT: implicit on purpose
  /// The observer's algorithm.
  PARE_ARG(ObserverKind, kind);
  /// Percentile observer: keep [100 - p, p] percent of values, p in (50, 100].
  PARE_ARG(double, percentile) = 99.99;
  /// Moving average: weight of each new batch, in (0, 1].
  PARE_ARG(double, averaging_constant) = 0.01;
  /// Histogram, Entropy and Percentile: bins of the running histogram (>= 256).
  PARE_ARG(int64_t, bins) = 2048;

 public:
  /// Throws pare::Error for out-of-range settings.
  void validate() const;
};

/// Watches the values of one tensor over calibration batches and proposes a range.
class Observer {
 public:
  virtual ~Observer() = default;
  /// Adds `n` values. pare::Error when any is NaN or infinite.
  void observe(const float* data, int64_t n);
  /// The chosen [min, max]; pare::Error if nothing was observed.
  virtual std::pair<double, double> range() const = 0;
  /// Quantization parameters for `range()` (affine).
  QuantParams qparams(QuantRange range = QuantRange::quint8()) const;
  int64_t count() const { return count_; }
  /// Smallest and largest value seen.
  double seen_min() const { return min_; }
  double seen_max() const { return max_; }

 protected:
  virtual void add(const float* data, int64_t n, float batch_min, float batch_max) = 0;
  void require_data() const;
  int64_t count_ = 0;
  double min_ = 0, max_ = 0;
};

std::unique_ptr<Observer> make_observer(const ObserverOptions& options);

/// A histogram of values over [lo, hi] that re-bins itself when the range grows.
struct RangeHistogram {
  double lo = 0, hi = 0;
  std::vector<double> counts;
  double bin_width() const { return (hi - lo) / double(counts.size()); }
  double total() const;
};

/// Moves the mass of `h` onto `bins` equal bins over [lo, hi] (which must contain
/// h's range), splitting each source bin by overlap.
RangeHistogram rebin(const RangeHistogram& h, double lo, double hi, int64_t bins);

/// Expected squared quantization error of the values in `h` when [a, b] is
/// quantized to `levels` levels: rounding noise inside, clipping error outside.
double quantization_error(const RangeHistogram& h, double a, double b, int64_t levels);

/// PyTorch HistogramObserver's search: shrink the range from the side holding
/// less mass while the L2 quantization error keeps falling.
std::pair<double, double> histogram_error_range(const RangeHistogram& h, int64_t levels = 256);

/// TensorRT's entropy calibration on a histogram of |x| over [0, hi]: the
/// clipping threshold whose `levels`-level quantization minimizes KL(P || Q).
double entropy_threshold(const RangeHistogram& magnitudes, int64_t levels = 128);

/// Symmetric int8 weight parameters for a row-major [rows x cols] matrix:
/// one per row (per output channel) or one for all. Zero points are 0 and
/// scale = max|w| / 127.5, as PyTorch's per-channel symmetric observer.
std::vector<QuantParams> symmetric_weight_qparams(const float* weights, int64_t rows, int64_t cols,
                                                  bool per_channel);

/// 10 * log10(sum ref^2 / sum (ref - approx)^2); capped at 200 dB when identical.
double sqnr_db(const float* reference, const float* approx, int64_t n);

}  // namespace pare
