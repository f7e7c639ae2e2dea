// IValue handling for the inference cache: content hashing (XXH3-128), deep
// copies, exact comparison, and the versioned record format of the remote tier.

#include "cache_values.hpp"

#include <array>
#include <cstring>

#include <ATen/ATen.h>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xxh_x86dispatch.h>  // runtime choice of SSE2 / AVX2 / AVX-512 kernels
#endif

namespace pare {
namespace cache_detail {
namespace {

// Type tags, hashed into keys and written into records. Never renumber.
enum Tag : uint8_t { None = 0, Bool, Int, Double, String, Tensor, Tuple, List, Dict, Undefined };

Tag tag_of(const c10::IValue& v, const char* what) {
  if (v.isNone()) return None;
  if (v.isBool()) return Bool;
  if (v.isInt()) return Int;
  if (v.isDouble()) return Double;
  if (v.isString()) return String;
  if (v.isTensor()) return v.toTensor().defined() ? Tensor : Undefined;
  if (v.isTuple()) return Tuple;
  if (v.isList()) return List;
  if (v.isGenericDict()) return Dict;
  throw Error(std::string(what) + ": cannot cache a value of type " + v.tagKind() +
              "; expected tensors, tuples, lists, dicts, numbers, strings or None");
}

// GPU inputs from this size on are fingerprinted on the device (16 bytes cross
// to the host); smaller ones are copied out whole, which costs less than the
// fingerprint's handful of kernel launches.
constexpr size_t kDeviceFingerprintBytes = size_t(1) << 20;

// Two wrapping 64-bit sums, over the tensor's 64-bit words, of each word times
// an odd multiplier derived from its position (two multiplier streams): one
// pass of elementwise kernels and a reduction on the device. Linear, so inputs
// can be crafted to collide; the cache's verify() (on by default) compares the
// stored input with the query byte for byte on every hit.
std::array<int64_t, 2> device_fingerprint(const at::Tensor& contiguous) {
  auto bytes = contiguous.reshape({-1}).view(at::kByte);
  const int64_t tail = bytes.numel() % 8;
  if (tail || bytes.storage_offset() % 8)  // whole, aligned words: a fresh, zero-padded copy
    bytes = at::cat({bytes, at::zeros({tail ? 8 - tail : 0}, bytes.options())});
  const auto words = bytes.view(at::kLong);
  const auto position = at::arange(words.numel(), words.options());
  std::array<int64_t, 2> sums{};
  const int64_t seeds[2] = {int64_t(0x9E3779B97F4A7C15ull), int64_t(0xC2B2AE3D27D4EB4Full)};
  for (int i = 0; i < 2; ++i) {
    auto multiplier = position * seeds[i] + seeds[1 - i];
    multiplier = at::bitwise_or(at::bitwise_xor(multiplier, at::bitwise_right_shift(multiplier, 31)), 1);
    sums[i] = (words * multiplier).sum().item<int64_t>();
  }
  return sums;
}

class Hasher {
 public:
  Hasher() { XXH3_128bits_reset(&state_); }
  void bytes(const void* data, size_t n) {
    if (n) XXH3_128bits_update(&state_, data, n);
  }
  template <class T>
  void pod(T value) { bytes(&value, sizeof value); }
  void text(const std::string& s) { pod<uint64_t>(s.size()); bytes(s.data(), s.size()); }
  Hash128 digest() {
    const auto h = XXH3_128bits_digest(&state_);
    return {h.low64, h.high64};
  }
  void value(const c10::IValue& v);

