// IValue handling for the inference cache: content hashing (XXH3-128, over the
// tagged layout of cache_format.hpp), deep copies and exact comparison.

#include "cache/cache_values.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include <ATen/ATen.h>

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <xxh_x86dispatch.h>  // runtime choice of SSE2 / AVX2 / AVX-512 kernels
#endif

#include "cache/cache_format.hpp"

namespace pare {
namespace cache_detail {
namespace {

[[noreturn]] void refuse_uncacheable(const c10::IValue& v, const char* what) {
  throw Error(std::string(what) + ": cannot cache a value of type " + v.tagKind() +
              "; expected tensors, tuples, lists, dicts, numbers, strings or None");
}

// The tag of a value the cache can hold; pare::Error naming `what` for any other.
Tag checked_tag(const c10::IValue& v, const char* what) {
  if (const auto tag = tag_of(v)) return *tag;
  refuse_uncacheable(v, what);
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

// The cache key: the tagged layout of cache_format.hpp, a tensor's content
// being its device (GPUs only), shape and bytes, or a device fingerprint.
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
  void value(const c10::IValue& v) { encode_tagged(v, *this); }
  void tensor(const at::Tensor& tensor);
  [[noreturn]] void refuse(const c10::IValue& v) { refuse_uncacheable(v, "InferenceCache"); }

 private:
  XXH3_state_t state_;
};

void Hasher::tensor(const at::Tensor& input) {
  if (!input.device().is_cpu()) text(input.device().str());  // a GPU input never matches a CPU entry (CPU keys unchanged)
  const auto c = checked_contiguous(input, "InferenceCache");
  encode_shape(c, *this);
  if (!c.is_cpu() && tensor_bytes(c) >= kDeviceFingerprintBytes) {
    for (const auto sum : device_fingerprint(c)) pod<int64_t>(sum);
    return;
  }
  const auto t = c.is_cpu() ? c : c.cpu();  // a small GPU tensor's bytes: one copy out
  bytes(t.data_ptr(), tensor_bytes(t));
}

bool same_tensor(const at::Tensor& x, const at::Tensor& y) {
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

bool same_sequence(const std::vector<c10::IValue>& x, const std::vector<c10::IValue>& y) {
  return x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin(), same_value);
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

c10::IValue deep_copy(const c10::IValue& value, size_t& bytes, const char* what) {
  auto copy_leaf = [&](const c10::IValue& v) -> c10::IValue {
    switch (checked_tag(v, what)) {
      case Tag::Tensor: {
        auto copy = checked_contiguous(v.toTensor(), what).clone(at::MemoryFormat::Contiguous);
        bytes += tensor_bytes(copy);
        return copy;
      }
      case Tag::String: bytes += v.toStringRef().size(); return v;  // immutable
      default: return v;                                             // scalars, None, undefined tensors
    }
  };
  return detail::rebuild(value, copy_leaf, detail::DictKeys::Walk);
}

bool same_value(const c10::IValue& a, const c10::IValue& b) {
  const Tag tag = checked_tag(a, "InferenceCache");
  if (tag != checked_tag(b, "InferenceCache")) return false;
  switch (tag) {
    case Tag::None: case Tag::Undefined: return true;
    case Tag::Bool: return a.toBool() == b.toBool();
    case Tag::Int: return a.toInt() == b.toInt();
    case Tag::Double: { double x = a.toDouble(), y = b.toDouble(); return std::memcmp(&x, &y, sizeof x) == 0; }
    case Tag::String: return a.toStringRef() == b.toStringRef();
    case Tag::Tensor: return same_tensor(a.toTensor(), b.toTensor());
    case Tag::Tuple: case Tag::List: case Tag::Dict: {  // a dict's keys and values alternate
      const auto x = detail::children(a, detail::DictKeys::Walk), y = detail::children(b, detail::DictKeys::Walk);
      return same_sequence(x, y);
    }
  }
  return false;
}

bool same_inputs(const InferenceCache::Inputs& a, const InferenceCache::Inputs& b) { return same_sequence(a, b); }

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
