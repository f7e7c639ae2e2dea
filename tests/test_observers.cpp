// The quantization math on its own: ranges -> qparams, each observer, the
// histogram and KL searches, weight parameters and SQNR. No LibTorch.

#include "support/testing.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "pare/core/error.hpp"
#include "pare/quantize/observers.hpp"

using pare::ObserverKind;
using pare::ObserverOptions;

namespace {

std::vector<float> gaussian(int64_t n, double mean, double stddev, unsigned seed) {
  std::mt19937 random(seed);
  std::normal_distribution<float> normal{float(mean), float(stddev)};
  std::vector<float> out(static_cast<size_t>(n));
  for (auto& x : out) x = normal(random);
  return out;
}

// Mean squared error of quantizing `xs` with `q` onto quint8.
double quantization_mse(const std::vector<float>& xs, pare::QuantParams q) {
  double total = 0;
  for (float x : xs) {
    const double level = std::clamp(std::nearbyint(x / q.scale) + double(q.zero_point), 0.0, 255.0);
    const double back = (level - double(q.zero_point)) * q.scale;
    total += (x - back) * (x - back);
  }
  return total / double(xs.size());
}

}  // namespace

TEST_CASE("choose_qparams follows PyTorch's affine and symmetric rules") {
  auto q = pare::choose_qparams(-1.0, 3.0);
  CHECK(q.scale == Approx(4.0 / 255.0));
  CHECK(q.zero_point == 64);  // 0 - round(-1 / (4/255)) = round(63.75)
  q = pare::choose_qparams(0.5, 2.0);  // widened to contain 0
  CHECK(q.scale == Approx(2.0 / 255.0));
  CHECK(q.zero_point == 0);
  q = pare::choose_qparams(-2.0, 1.0, pare::QuantRange::qint8(), true);
  CHECK(q.scale == Approx(2.0 / 127.5));
  CHECK(q.zero_point == 0);
  CHECK(pare::choose_qparams(-1.0, 1.0, pare::QuantRange::quint8(), true).zero_point == 128);
  CHECK(pare::choose_qparams(0.0, 0.0).scale > 0.0);
  CHECK_THROWS_AS(pare::choose_qparams(2.0, 1.0), pare::Error);
  CHECK_THROWS_AS(pare::choose_qparams(0.0, NAN), pare::Error);
}

TEST_CASE("observer names round-trip and bad options are rejected") {
  for (auto kind : {ObserverKind::MinMax, ObserverKind::MovingAverageMinMax, ObserverKind::Percentile,
                    ObserverKind::Histogram, ObserverKind::Entropy})
    CHECK(pare::parse_observer_kind(pare::to_string(kind)) == kind);
  CHECK_THROWS_WITH(pare::parse_observer_kind("kl"), Catch::Contains("histogram"));
  CHECK_THROWS_AS(pare::make_observer(ObserverOptions(ObserverKind::Percentile).percentile(30)), pare::Error);
  CHECK_THROWS_AS(pare::make_observer(ObserverOptions().bins(10)), pare::Error);
  CHECK_THROWS_AS(pare::make_observer(ObserverOptions(ObserverKind::MovingAverageMinMax).averaging_constant(0)),
                  pare::Error);
}

TEST_CASE("observers reject NaN/Inf and an empty history") {
  auto observer = pare::make_observer(ObserverKind::Histogram);
  CHECK_THROWS_AS(observer->range(), pare::Error);
  std::vector<float> bad = {1.0f, NAN};
  CHECK_THROWS_WITH(observer->observe(bad.data(), 2), Catch::Contains("NaN"));
  bad[1] = INFINITY;
  CHECK_THROWS_AS(observer->observe(bad.data(), 2), pare::Error);
}

TEST_CASE("MinMax and MovingAverageMinMax track the range") {
  std::vector<float> a = {-1.0f, 2.0f}, b = {-3.0f, 1.0f};
  auto minmax = pare::make_observer(ObserverKind::MinMax);
  minmax->observe(a.data(), 2);
  minmax->observe(b.data(), 2);
  CHECK(minmax->range() == std::make_pair(-3.0, 2.0));
  auto moving = pare::make_observer(ObserverOptions(ObserverKind::MovingAverageMinMax).averaging_constant(0.5));
  moving->observe(a.data(), 2);
  moving->observe(b.data(), 2);
  CHECK(moving->range().first == Approx(-2.0));
  CHECK(moving->range().second == Approx(1.5));
}