 private:
  XXH3_state_t state_;
};

void Hasher::value(const c10::IValue& v) {
  const Tag tag = tag_of(v, "InferenceCache");
  pod(tag);
  switch (tag) {
    case None: case Undefined: return;
    case Bool: return pod<uint8_t>(v.toBool());
    case Int: return pod<int64_t>(v.toInt());
    case Double: return pod<double>(v.toDouble());
    case String: return text(v.toStringRef());
    case Tensor: {
      const auto& device = v.toTensor().device();
      if (!device.is_cpu()) text(device.str());  // a GPU input never matches a CPU entry (CPU keys unchanged)
      const auto c = checked_contiguous(v.toTensor(), "InferenceCache");
      pod<int32_t>(static_cast<int32_t>(c.scalar_type()));
      pod<uint64_t>(c.dim());
      for (auto size : c.sizes()) pod<int64_t>(size);
      if (!c.is_cpu() && tensor_bytes(c) >= kDeviceFingerprintBytes) {
        for (const auto sum : device_fingerprint(c)) pod<int64_t>(sum);
        return;
      }
      const auto t = c.is_cpu() ? c : c.cpu();  // a small GPU tensor's bytes: one copy out
      return bytes(t.data_ptr(), tensor_bytes(t));
    }
    case Tuple: {
      const auto& items = v.toTupleRef().elements();
      pod<uint64_t>(items.size());
      for (const auto& item : items) value(item);
      return;
    }
    case List: {
      const auto list = v.toList();
      pod<uint64_t>(list.size());
      for (size_t i = 0; i < list.size(); ++i) value(list.get(i));
      return;
    }
    case Dict: {
      const auto dict = v.toGenericDict();
      pod<uint64_t>(dict.size());
      for (const auto& entry : dict) { value(entry.key()); value(entry.value()); }
      return;
    }
  }
}

}  // namespace

at::Tensor checked_contiguous(const at::Tensor& tensor, const char* what) {
  require(tensor.device().is_cpu() || tensor.device().is_cuda(),
          std::string(what) + ": tensors on " + tensor.device().str() +
              " can't be cached; expected CPU or CUDA tensors (move them with .cpu() or .cuda())");
  require(tensor.layout() == at::kStrided && !tensor.is_quantized(),
          std::string(what) + ": only dense, non-quantized tensors can be cached");
  return tensor.contiguous();
}

at::Tensor host_contiguous(const at::Tensor& tensor, const char* what) {
  const auto t = checked_contiguous(tensor, what);
  return t.is_cpu() ? t : t.cpu();
}

c10::IValue deep_copy(const c10::IValue& v, size_t& bytes, const char* what) {
  switch (tag_of(v, what)) {
    case Tensor: {
      auto copy = checked_contiguous(v.toTensor(), what).clone(at::MemoryFormat::Contiguous);
      bytes += tensor_bytes(copy);
      return copy;
    }
    case Tuple: {
      std::vector<c10::IValue> items;
      for (const auto& item : v.toTupleRef().elements()) items.push_back(deep_copy(item, bytes, what));
      return c10::ivalue::Tuple::create(std::move(items));
    }
    case List: {
      const auto list = v.toList();
      c10::impl::GenericList copy(list.elementType());
      copy.reserve(list.size());
      for (size_t i = 0; i < list.size(); ++i) copy.push_back(deep_copy(list.get(i), bytes, what));
      return copy;
    }
    case Dict: {
      const auto dict = v.toGenericDict();
      c10::impl::GenericDict copy(dict.keyType(), dict.valueType());
      for (const auto& entry : dict)
        copy.insert(deep_copy(entry.key(), bytes, what), deep_copy(entry.value(), bytes, what));
      return copy;
    }
    case String: bytes += v.toStringRef().size(); return v;  // immutable
    default: return v;                                        // scalars, None
  }
}

bool same_value(const c10::IValue& a, const c10::IValue& b) {
  const Tag tag = tag_of(a, "InferenceCache");
  if (tag != tag_of(b, "InferenceCache")) return false;
  switch (tag) {
    case None: case Undefined: return true;
    case Bool: return a.toBool() == b.toBool();
    case Int: return a.toInt() == b.toInt();
    case Double: { double x = a.toDouble(), y = b.toDouble(); return std::memcmp(&x, &y, sizeof x) == 0; }
    case String: return a.toStringRef() == b.toStringRef();
    case Tensor: {
      const auto& x = a.toTensor();
      const auto& y = b.toTensor();
      if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes()) return false;
      const auto cx = checked_contiguous(x, "InferenceCache");
      const auto cy = checked_contiguous(y, "InferenceCache");
      if (cx.device() != cy.device()) return false;
      const size_t bytes = tensor_bytes(cx);  // an empty tensor may have no data pointer at all
      if (bytes == 0) return true;
      if (!cx.is_cpu())  // compared where they live, bit for bit (NaN payloads included)
        return at::equal(cx.view(at::kByte), cy.view(at::kByte));
      return std::memcmp(cx.data_ptr(), cy.data_ptr(), bytes) == 0;
    }
    case Tuple: {
      const auto& x = a.toTupleRef().elements();
      const auto& y = b.toTupleRef().elements();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!same_value(x[i], y[i])) return false;
      return true;
    }
    case List: {
      const auto x = a.toList();
      const auto y = b.toList();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!same_value(x.get(i), y.get(i))) return false;
      return true;
    }
    case Dict: {
      const auto x = a.toGenericDict();
      const auto y = b.toGenericDict();
      if (x.size() != y.size()) return false;
      for (auto i = x.begin(), j = y.begin(); i != x.end(); ++i, ++j)
        if (!same_value(i->key(), j->key()) || !same_value(i->value(), j->value())) return false;
      return true;
    }
  }
  return false;
}

bool same_inputs(const InferenceCache::Inputs& a, const InferenceCache::Inputs& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!same_value(a[i], b[i])) return false;
  return true;
}

Hash128 hash_inputs(const std::string& key_namespace, const InferenceCache::Inputs& inputs) {
  Hasher hasher;
  hasher.text(key_namespace);
  hasher.pod<uint64_t>(inputs.size());
  for (const auto& input : inputs) hasher.value(input);
  return hasher.digest();
}

}  // namespace cache_detail

std::string Hash128::hex() const {
  char buffer[33];
  std::snprintf(buffer, sizeof buffer, "%016llx%016llx", static_cast<unsigned long long>(high),
                static_cast<unsigned long long>(low));
  return buffer;
}

bool same_content(const c10::IValue& a, const c10::IValue& b) { return cache_detail::same_value(a, b); }

Hash128 content_hash(const void* data, size_t bytes) {
  require(data != nullptr || bytes == 0, "content_hash: data is null but bytes is " + std::to_string(bytes));
  const auto h = XXH3_128bits(data, bytes);
  return {h.low64, h.high64};
}

}  // namespace pare
