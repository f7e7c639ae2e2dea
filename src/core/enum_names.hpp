#pragma once
// Internal to pare: one table of names per option enum (observer kinds,
// pruning scopes), read by the library, the Python bindings and the CLI.

#include <string>
#include <utility>
#include <vector>

#include "pare/core/error.hpp"
#include "core/text.hpp"

namespace pare::detail {

template <class Enum, size_t N>
using NameTable = std::pair<Enum, const char*>[N];

/// Every name of the table, in its order.
template <class Enum, size_t N>
std::vector<std::string> names_of(const NameTable<Enum, N>& table) {
  std::vector<std::string> names;
  for (const auto& entry : table) names.emplace_back(entry.second);
  return names;
}

/// The name of `value`; "unknown" for a value the table lacks.
template <class Enum, size_t N>
std::string name_of(const NameTable<Enum, N>& table, Enum value) {
  for (const auto& [known, name] : table)
    if (known == value) return name;
  return "unknown";
}

/// The value named `name`; pare::Error listing the names otherwise. `what`
/// names the option in the message ("observer", "scope").
template <class Enum, size_t N>
Enum parse_name(const NameTable<Enum, N>& table, const std::string& name, const std::string& what) {
  for (const auto& [value, known] : table)
    if (name == known) return value;
  throw Error(what + " '" + name + "' is not known; expected one of " + join(names_of(table)));
}

}  // namespace pare::detail
