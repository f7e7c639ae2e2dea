#pragma once
// pare::model_fingerprint — an identity of a TorchScript module's code and
// weights, for keeping the cached results of different models apart.

#include <string>

#include <torch/script.h>

namespace pare {

/// 32 hex digits: XXH3-128 of the module as TorchScript serializes it (the
/// code of every method and submodule, every parameter, buffer and attribute,
/// packed quantized weights included). Modules that differ in any of these get
/// different fingerprints; the same module, or a save/load copy of it, gets the
/// same one. Costs one pass over the weights (no copy of them): compute it once
/// per model, as pare::Runner does. pare::Error if the module can't be
/// serialized (then name the model yourself: RunnerOptions::cache_namespace).
std::string model_fingerprint(const torch::jit::Module& module);

}  // namespace pare
