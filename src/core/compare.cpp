#include "pare/core/compare.hpp"

#include <algorithm>
#include <limits>

#include <ATen/ATen.h>

#include "core/ivalue_walk.hpp"
#include "pare/core/error.hpp"

namespace pare {
namespace {

// NaN never compares greater than a tolerance, so non-finite values are judged
// apart: NaN or Inf on one side where the other is finite (or a different
// non-finite value) is an infinite difference; the same NaN/Inf on both is none.
double tensor_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  const auto x = a.to(at::kDouble), y = b.to(at::kDouble);
  const auto x_finite = x.isfinite(), y_finite = y.isfinite();
  const auto both_finite = x_finite.logical_and(y_finite);
  const auto same_nonfinite =
      x_finite.logical_or(y_finite).logical_not().logical_and(x.eq(y).logical_or(x.isnan().logical_and(y.isnan())));
  if (!both_finite.logical_or(same_nonfinite).all().item<bool>()) return std::numeric_limits<double>::infinity();
  const auto finite_diff = (x - y).abs().masked_select(both_finite);
  return finite_diff.numel() == 0 ? 0.0 : finite_diff.max().item<double>();
}

}  // namespace

double max_abs_diff(const c10::IValue& a, const c10::IValue& b) {
  if (a.isTensor() && b.isTensor()) {
    const auto& x = a.toTensor();
    const auto& y = b.toTensor();
    require(x.sizes() == y.sizes(), "outputs differ in shape");
    return tensor_abs_diff(x, y);
  }
  auto elements = [](const c10::IValue& v) {  // a tuple may stand against a list; dicts by their values
    if (!detail::container_of(v))
      throw Error("cannot compare outputs of type " + v.tagKind() +
                  "; expected tensors, tuples, lists or dicts of tensors");
    return detail::children(v, detail::DictKeys::Skip);
  };
  if (a.isNone() && b.isNone()) return 0.0;
  const auto xs = elements(a), ys = elements(b);
  require(xs.size() == ys.size(), "outputs differ in structure");
  double worst = 0.0;
  for (size_t i = 0; i < xs.size(); ++i) worst = std::max(worst, max_abs_diff(xs[i], ys[i]));
  return worst;
}

}  // namespace pare
