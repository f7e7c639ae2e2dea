// The record format a remote tier stores: namespace, inputs, output and compute time.
//
//   "PARECR" | u16 version | u64 body length | u64 XXH3-64 of the body | body
//   body: f64 compute_seconds | u64 namespace length, bytes | u64 input count |
//   values... | output value
//   value: the tagged layout of cache_format.hpp (the one cache keys hash); a
//   tensor's payload: i32 dtype, u64 dim, i64 sizes[dim], u64 byte count, bytes.
//
// Host byte order (x86-64 and arm64 are both little-endian). A reader checks
// every length against what is left, every dtype and byte count against the
// shape, and the checksum, so garbage in the store is reported, never used;
// it also refuses what the writer never writes (lists or dicts of mixed types,
// unhashable dict keys, bool tensors holding bytes other than 0 and 1), so a
// decoded value is always one that TorchScript code can consume.
// Version 1 (no namespace) is refused: its records are recomputed.

#include <cmath>
#include <cstring>

#include <ATen/ATen.h>
#include <xxhash.h>

#include "cache/cache_format.hpp"
#include "cache/cache_values.hpp"

namespace pare {
namespace {

constexpr char kMagic[6] = {'P', 'A', 'R', 'E', 'C', 'R'};
constexpr uint16_t kVersion = 2;
constexpr size_t kHeaderBytes = sizeof kMagic + sizeof(uint16_t) + 2 * sizeof(uint64_t);
constexpr int kMaxRecordDepth = 32;

using cache_detail::Tag;

class Writer {
 public:
  template <class T>
  void pod(T v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void bytes(const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }
  void value(const c10::IValue& v) { cache_detail::encode_tagged(v, *this); }
  void tensor(const at::Tensor& source) {
    const auto t = cache_detail::host_contiguous(source, "InferenceCache");
    cache_detail::encode_shape(t, *this);
    pod<uint64_t>(cache_detail::tensor_bytes(t));
    bytes(t.data_ptr(), cache_detail::tensor_bytes(t));
  }
  [[noreturn]] void refuse(const c10::IValue& v) {
    throw Error(std::string("InferenceCache: cannot store a value of type ") + v.tagKind() + " in the remote tier");
  }
  std::string out;
};

// The type of a homogeneous container holding values of `so_far` and `item`'s types.
c10::TypePtr unified(const c10::TypePtr& so_far, const c10::IValue& item, const char* what);

class Reader {
 public:
  Reader(const char* p, size_t n) : p_(p), end_(p + n) {}
  template <class T>
  T pod() {
    T v;
    std::memcpy(&v, take(sizeof v), sizeof v);
    return v;
  }
  const char* take(size_t n) {
    check(n <= size_t(end_ - p_), "truncated");
    const char* at = p_;
    p_ += n;
    return at;
  }
  uint64_t count() {  // an element count can't exceed the bytes left (each element takes >= 1)
    const auto n = pod<uint64_t>();
    check(n <= size_t(end_ - p_), "count larger than the record");
    return n;
  }
  bool done() const { return p_ == end_; }
  c10::IValue value(int depth);
  std::string text() {
    const auto n = count();
    return std::string(take(n), n);
  }
  static void check(bool ok, const char* what) {
    if (!ok) throw Error(std::string("cache record is corrupt: ") + what, Error::Kind::Runtime);
  }

