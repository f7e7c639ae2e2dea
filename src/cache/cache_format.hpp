#pragma once
// Internal: the tagged value layout that the inference cache both hashes into
// its keys (cache_values.cpp) and writes into remote-tier records
// (cache_record.cpp). Changing a tag or the layout changes every key and
// record: bump the record version in cache_record.cpp.
//
//   value: u8 tag, then per tag — tuple/list: u64 count, values; dict: u64
//   count, (key, value) pairs; string: u64 length, bytes; bool: u8; int: i64;
//   double: f64; None and undefined tensor: nothing; tensor: what the encoder
//   writes (its dtype and shape through encode_shape, then its content).

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include "core/ivalue_walk.hpp"

namespace pare::cache_detail {

/// Type tags of cached values. Never renumber.
enum class Tag : uint8_t { None = 0, Bool, Int, Double, String, Tensor, Tuple, List, Dict, Undefined };

/// The tag of a value the cache can hold; nullopt for any other type.
inline std::optional<Tag> tag_of(const c10::IValue& v) {
  if (v.isNone()) return Tag::None;
  if (v.isBool()) return Tag::Bool;
  if (v.isInt()) return Tag::Int;
  if (v.isDouble()) return Tag::Double;
  if (v.isString()) return Tag::String;
  if (v.isTensor()) return v.toTensor().defined() ? Tag::Tensor : Tag::Undefined;
  if (v.isTuple()) return Tag::Tuple;
  if (v.isList()) return Tag::List;
  if (v.isGenericDict()) return Tag::Dict;
  return std::nullopt;
}

/// A tensor's i32 dtype, u64 dim and i64 sizes.
template <class Out>
void encode_shape(const at::Tensor& t, Out& out) {
  out.pod(static_cast<int32_t>(t.scalar_type()));
  out.pod(static_cast<uint64_t>(t.dim()));
  for (const int64_t size : t.sizes()) out.pod(size);
}

/// Writes `value` in the layout above. `Out` provides pod(T) (a value's bytes),
/// bytes(data, n), tensor(const at::Tensor&) for a defined tensor's payload,
/// and refuse(const c10::IValue&), which throws for a value without a tag.
template <class Out>
void encode_tagged(const c10::IValue& value, Out& out) {
  struct Encoder {
    Out& out;
    void enter(const c10::IValue&, detail::Container kind, size_t size) {
      out.pod(kind == detail::Container::Tuple ? Tag::Tuple : kind == detail::Container::List ? Tag::List : Tag::Dict);
      out.pod(static_cast<uint64_t>(size));
    }
    void leave(const c10::IValue&, detail::Container) {}
    void leaf(const c10::IValue& v) {
      const auto tag = tag_of(v);
      if (!tag) return out.refuse(v);
      out.pod(*tag);
      switch (*tag) {
        case Tag::Bool: return out.pod(static_cast<uint8_t>(v.toBool()));
        case Tag::Int: return out.pod(static_cast<int64_t>(v.toInt()));
        case Tag::Double: return out.pod(v.toDouble());
        case Tag::String: {
          const auto& text = v.toStringRef();
          out.pod(static_cast<uint64_t>(text.size()));
          return out.bytes(text.data(), text.size());
        }
        case Tag::Tensor: return out.tensor(v.toTensor());
        default: return;  // None, undefined tensor: the tag says it all
      }
    }
  } encoder{out};
  detail::visit(value, encoder, detail::DictKeys::Walk);
}

}  // namespace pare::cache_detail
