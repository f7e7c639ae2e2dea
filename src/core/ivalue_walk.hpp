#pragma once
// Internal: the one way pare walks nested IValues. Tuples, lists and generic
// dicts are containers; every other value (tensors, defined or not, None,
// numbers, strings, devices, objects, ...) is a leaf that the caller judges.
//
//   visit          structural walk with enter/leave/leaf callbacks (encoders, hashers, checks)
//   for_each_tensor every tensor inside a value
//   rebuild        the same structure with each leaf replaced
//   map_tensors    the same structure with each tensor replaced
//   children       a container's children as a vector (side-by-side comparisons)
//
// Dict keys are walked only where a caller asks (DictKeys::Walk): a dict is
// looked up by its keys, so the tensor maps leave them as they are.

#include <optional>
#include <utility>
#include <vector>

#include <ATen/core/Dict.h>
#include <ATen/core/List.h>
#include <ATen/core/ivalue.h>

namespace pare::detail {

enum class Container { Tuple, List, Dict };

/// Whether a walk goes into dict keys (each key before its value) or only into the values.
enum class DictKeys { Skip, Walk };

/// The container kind of `value`; nullopt for a leaf.
inline std::optional<Container> container_of(const c10::IValue& value) {
  if (value.isTuple()) return Container::Tuple;
  if (value.isList()) return Container::List;
  if (value.isGenericDict()) return Container::Dict;
  return std::nullopt;
}

/// Calls fn(child) for each child of a container, in order (nothing for a leaf).
template <class F>
void for_each_child(const c10::IValue& value, DictKeys keys, F&& fn) {
  if (value.isTuple()) {
    for (const auto& item : value.toTupleRef().elements()) fn(item);
  } else if (value.isList()) {
    for (const auto& item : value.toListRef()) fn(item);
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict()) {
      if (keys == DictKeys::Walk) fn(entry.key());
      fn(entry.value());
    }
  }
}

/// A container's children in walk order (a dict's keys and values alternate
/// with DictKeys::Walk); empty for a leaf.
inline std::vector<c10::IValue> children(const c10::IValue& value, DictKeys keys) {
  std::vector<c10::IValue> out;
  for_each_child(value, keys, [&](const c10::IValue& child) { out.push_back(child); });
  return out;
}

/// Walks `value` depth-first, in order. A container calls
/// visitor.enter(value, kind, size) (size: its elements or dict entries), then
/// walks its children, then calls visitor.leave(value, kind); any other value
/// is visitor.leaf(value). The visitor may throw to refuse a value. Call it
/// as detail::visit: unqualified, argument lookup also finds c10::visit.
template <class Visitor>
void visit(const c10::IValue& value, Visitor& visitor, DictKeys keys) {
  const auto kind = container_of(value);
  if (!kind) return visitor.leaf(value);
  const size_t size = *kind == Container::Tuple ? value.toTupleRef().elements().size()
                      : *kind == Container::List ? value.toListRef().size()
                                                 : value.toGenericDict().size();
  visitor.enter(value, *kind, size);
  for_each_child(value, keys, [&](const c10::IValue& child) { detail::visit(child, visitor, keys); });
  visitor.leave(value, *kind);
}

/// Calls fn(tensor) for every tensor inside `value` (undefined ones included;
/// dict keys skipped), in walk order.
template <class F>
void for_each_tensor(const c10::IValue& value, F&& fn) {
  struct Tensors {
    F& fn;
    void enter(const c10::IValue&, Container, size_t) {}
    void leave(const c10::IValue&, Container) {}
    void leaf(const c10::IValue& v) {
      if (v.isTensor()) fn(v.toTensor());
    }
  } tensors{fn};
  detail::visit(value, tensors, DictKeys::Skip);
}

/// `value` with every leaf replaced by leaf(value) (an IValue): tuples rebuilt
/// as tuples, lists with their element type, dicts with their key and value
/// types. Dict keys go through the rebuild too with DictKeys::Walk, and stay
/// as they are with DictKeys::Skip. Children are done in walk order.
template <class Leaf>
c10::IValue rebuild(const c10::IValue& value, Leaf&& leaf, DictKeys keys) {
  if (value.isTuple()) {
    std::vector<c10::IValue> items;
    items.reserve(value.toTupleRef().elements().size());
    for (const auto& item : value.toTupleRef().elements()) items.push_back(rebuild(item, leaf, keys));
    return c10::ivalue::Tuple::create(std::move(items));
  }
  if (value.isList()) {
    const auto list = value.toList();
    c10::impl::GenericList out(list.elementType());
    out.reserve(list.size());
    for (const auto& item : value.toListRef()) out.push_back(rebuild(item, leaf, keys));
    return out;
  }
  if (value.isGenericDict()) {
    const auto dict = value.toGenericDict();
    c10::impl::GenericDict out(dict.keyType(), dict.valueType());
    for (const auto& entry : dict) {
      auto key = keys == DictKeys::Walk ? rebuild(entry.key(), leaf, keys) : entry.key();
      out.insert(std::move(key), rebuild(entry.value(), leaf, keys));
    }
    return out;
  }
  return leaf(value);
}

/// `value` with every tensor inside it replaced by fn(tensor) (an at::Tensor);
/// dict keys and all other leaves stay as they are.
template <class F>
c10::IValue map_tensors(const c10::IValue& value, F&& fn) {
  return rebuild(
      value, [&](const c10::IValue& leaf) { return leaf.isTensor() ? c10::IValue(fn(leaf.toTensor())) : leaf; },
      DictKeys::Skip);
}

}  // namespace pare::detail
