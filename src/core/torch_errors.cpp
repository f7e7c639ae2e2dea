#include "core/torch_errors.hpp"

#include <sstream>
#include <vector>

#include <c10/util/Exception.h>

namespace pare::detail {
namespace {

constexpr const char* kInterpreterHeader = "The following operation failed in the TorchScript interpreter.";
constexpr const char* kMarker = "<--- HERE";

std::vector<std::string> nonblank_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  return lines;
}

std::string trimmed(const std::string& line) {
  const auto begin = line.find_first_not_of(" \t");
  const auto end = line.find_last_not_of(" \t\r");
  return begin == std::string::npos ? "" : line.substr(begin, end + 1 - begin);
}

// The serialized code line the innermost frame points at: the line above the
// last "<--- HERE" of the first traceback (the one over the code that ran).
std::string failing_code(const std::vector<std::string>& lines) {
  std::string code;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i].rfind("Traceback of TorchScript, original code", 0) == 0) break;
    if (lines[i].find(kMarker) != std::string::npos) code = trimmed(lines[i - 1]);
  }
  return code;
}

}  // namespace

std::string torch_message(const std::exception& error) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  const auto lines = nonblank_lines(c10_error ? c10_error->what_without_backtrace() : error.what());
  if (lines.empty()) return "unknown error";
  if (lines.front().rfind(kInterpreterHeader, 0) != 0 || lines.size() < 2) return trimmed(lines.front());
  const std::string code = failing_code(lines);
  return trimmed(lines.back()) + (code.empty() ? "" : " (at: " + code + ")");
}

}  // namespace pare::detail
