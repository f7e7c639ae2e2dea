#pragma once
// Internal: what the cache needs to know about IValues — hashing, deep copies,
// exact comparison — shared by cache.cpp and cache_record.cpp.

#include <cstddef>
#include <string>

#include <ATen/core/ivalue.h>

#include "pare/cache/cache.hpp"

namespace pare::cache_detail {

/// The contiguous bytes of a CPU or CUDA strided tensor; pare::Error for other
/// devices, sparse or quantized tensors. `what` names the caller in messages.
at::Tensor checked_contiguous(const at::Tensor& tensor, const char* what);
/// checked_contiguous, copied to the host when it lives on a GPU.
at::Tensor host_contiguous(const at::Tensor& tensor, const char* what);

/// Bytes of a tensor's values.
inline size_t tensor_bytes(const at::Tensor& t) { return t.defined() ? t.numel() * t.element_size() : 0; }

/// A copy sharing no storage with `value` (tensors cloned contiguous);
/// adds the tensor bytes copied to `bytes`.
c10::IValue deep_copy(const c10::IValue& value, size_t& bytes, const char* what);

/// True when both have the same structure, dtypes, shapes and bytes.
bool same_value(const c10::IValue& a, const c10::IValue& b);
bool same_inputs(const InferenceCache::Inputs& a, const InferenceCache::Inputs& b);

/// XXH3-128 over the namespace and every input's type tag, dtype, shape and bytes.
Hash128 hash_inputs(const std::string& key_namespace, const InferenceCache::Inputs& inputs);

/// Parses the body of a remote-tier record (what follows the checksummed
/// header); pare::Error (Runtime) on anything malformed. Separate so that the
/// fuzzer can reach the value decoder past the checksum.
CacheRecord parse_cache_record_body(const char* body, size_t length);

}  // namespace pare::cache_detail
