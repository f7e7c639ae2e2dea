#pragma once
// pare::model_fingerprint — an identity of a TorchScript module's code and
// weights, for keeping the cached results of different models apart.

#include <string>

#include <torch/script.h>

namespace pare {

/// 32 hex digits: XXH3-128 of the module's code (as TorchScript would
/// serialize it) and of every attribute of every submodule by name:
/// parameters, buffers, numbers, strings, containers, packed int8 weights.
/// Modules that differ in any of these get different fingerprints; the same
/// module, or a load of the same file, in any process, gets the same one.
/// (Scripting one Python class twice in one process gives the second copy
/// renamed types, "___torch_mangle_N", hence another fingerprint: a missed
/// chance to share, never a wrong result.) Costs
/// one pass over the weights: compute it once per model, as pare::Runner does.
/// pare::Error (Runtime) if the module can't be printed as code (then name
/// the model yourself: RunnerOptions::cache_namespace).
std::string model_fingerprint(const torch::jit::Module& module);

}  // namespace pare
