#pragma once
// Copies of a caller's module. torch::jit::Module is a handle, so eval() on it
// would flip the caller's training flags (and race with the caller's own use
// of the module); and a method keeps the execution plan of the inputs it ran
// first, so an edited graph or a new input shape needs new methods.

#include <sstream>
#include <string>

#include <torch/script.h>

#include "core/torch_errors.hpp"

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

/// A fresh module from serialized bytes: its methods have run nothing yet, so
/// an edited graph gets a new execution plan and the first input shapes they
/// see are the ones they are specialised for; a module that cannot be saved
/// fails here (named by `what`) rather than at export.
inline torch::jit::Module reloaded(const torch::jit::Module& module, const std::string& what) {
  return translate_torch_errors(what + ": the model failed to save and reload", [&] {
    std::stringstream bytes;
    module.save(bytes);
    return torch::jit::load(bytes);
  });
}

}  // namespace pare::detail
