#pragma once
// LibTorch's exceptions (c10::Error and the std exceptions it lets through)
// turned into pare::Error at public entry points, so callers catch one type.

#include <exception>
#include <string>
#include <utility>

#include "pare/core/error.hpp"

namespace pare::detail {

/// The part of a LibTorch exception worth showing: c10::Error's message
/// without its C++ backtrace, cut to its first line. A TorchScript interpreter
/// failure starts with a traceback, so for one it is the error line at the end
/// plus the TorchScript code that raised it ("... (at: torch.linear(input, ...))").
std::string torch_message(const std::exception& error);

/// Runs `body`; any exception but pare::Error leaves as
/// pare::Error(context + ": " + torch_message(e), kind).
template <class Body>
decltype(auto) translate_torch_errors(const std::string& context, Body&& body,
                                      Error::Kind kind = Error::Kind::Runtime) {
  try {
    return std::forward<Body>(body)();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(context + ": " + torch_message(e), kind);
  }
}

}  // namespace pare::detail
