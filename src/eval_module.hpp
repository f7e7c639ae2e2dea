#pragma once
// Running a caller's module in eval mode without changing the caller's module:
// torch::jit::Module is a handle, so eval() on it would flip the caller's
// training flags (and race with the caller's own use of the module).

#include <torch/script.h>

namespace pare::detail {

/// True when no submodule (the module itself included) is in training mode.
inline bool in_eval_mode(const torch::jit::Module& module) {
  for (const auto& child : module.modules())
    if (child.hasattr("training") && child.attr("training").toBool()) return false;
  return true;
}

/// `module` itself when it is already in eval mode (no copy); otherwise a deep
/// copy put in eval mode, leaving the caller's module as it was.
inline torch::jit::Module eval_module(const torch::jit::Module& module) {
  if (in_eval_mode(module)) return module;
  auto copy = module.clone();
  copy.eval();
  return copy;
}

}  // namespace pare::detail
