#pragma once
// Internal to pare: text helpers for error messages and help strings.

#include <string>
#include <vector>

namespace pare::detail {

/// "a, b, c" (with `separator`); "(none)" when empty, so a message never ends in a blank.
inline std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out.empty() ? "(none)" : out;
}

}  // namespace pare::detail