 private:
  at::Tensor tensor();
  const char* p_;
  const char* end_;
};

// The TorchScript type of a decoded value; values without one (an undefined
// tensor inside a list, say) can't be elements of a typed container.
c10::TypePtr type_of(const c10::IValue& value) {
  try {
    return value.type();
  } catch (const std::exception&) {
    Reader::check(false, "a container element without a TorchScript type");
    throw;
  }
}

c10::TypePtr unified(const c10::TypePtr& so_far, const c10::IValue& item, const char* what) {
  auto type = c10::unifyTypes(so_far, type_of(item));
  Reader::check(type.has_value(), what);
  return *type;
}

at::Tensor Reader::tensor() {
  const auto dtype = pod<int32_t>();
  check(dtype >= 0 && dtype < static_cast<int32_t>(at::ScalarType::NumOptions), "unknown dtype");
  const auto type = static_cast<at::ScalarType>(dtype);
  check(!c10::isQIntType(type) && type != at::ScalarType::Undefined, "unsupported dtype");
  const auto dim = pod<uint64_t>();
  check(dim <= 64, "too many dimensions");
  std::vector<int64_t> sizes(dim);
  // The product of the non-zero sizes is bounded too (checked before each
  // multiplication, so it can't wrap): LibTorch refuses a shape whose product
  // overflows even when another size is 0.
  constexpr uint64_t kMaxElements = uint64_t(1) << 40;
  uint64_t nonzero_product = 1;
  bool empty = false;
  for (auto& size : sizes) {
    size = pod<int64_t>();
    check(size >= 0 && uint64_t(size) <= kMaxElements, "bad size");
    empty = empty || size == 0;
    if (size == 0) continue;
    check(nonzero_product <= kMaxElements / uint64_t(size), "tensor too large");
    nonzero_product *= uint64_t(size);
  }
  const uint64_t numel = empty ? 0 : nonzero_product;
  const auto bytes = pod<uint64_t>();
  check(bytes == numel * c10::elementSize(type), "byte count does not match dtype and shape");
  const char* data = take(bytes);
  if (type == at::kBool)
    for (uint64_t i = 0; i < bytes; ++i) check(static_cast<unsigned char>(data[i]) <= 1, "bool tensor holds a byte other than 0 or 1");
  auto t = at::empty(sizes, at::TensorOptions().dtype(type));
  if (bytes) std::memcpy(t.data_ptr(), data, bytes);
  return t;
}

c10::IValue Reader::value(int depth) {
  check(depth < kMaxRecordDepth, "nested too deeply");
  switch (static_cast<Tag>(pod<uint8_t>())) {  // builds values from bytes: no IValue to walk
    case Tag::None: return {};
    case Tag::Bool: return bool(pod<uint8_t>());
    case Tag::Int: return pod<int64_t>();
    case Tag::Double: return pod<double>();
    case Tag::String: return text();
    case Tag::Undefined: return at::Tensor();
    case Tag::Tensor: return tensor();
    case Tag::Tuple: {
      std::vector<c10::IValue> items(count());
      for (auto& item : items) item = value(depth + 1);
      return c10::ivalue::Tuple::create(std::move(items));
    }
    case Tag::List: {
      std::vector<c10::IValue> items(count());
      c10::TypePtr type = c10::AnyType::get();
      for (size_t i = 0; i < items.size(); ++i) {
        items[i] = value(depth + 1);
        type = i == 0 ? type_of(items[i]) : unified(type, items[i], "list elements of different types");
      }
      c10::impl::GenericList list(type);
      for (auto& item : items) list.push_back(std::move(item));
      return list;
    }
    case Tag::Dict: {
      const auto n = count();
      std::vector<std::pair<c10::IValue, c10::IValue>> items;
      c10::TypePtr key_type = c10::StringType::get(), value_type = c10::AnyType::get();
      for (uint64_t i = 0; i < n; ++i) {
        auto key = value(depth + 1);
        check(key.isString() || key.isInt() || key.isDouble() || key.isBool() || key.isTensor(),
              "dict key of a type TorchScript can't hash");
        auto item = value(depth + 1);
        key_type = i == 0 ? type_of(key) : unified(key_type, key, "dict keys of different types");
        value_type = i == 0 ? type_of(item) : unified(value_type, item, "dict values of different types");
        items.emplace_back(std::move(key), std::move(item));
      }
      c10::impl::GenericDict dict(key_type, value_type);
      for (auto& item : items) dict.insert(std::move(item.first), std::move(item.second));
      return dict;
    }
    default: check(false, "unknown value tag"); return {};
  }
}

}  // namespace

std::string serialize_cache_record(const InferenceCache::Inputs& inputs, const c10::IValue& output,
                                   double compute_seconds, const std::string& key_namespace) {
  Writer body;
  body.pod<double>(compute_seconds);
  body.pod<uint64_t>(key_namespace.size());
  body.bytes(key_namespace.data(), key_namespace.size());
  body.pod<uint64_t>(inputs.size());
  for (const auto& input : inputs) body.value(input);
  body.value(output);
  Writer record;
  record.bytes(kMagic, sizeof kMagic);
  record.pod<uint16_t>(kVersion);
  record.pod<uint64_t>(body.out.size());
  record.pod<uint64_t>(XXH3_64bits(body.out.data(), body.out.size()));
  return record.out + body.out;
}

CacheRecord deserialize_cache_record(const std::string& bytes) {
  Reader header(bytes.data(), bytes.size());
  Reader::check(bytes.size() >= kHeaderBytes && std::memcmp(header.take(sizeof kMagic), kMagic, sizeof kMagic) == 0,
                "not a pare cache record");
  Reader::check(header.pod<uint16_t>() == kVersion, "unsupported record version");
  const auto length = header.pod<uint64_t>();
  const auto checksum = header.pod<uint64_t>();
  Reader::check(length == bytes.size() - kHeaderBytes, "length does not match");
  const char* body = bytes.data() + kHeaderBytes;
  Reader::check(XXH3_64bits(body, length) == checksum, "checksum mismatch");
  return cache_detail::parse_cache_record_body(body, length);
}

namespace cache_detail {

CacheRecord parse_cache_record_body(const char* body, size_t length) {
  Reader reader(body, length);
  CacheRecord record;
  record.compute_seconds = reader.pod<double>();
  Reader::check(std::isfinite(record.compute_seconds) && record.compute_seconds >= 0, "bad compute time");
  record.key_namespace = reader.text();
  record.inputs.resize(reader.count());
  for (auto& input : record.inputs) input = reader.value(0);
  record.output = reader.value(0);
  Reader::check(reader.done(), "trailing bytes");
  return record;
}

}  // namespace cache_detail

}  // namespace pare