TEST_CASE("Percentile drops the tails it is told to") {
  std::vector<float> xs(10000);
  for (size_t i = 0; i < xs.size(); ++i) xs[i] = float(i) / 100.0f;  // uniform on [0, 100)
  auto observer = pare::make_observer(ObserverOptions(ObserverKind::Percentile).percentile(99.0));
  observer->observe(xs.data(), int64_t(xs.size()));
  CHECK(observer->range().first == Approx(1.0).margin(0.1));
  CHECK(observer->range().second == Approx(99.0).margin(0.1));
}

TEST_CASE("Histogram minimizes the error MinMax makes on an outlier; Entropy clips it") {
  auto xs = gaussian(1000000, 0.0, 1.0, 1);
  xs[0] = 30.0f;  // one outlier stretches a min/max range six-fold
  const auto observed = [&](ObserverKind kind) {
    auto observer = pare::make_observer(kind);
    for (size_t i = 0; i < xs.size(); i += 250000) observer->observe(xs.data() + i, 250000);  // range grows
    return observer;
  };
  const double minmax = quantization_mse(xs, observed(ObserverKind::MinMax)->qparams());
  const auto histogram = observed(ObserverKind::Histogram);
  CHECK(quantization_mse(xs, histogram->qparams()) < minmax / 1.5);
  CHECK(histogram->range().second < 15.0);
  const auto entropy = observed(ObserverKind::Entropy);
  CHECK(entropy->range().second < 15.0);
  CHECK(entropy->range().first == Approx(-entropy->range().second));  // signed data: symmetric
}

TEST_CASE("Entropy keeps non-negative data on [0, t]") {
  auto xs = gaussian(50000, 0.0, 1.0, 2);
  for (auto& x : xs) x = std::max(x, 0.0f);  // as after a ReLU
  auto observer = pare::make_observer(ObserverKind::Entropy);
  observer->observe(xs.data(), int64_t(xs.size()));
  const auto [lo, hi] = observer->range();
  CHECK(lo == 0.0);
  CHECK(hi > 1.0);
  CHECK(hi <= observer->seen_max() + 1e-6);
}

TEST_CASE("rebin conserves mass and quantization_error prefers a fitting range") {
  pare::RangeHistogram h{0.0, 1.0, std::vector<double>(100, 1.0)};
  const auto wide = pare::rebin(h, -1.0, 3.0, 64);
  CHECK(wide.total() == Approx(100.0));
  CHECK_THROWS_AS(pare::rebin(h, 0.5, 3.0, 64), pare::Error);
  const double fit = pare::quantization_error(h, 0.0, 1.0, 256);
  CHECK(fit < pare::quantization_error(h, 0.0, 0.5, 256));  // clips half the mass
  CHECK(fit < pare::quantization_error(h, -5.0, 6.0, 256));  // coarse steps
  CHECK(fit == Approx(100.0 * (1.0 / 255) * (1.0 / 255) / 12.0));
}

TEST_CASE("symmetric weight parameters per channel and per tensor") {
  const std::vector<float> w = {0.5f, -1.0f, 0.25f, 0.1f, -0.2f, 0.05f};  // 2 x 3
  const auto rows = pare::symmetric_weight_qparams(w.data(), 2, 3, true);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].scale == Approx(1.0 / 127.5));
  CHECK(rows[1].scale == Approx(0.2 / 127.5));
  CHECK(rows[1].zero_point == 0);
  const auto one = pare::symmetric_weight_qparams(w.data(), 2, 3, false);
  REQUIRE(one.size() == 1);
  CHECK(one[0].scale == Approx(1.0 / 127.5));
}

TEST_CASE("sqnr_db") {
  const std::vector<float> ref = {1.0f, -1.0f, 2.0f, -2.0f};
  std::vector<float> approx = ref;
  CHECK(pare::sqnr_db(ref.data(), approx.data(), 4) == 200.0);
  approx[0] += 0.1f;
  CHECK(pare::sqnr_db(ref.data(), approx.data(), 4) == Approx(10 * std::log10(10.0 / 0.01)).epsilon(1e-4));
}
