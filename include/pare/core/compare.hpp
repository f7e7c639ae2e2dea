#pragma once
// Comparing two model outputs: what export verification reports and what
// passes that rewrite a model check their rewrite with.

#include <ATen/core/ivalue.h>

namespace pare {

/// Largest absolute difference between two outputs (tensors, tuples, lists,
/// dicts of tensors); pare::Error if their structure differs. NaN or Inf on
/// one side where the other is finite counts as an infinite difference (equal
/// non-finite values on both sides count as none), so verification fails on it.
double max_abs_diff(const c10::IValue& a, const c10::IValue& b);

}  // namespace pare
